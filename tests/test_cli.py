"""The command line: help, the init-model -> inspect job, and one-line user errors."""

import json

import numpy as np
import pytest
import torch
import transformers

from jaxrlhf.cli import build_parser, main
from jaxrlhf.models import from_pretrained

from test_config import CONFIGS


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("init-model", "inspect"):
        assert command in out
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    for name in subparsers.choices:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert f"usage: jaxrlhf {name}" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_init_model_then_inspect(arch, tmp_path, capsys):
    out_dir = tmp_path / "model"
    assert main(["init-model", "--config", str(CONFIGS / "init" / f"{arch}-tiny.yaml"),
                 "--set", f"output_dir={out_dir}", "--set", "seed=5", "--set", "mesh.fsdp=4",
                 "--set", "mesh.tensor=2"]) == 0
    assert "saved" in capsys.readouterr().out
    assert json.loads((out_dir / "config.json").read_text())["model_type"] == arch

    # transformers loads what we wrote and agrees with our forward
    ours = from_pretrained(out_dir)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    ids = np.array([[5, 9, 3, 100, 7]], np.int32)
    with torch.no_grad():
        ref = theirs(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(ids, np.ones_like(ids)).logits), ref, atol=1e-4)

    assert main(["inspect", str(out_dir), "--mesh", "data=2,fsdp=2,tensor=2"]) == 0
    report = capsys.readouterr().out
    assert "finite=True" in report
    ratio = float(report.split("x less than unsharded")[0].rsplit("(", 1)[1])
    assert ratio > 3.0, report  # most bytes are split 4 ways (fsdp 2 x tensor 2)


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["init-model", "--config", str(CONFIGS / "init" / "llama-tiny.yaml"),
                 "--set", "model.dtyp=bfloat16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'model.dtyp'" in err

    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.json: not found" in err

    assert main(["inspect", str(tmp_path), "--mesh", "data=3"]) == 2
    assert "--mesh" in capsys.readouterr().err
