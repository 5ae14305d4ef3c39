"""Outputs never overwrite the command's inputs (generate, eval length-control, export)."""

import json

import pytest

from jaxrlhf.cli import main
from jaxrlhf.config import ConfigError
from jaxrlhf.paths import MARKER, check_output


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def test_check_output_refusals(tmp_path, model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("{}\n")
    with pytest.raises(ConfigError, match="is also an input"):
        check_output(tmp_path / "." / "p.jsonl", inputs=(prompts,))
    with pytest.raises(ConfigError, match="inside the model folder"):
        check_output(model_dir / "config.json", input_model_dirs=(model_dir,))
    with pytest.raises(ConfigError, match="inside the model folder"):
        check_output(model_dir / "sub", input_model_dirs=(model_dir,), folder=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="jaxrlhf did not write"):
        check_output(foreign, folder=True)
    with pytest.raises(ConfigError, match="is a folder"):
        check_output(foreign, overwrite=True)  # a file can never replace a folder
    # allowed: --overwrite, a folder jaxrlhf wrote, an empty or new folder, another file
    assert check_output(prompts, inputs=(prompts,), overwrite=True) == prompts
    (foreign / MARKER).write_text("{}")
    check_output(foreign, folder=True)
    check_output(tmp_path / "new", folder=True)
    check_output(tmp_path / "out.jsonl", inputs=(prompts,), input_model_dirs=(model_dir,))


def test_generate_refuses_its_inputs(tmp_path, model_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "q"}\n')
    assert main(["generate", str(model_dir), "--prompts", str(prompts), "--out", str(prompts)]) == 2
    one_line_error(capsys, "is also an input")
    assert prompts.read_text() == '{"prompt": "q"}\n'
    assert main(["generate", str(model_dir), "--prompts", str(prompts), "--out", str(model_dir / "config.json")]) == 2
    one_line_error(capsys, "inside the model folder")
    assert json.loads((model_dir / "config.json").read_text()) == {"model_type": "llama"}
    assert main(["generate", str(model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                 "--batch-size", "0"]) == 2
    one_line_error(capsys, "--batch-size must be >= 1, got 0")


def test_eval_length_control_refuses_its_data(tmp_path, model_dir, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "limit": 5}\n')
    assert main(["eval", "length-control", "--model", str(model_dir), "--data", str(data), "--out", str(data)]) == 2
    one_line_error(capsys, "is also an input")
    assert data.read_text() == '{"prompt": "q", "limit": 5}\n'
    assert main(["eval", "length-control", "--model", str(model_dir), "--data", str(data),
                 "--out", str(model_dir / "preds.jsonl")]) == 2
    one_line_error(capsys, "inside the model folder")


@pytest.mark.slow
def test_export_never_turns_the_base_model_into_a_reward_model(tmp_path, capsys):
    from rm_fixtures import ranked_rows, rm_config_yaml, tiny_model_folder, write_jsonl

    base = tiny_model_folder(tmp_path / "base")
    (base / "jaxrlhf_config.yaml").write_text("seed: 0\n")
    base_files = {p.name: p.read_bytes() for p in base.iterdir()}
    train = write_jsonl(ranked_rows(40, k=3, seed=1), tmp_path / "train.jsonl")
    assert main(["rm", "--config", rm_config_yaml(tmp_path, base, train), "--set", "train.max_steps=1"]) == 0
    run = str(tmp_path / "run")
    capsys.readouterr()

    assert main(["export", run, "--out", str(base)]) == 2
    one_line_error(capsys, "inside the model folder")
    assert {p.name: p.read_bytes() for p in base.iterdir()} == base_files
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", run, "--out", str(foreign)]) == 2
    one_line_error(capsys, "jaxrlhf did not write")

    out = tmp_path / "exported"
    assert main(["export", run, "--out", str(out)]) == 0
    assert main(["export", run, "--out", str(out)]) == 0  # a folder export wrote may be replaced
    assert (out / MARKER).is_file() and not list(tmp_path.glob(".exported.export-*"))
    # --overwrite replaces the model files: no stale jaxrlhf_config.yaml, the user's notes stay
    assert main(["export", run, "--out", str(base), "--overwrite"]) == 0
    assert not (base / "jaxrlhf_config.yaml").exists()
    assert json.loads((base / "config.json").read_text())["num_labels"] == 1
    assert main(["export", run, "--out", str(foreign), "--overwrite"]) == 0
    assert (foreign / "notes.txt").read_text() == "mine"


def test_export_knows_every_model_folder_of_a_run_config():
    from jaxrlhf.commands.models import _model_folders
    config = {"model": {"path": "sft", "arch": None}, "tokenizer": "tok", "reference_path": "ref",
              "critic_path": None, "rewards": [{"kind": "model", "path": "rm"}, {"kind": "rule", "function": "m:f"}],
              "data": {"prompt_files": ["p.jsonl"]}}
    assert sorted(_model_folders(config)) == ["ref", "rm", "sft", "tok"]
