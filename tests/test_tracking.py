"""Trackers: TensorBoard tags are relative (issue 31, defect 7: a tag carried the reward model's
absolute path), W&B logs offline when asked for, and logging: loads from YAML."""

import glob
import struct
import sys

import pytest

from jaxrlhf.config import ConfigError, load_config
from jaxrlhf.loop import MetricsLog
from jaxrlhf.tracking import LoggingConfig, WandbConfig, tag_name


def tensorboard_tags(folder) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value or text)]}`` of the scalar and text events in ``folder`` (TFRecord framing read by hand)."""
    from tensorboardX.proto import event_pb2

    tags = {}
    for path in glob.glob(str(folder / "events.out.tfevents.*")):
        data = open(path, "rb").read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                text = value.tensor.string_val
                tags.setdefault(value.tag, []).append(
                    (event.step, text[0].decode() if text else round(value.simple_value, 6)))
    return tags


def test_tag_names_are_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tag_name("train", "loss") == "train/loss"
    assert tag_name("ppo", f"reward_model_{tmp_path}/runs/rm/final") == "ppo/reward_model_runs_rm_final"
    assert tag_name("ppo", "reward_model_/elsewhere/home/me/rm/final") == "ppo/reward_model_rm_final"
    assert tag_name("ppo", "reward_rule_target_length") == "ppo/reward_rule_target_length"


def test_metrics_log_tensorboard_tags_and_jsonl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = f"reward_model_{tmp_path}/runs/rm"
    log = MetricsLog(tmp_path / "run")  # the folder alone still works
    log.write(3, {"loss": 0.5, key: 1.25}, "ppo")
    log.close()
    assert tensorboard_tags(tmp_path / "run" / "tensorboard") == {
        "ppo/loss": [(3, 0.5)], "ppo/reward_model_runs_rm": [(3, 1.25)]}
    # metrics.jsonl keeps the metrics' own names: it is the exact record
    assert key in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_metrics_log_writes_text_to_tensorboard(tmp_path):
    log = MetricsLog(tmp_path / "run")
    log.write_text(3, "ppo/samples", "prompt -> answer")
    log.close()
    assert tensorboard_tags(tmp_path / "run" / "tensorboard") == {"ppo/samples/text_summary": [(3, "prompt -> answer")]}


def test_no_tensorboard(tmp_path):
    log = MetricsLog(tmp_path / "run", tensorboard=False)
    log.write(1, {"loss": 1.0}, "train")
    log.close()
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("loss") == 1


def test_wandb_offline_run_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    for step in (1, 2):  # the second MetricsLog is a resumed run: same W&B run id
        log = MetricsLog(run, wandb={"project": "jaxrlhf-test", "mode": "offline"}, run_config={"seed": 7})
        log.write(step, {"loss": 0.25 * step, f"reward_model_{tmp_path}/rm": 1.0}, "train")
        log.write_text(step, "ppo/samples", "a sample")
        log.close()
    run_id = (run / "wandb_run_id").read_text().strip()
    files = glob.glob(str(run / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    assert len(files) == 2, files
    record = open(files[-1], "rb").read()  # protobuf records keep strings as they are
    for text in (b"train/loss", b"train/reward_model_rm", b"ppo/samples", b"jaxrlhf-test"):
        assert text in record, text
    assert str(tmp_path).encode() + b"/rm" not in record


def test_wandb_asked_for_but_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError, match=r"logging\.wandb is set but wandb is not installed: pip install"):
        MetricsLog(tmp_path / "run", wandb={"project": "p", "mode": "offline"})


def test_logging_config_from_yaml(tmp_path):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Stage:
        logging: LoggingConfig = LoggingConfig()

    path = tmp_path / "c.yaml"
    path.write_text("logging: {wandb: {project: p, mode: offline, tags: [a]}}\n")
    assert load_config(Stage, path).logging == LoggingConfig(wandb=WandbConfig(project="p", mode="offline",
                                                                             tags=("a",)))
    assert load_config(Stage, path, ["logging.tensorboard=false"]).logging.tensorboard is False
    path.write_text("logging: {wandb: {project: p, mode: upload}}\n")
    with pytest.raises(ConfigError, match=r"logging\.wandb.*mode must be one of online, offline, disabled"):
        load_config(Stage, path)
