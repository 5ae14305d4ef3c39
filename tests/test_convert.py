"""``jaxrlhf.convert``: bad input is one line on stderr and exit status 2 (no GGUF needed)."""

import pytest

from jaxrlhf.convert import ConversionError, convert_gguf, main


@pytest.mark.parametrize("setup, needle", [
    (lambda d: d / "missing.gguf", "no such file"),
    (lambda d: (d / "model.gguf").write_bytes(b"PK\x03\x04 not gguf") and d / "model.gguf", "not a GGUF file"),
], ids=["missing", "bad-magic"])
def test_bad_input_is_one_line_and_exit_2(setup, needle, tmp_path, capsys):
    file = setup(tmp_path)
    assert main(["gguf", str(file), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_output_folder(tmp_path):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    with pytest.raises(ConversionError, match="not an empty folder"):
        convert_gguf(file, out)
    assert (out / "keep.txt").read_text() == "someone's file"


def test_truncated_gguf_is_one_line(tmp_path, capsys):
    pytest.importorskip("gguf")
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    assert main(["gguf", str(file), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {file}: ") and err.count("\n") == 1


def test_the_cli_converts_through_the_same_checks(tmp_path, capsys):
    from jaxrlhf.cli import main as cli

    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 16)
    assert cli(["convert", "gguf", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a GGUF file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
