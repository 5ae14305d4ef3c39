"""--resume checks the run record: changes to the data order or shapes are refused with one
line, safe changes are allowed and recorded, config.yaml keeps the first config."""

import json

import jax.numpy as jnp
import pytest
import yaml

from jaxrlhf.checkpoint import Checkpointer
from jaxrlhf.config import ConfigError, load_config
from jaxrlhf.run_record import check_resume, record_for
from jaxrlhf.stages.common import prepare_run_dir
from jaxrlhf.stages.dpo import DPOConfig
from jaxrlhf.stages.rm import RMConfig
from jaxrlhf.stages.sft import SFTConfig


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def run_cfg(tmp_path):
    train = write(tmp_path / "train.jsonl", '{"prompt": "q", "response": [["a"], ["b"]]}\n')
    cfg_file = write(tmp_path / "rm.yaml", f"""
seed: 0
output_dir: {tmp_path / 'run'}
model: {{path: {tmp_path / 'model'}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{train}], max_length: 24}}
train: {{epochs: 1, batch_size: 8, log_every: 5}}
""")
    return lambda *sets: load_config(RMConfig, cfg_file, list(sets))


def started_run(cfg):
    """A run folder as the stage leaves it after its first checkpoint."""
    out, ckpt = prepare_run_dir(cfg, resume=False, stage="rm")
    ckpt.save(1, {"w": jnp.zeros((2,))}, {"epoch": 0, "batch": 1, "steps": 1})
    ckpt.close()
    return out


def test_changed_batch_size_and_seed_are_refused_in_one_line(run_cfg):
    out = started_run(run_cfg())
    first_config = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError) as err:
        prepare_run_dir(run_cfg("train.batch_size=16", "seed=3"), resume=True, stage="rm")
    message = str(err.value)
    assert "\n" not in message
    assert "train.batch_size: 8 -> 16" in message and "seed: 0 -> 3" in message
    assert (out / "config.yaml").read_text() == first_config
    assert not list(out.glob("config.resume-*.yaml"))


def test_changed_data_file_is_refused(run_cfg, tmp_path):
    started_run(run_cfg())
    (tmp_path / "train.jsonl").write_text('{"prompt": "other", "response": [["a"], ["b"]]}\n')
    with pytest.raises(ConfigError, match=r"data\.train_files: .*train\.jsonl \(sha256 [0-9a-f]{12}\)"):
        prepare_run_dir(run_cfg(), resume=True, stage="rm")


def test_changed_mesh_and_stage_are_refused(run_cfg):
    started_run(run_cfg())
    with pytest.raises(ConfigError) as err:
        prepare_run_dir(run_cfg("mesh.fsdp=2"), resume=True, stage="dpo")
    assert "mesh: " in str(err.value) and '"rm" -> "dpo"' in str(err.value)


def test_safe_changes_are_allowed_and_recorded(run_cfg):
    out = started_run(run_cfg())
    first_config = (out / "config.yaml").read_text()
    _, ckpt = prepare_run_dir(run_cfg("train.epochs=3", "train.log_every=1"), resume=True, stage="rm")
    ckpt.close()
    assert (out / "config.yaml").read_text() == first_config
    assert yaml.safe_load((out / "config.resume-1.yaml").read_text())["train"]["epochs"] == 3
    record = json.loads((out / "run_record.json").read_text())
    assert record["resumes"] == [{"config": "config.resume-1.yaml",
                                  "changed": {"train.epochs": [1, 3], "train.log_every": [5, 1]}}]
    _, ckpt = prepare_run_dir(run_cfg("train.epochs=4"), resume=True, stage="rm")
    ckpt.close()
    assert (out / "config.resume-2.yaml").exists()


def test_resume_without_checkpoints_starts_over(run_cfg):
    out, ckpt = prepare_run_dir(run_cfg(), resume=False, stage="rm")
    ckpt.close()
    _, ckpt = prepare_run_dir(run_cfg("train.batch_size=16"), resume=True, stage="rm")
    ckpt.close()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["batch_size"] == 16


@pytest.mark.parametrize("cls, data", [
    (SFTConfig, {"train_files": ["f.jsonl"]}),
    (RMConfig, {"train_files": ["f.jsonl"], "num_slots": 4}),
    (DPOConfig, {"train_files": ["f.jsonl"], "pairs": "all_pairs"}),
])
def test_record_covers_the_supervised_stages(tmp_path, cls, data):
    data = {k: [str(tmp_path / v[0])] if k == "train_files" else v for k, v in data.items()}
    write(tmp_path / "f.jsonl", "{}\n")
    cfg = load_config(cls, None, [f"model.path={tmp_path}", f"data={json.dumps(data)}",
                                  "train.micro_batch_size=4"])
    record = record_for(cfg, "x")
    for key in ("stage", "seed", "train.batch_size", "train.micro_batch_size", "data.max_length", "mesh"):
        assert key in record, key
    assert record["data.train_files"][0]["sha256"] is not None
    assert record["mesh"] == {"data": 1, "fsdp": -1, "tensor": 1}
    changed = load_config(cls, None, [f"model.path={tmp_path}", f"data={json.dumps(data)}",
                                      "train.micro_batch_size=2", "train.max_steps=9"])
    with pytest.raises(ConfigError, match=r"^[^\n]*train\.micro_batch_size: 4 -> 2[^\n]*$"):
        check_resume(record, record_for(changed, "x"))


def rl_config_class():
    """The RL stage's config."""
    from jaxrlhf.stages.rl import RLConfig
    return RLConfig


def test_record_covers_ppo(tmp_path):
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "q"}\n')
    common = [f"model.path={tmp_path}", f"data.prompt_files=[{prompts}]", f"rewards=[{{kind: model, path: {tmp_path}}}]"]
    cls = rl_config_class()
    record = record_for(load_config(cls, None, common), "ppo")
    assert {"seed", "train.batch_size", "train.samples_per_prompt", "data.max_prompt_length", "data.prompt_files",
            "mesh"} <= set(record)
    check_resume(record, record_for(load_config(cls, None, common + ["train.iterations=500"]), "ppo"))  # safe
    with pytest.raises(ConfigError, match=r"train\.batch_size: 16 -> 32"):
        check_resume(record, record_for(load_config(cls, None, common + ["train.batch_size=32"]), "ppo"))
