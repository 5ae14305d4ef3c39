"""Fault injection: each file kind of the latest checkpoint damaged in turn; resume and
export fall back to the newest complete checkpoint and set the damaged one aside."""

import logging
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.checkpoint import Checkpointer
from jaxrlhf.models import CheckpointError
from jaxrlhf.stages.common import restore_or_start


def state(value):
    return {"w": jnp.full((8, 4), value, jnp.float32), "step": jnp.array(int(value), jnp.int32)}


def data_files(step_dir):
    files = sorted(p for p in (step_dir / "state").rglob("d/*") if p.is_file())
    assert files
    return files


def truncate_data(step_dir):
    for path in data_files(step_dir):
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def delete_data(step_dir):
    for path in data_files(step_dir):
        path.unlink()


FAULTS = {
    "truncated data file": truncate_data,
    "deleted data file": delete_data,
    "missing state/_METADATA": lambda d: (d / "state" / "_METADATA").unlink(),
    "garbled meta/metadata": lambda d: (d / "meta" / "metadata").write_bytes(b'{"epoch": 0, \xff'),
    "empty manifest.ocdbt": lambda d: (d / "state" / "manifest.ocdbt").write_bytes(b""),
    "missing state/": lambda d: shutil.rmtree(d / "state"),
}


def saved_run(directory, steps=(1, 2, 3)):
    ckpt = Checkpointer(directory, keep=len(steps))
    for step in steps:
        ckpt.save(step, state(step), {"epoch": 0, "batch": step, "steps": step})
    ckpt.close()
    return Checkpointer(directory, keep=len(steps))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_damaged_latest_falls_back_and_is_set_aside(tmp_path, caplog, fault):
    ckpt = saved_run(tmp_path)
    FAULTS[fault](tmp_path / "3")
    with caplog.at_level(logging.WARNING, logger="jaxrlhf.checkpoint"):
        step, restored, meta = ckpt.restore_latest(state(0))
    assert step == 2 and meta == {"epoch": 0, "batch": 2, "steps": 2}
    np.testing.assert_array_equal(restored["w"], np.full((8, 4), 2.0))
    assert not (tmp_path / "3").exists() and (tmp_path / "damaged" / "3").is_dir()  # moved, not deleted
    assert ckpt.all_steps() == [1, 2]
    assert any("step 3" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_resume_uses_the_fallback(tmp_path, fault):
    """Through the stages' own resume entry point (which exists on the issue's main too, where
    each of these faults ended --resume with a raw traceback)."""
    ckpt = saved_run(tmp_path)
    FAULTS[fault](tmp_path / "3")
    restored, start = restore_or_start(ckpt, state(0), resume=True)
    assert (start.epoch, start.batch, start.steps) == (0, 2, 2)
    assert int(restored["step"]) == 2
    np.testing.assert_array_equal(restored["w"], np.full((8, 4), 2.0))
    assert (tmp_path / "damaged" / "3").is_dir()


def test_every_checkpoint_damaged_is_one_line(tmp_path):
    ckpt = saved_run(tmp_path, steps=(1, 2))
    for step in (1, 2):
        (tmp_path / str(step) / "state" / "manifest.ocdbt").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        ckpt.restore_latest(state(0))
    message = str(err.value)
    assert "\n" not in message and "no checkpoint reads back completely" in message and "2, 1" in message
    assert sorted(p.name for p in (tmp_path / "damaged").iterdir()) == ["1", "2"]


def test_other_state_shapes_are_refused_not_set_aside(tmp_path):
    ckpt = saved_run(tmp_path)
    other = {"w": jnp.zeros((16, 4), jnp.float32), "step": jnp.array(0, jnp.int32)}
    with pytest.raises(CheckpointError) as err:
        ckpt.restore_latest(other)
    assert "\n" not in str(err.value) and "resume with the run's own config" in str(err.value)
    assert ckpt.all_steps() == [1, 2, 3] and not (tmp_path / "damaged").exists()


def test_same_step_damaged_twice_keeps_both(tmp_path):
    ckpt = saved_run(tmp_path, steps=(1, 2))
    (tmp_path / "2" / "state" / "_METADATA").unlink()
    assert ckpt.restore_latest(state(0))[0] == 1
    ckpt.save(2, state(2), {"batch": 2})
    (tmp_path / "2" / "state" / "_METADATA").unlink()
    assert ckpt.restore_latest(state(0))[0] == 1
    assert sorted(p.name for p in (tmp_path / "damaged").iterdir()) == ["2", "2-2"]


def test_no_checkpoint_is_none(tmp_path):
    assert Checkpointer(tmp_path).restore_latest(state(0)) is None


@pytest.mark.slow
def test_rm_export_and_resume_skip_a_damaged_latest(tmp_path, caplog, capsys):
    from safetensors.numpy import load_file

    from rm_fixtures import ranked_rows, rm_config_yaml, tiny_model_folder, write_jsonl
    from jaxrlhf.cli import main

    model_dir = tiny_model_folder(tmp_path / "model")
    train = write_jsonl(ranked_rows(80, k=3, seed=7), tmp_path / "train.jsonl")
    cfg = rm_config_yaml(tmp_path, model_dir, train)
    common = ["--set", "train.max_steps=6", "--set", "train.save_every=3"]
    assert main(["rm", "--config", cfg, *common]) == 0
    run = tmp_path / "run"
    assert main(["export", str(run), "--out", str(tmp_path / "step3"), "--step", "3"]) == 0
    FAULTS["empty manifest.ocdbt"](run / "checkpoints" / "6")

    with caplog.at_level(logging.WARNING, logger="jaxrlhf.checkpoint"):
        assert main(["export", str(run), "--out", str(tmp_path / "latest")]) == 0
    assert any("step 6" in r.getMessage() for r in caplog.records)
    latest, step3 = load_file(tmp_path / "latest" / "model.safetensors"), load_file(tmp_path / "step3" / "model.safetensors")
    for key in step3:
        np.testing.assert_array_equal(latest[key], step3[key])
    assert (run / "checkpoints" / "damaged" / "6").is_dir()
    # resume continues from step 3 and writes step 6 again
    assert main(["rm", "--config", cfg, *common, "--resume"]) == 0
    assert 6 in Checkpointer(run / "checkpoints").all_steps()
    # the case: a resume at another batch size stops in one line, config.yaml kept
    first_config = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["rm", "--config", cfg, *common, "--resume", "--set", "train.batch_size=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.batch_size: 8 -> 16" in err
    assert (run / "config.yaml").read_text() == first_config


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused(tmp_path, keep):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        Checkpointer(tmp_path / "c", keep=keep)
    assert not (tmp_path / "c").exists()
