"""Every numeric config value has a range, checked with the key named, before anything is
written: one-line errors and exit 2."""

import json

import pytest

from jaxrlhf.cli import main
from jaxrlhf.config import ConfigError, load_config
from jaxrlhf.stages.dpo import DPOConfig
from jaxrlhf.stages.rm import RMConfig
from jaxrlhf.stages.sft import SFTConfig


@pytest.mark.parametrize("override, needle", [
    ("train.log_every=0", "log_every must be >= 1, got 0"),
    ("train.keep_checkpoints=-1", "keep_checkpoints must be >= 1"),
    ("train.keep_checkpoints=0", "keep_checkpoints must be >= 1"),
    ("train.max_steps=-5", "max_steps must be >= 0"),
    ("train.epochs=-1", "epochs must be >= 0"),
    ("train.micro_batch_size=-2", "micro_batch_size must be >= 0"),
    ("train.eval_batch_size=-1", "eval_batch_size must be >= 0"),
    ("train.eval_every=-1", "eval_every must be >= 0"),
    ("train.save_every=-1", "save_every must be >= 0"),
    ("train.max_nonfinite_steps=0", "max_nonfinite_steps must be >= 1"),
    ("train.optim.max_grad_norm=-1", "max_grad_norm must be >= 0"),
    ("train.optim.b1=1.5", "b1 must be in [0, 1)"),
    ("train.optim.b2=-0.1", "b2 must be in [0, 1)"),
    ("train.optim.weight_decay=-1", "weight_decay must be >= 0"),
    ("train.optim.eps=0", "eps must be > 0"),
    ("train.optim.min_lr_ratio=2", "min_lr_ratio must be in [0, 1]"),
    ("train.optim.learning_rate=.nan", "learning_rate must be > 0"),
    ("data.min_prompt_tokens=512", "min_prompt_tokens must be in [0, max_length=512)"),
    ("data.min_prompt_tokens=-1", "min_prompt_tokens must be in [0, max_length=512)"),
    ("mesh.tensor=0", "mesh.tensor must be >= 1"),
])
@pytest.mark.parametrize("cls", [SFTConfig, RMConfig, DPOConfig])
def test_out_of_range_values_name_their_key(cls, override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, ["model.path=m", override])
    message = str(err.value)
    assert "\n" not in message and needle in message, message
    section = override.split("=")[0].rsplit(".", 1)[0]
    assert section in message, message


def test_rm_num_slots_range():
    with pytest.raises(ConfigError, match="num_slots must be 0 .* or >= 2, got 1"):
        load_config(RMConfig, None, ["model.path=m", "data.num_slots=1"])


def test_sampling_temperature_nan_is_refused():
    from jaxrlhf.generate import SamplingConfig
    with pytest.raises(ValueError, match="temperature must be >= 0 and finite"):
        SamplingConfig(temperature=float("nan"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rm_fixtures import tiny_model_folder
    return tiny_model_folder(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture
def rm_cfg(tmp_path, model_dir):
    from rm_fixtures import ranked_rows, rm_config_yaml, write_jsonl
    train = write_jsonl(ranked_rows(40, k=3, seed=0), tmp_path / "train.jsonl")
    return rm_config_yaml(tmp_path, model_dir, train)


@pytest.mark.parametrize("sets, needle", [
    (["mesh.data=3", "mesh.fsdp=-1"], "mesh: mesh MeshConfig(data=3, fsdp=-1, tensor=1) does not divide 8 devices"),
    (["mesh.data=3", "mesh.fsdp=3"], "= 9 devices, but 8 are available"),
    (["seed=-1"], "seed must be in [0, 2**32), got -1"),
    (["train.keep_checkpoints=0"], "keep_checkpoints must be >= 1"),
    (["mesh.data=3", "mesh.fsdp=1"], "must be a multiple of the data-parallel size data x fsdp = 3"),
])
def test_stage_refuses_before_writing_the_run_folder(tmp_path, rm_cfg, capsys, sets, needle):
    args = ["rm", "--config", rm_cfg]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file_or_cannot_be_created(tmp_path, rm_cfg, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["rm", "--config", rm_cfg, "--set", f"output_dir={blocker}"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(["rm", "--config", rm_cfg, "--set", f"output_dir={blocker / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cannot be created, {blocker} is a file" in err


def test_num_slots_below_k_is_one_line(tmp_path, rm_cfg, capsys):
    assert main(["rm", "--config", rm_cfg, "--set", "data.num_slots=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.num_slots=2 is below the 3 responses of" in err
    assert "train.jsonl:1" in err
    assert not (tmp_path / "run").exists()  # the data's refusal comes before the run folder


def test_eval_rows_wider_than_training_rows(tmp_path, rm_cfg, capsys):
    from rm_fixtures import ranked_rows, write_jsonl
    wide = write_jsonl(ranked_rows(10, k=4, seed=1), tmp_path / "eval.jsonl")
    assert main(["rm", "--config", rm_cfg, "--set", f"data.eval_files=[{wide}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(the most a training row has) is below the 4 responses" in err
    assert not (tmp_path / "run").exists()


def test_cpu_devices_zero(capsys):
    assert main(["--cpu-devices", "0", "config", "show", "sft"]) == 2
    assert capsys.readouterr().err.strip() == "jaxrlhf: error: --cpu-devices must be >= 1, got 0"
