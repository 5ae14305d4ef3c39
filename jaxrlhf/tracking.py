"""Experiment trackers behind :class:`~jaxrlhf.loop.MetricsLog`: TensorBoard, and Weights &
Biases when it is installed and asked for.

A stage config's ``logging:`` section (:class:`LoggingConfig`) picks them::

    logging:
      tensorboard: true                        # OUTPUT_DIR/tensorboard (the default)
      wandb: {project: my-rlhf, mode: offline}  # needs `pip install 'jaxrlhf[wandb]'`

Tags are ``split/metric`` (``train/loss``, ``ppo/reward_model_runs_rm_final``): a metric name
that carries an absolute path (a reward model's folder) is made relative to the working
directory, so tags read the same on every machine and do not leak home folders.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import secrets
from pathlib import Path
from typing import Any, Protocol

WANDB_MODES = ("online", "offline", "disabled")
RUN_ID_FILE = "wandb_run_id"  # in the run folder: a resumed run logs to the same W&B run


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases settings (wandb.init's arguments)."""

    project: str | None = None  # the W&B project (required to log to W&B)
    entity: str | None = None  # team or user; default: your W&B default entity
    name: str | None = None  # run name; default: the output folder's name
    # online | offline (written under OUTPUT_DIR/wandb; upload later with `wandb sync`) | disabled
    mode: str = "online"
    tags: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.project:
            raise ValueError("project is required: the W&B project to log to")
        if self.mode not in WANDB_MODES:
            raise ValueError(f"mode must be one of {', '.join(WANDB_MODES)}, got {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go besides OUTPUT_DIR/metrics.jsonl (always written)."""

    tensorboard: bool = True  # TensorBoard scalars under OUTPUT_DIR/tensorboard
    wandb: WandbConfig | None = None  # e.g. {project: my-rlhf, mode: offline}; needs the wandb package


class Tracker(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def text(self, step: int, tag: str, text: str) -> None: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------------- tags

_ABSOLUTE_PATH = re.compile(r"(?:^|(?<=[_:=]))(/[^\s]*)")


def _relative(path: str) -> str:
    """A path as a tag fragment: relative to the working directory when under it, else its
    last two components; separators become ``_`` so TensorBoard does not nest on them."""
    p = Path(path)
    try:
        rel = p.relative_to(Path.cwd())
    except ValueError:
        rel = Path(*p.parts[-2:]) if len(p.parts) > 2 else Path(p.name or "root")
    return "_".join(rel.parts) or "cwd"


def tag_name(prefix: str, key: str) -> str:
    """The tracker tag of metric ``key`` logged under ``prefix`` (train, eval, ppo...)."""
    return f"{prefix}/{_ABSOLUTE_PATH.sub(lambda m: _relative(m.group(1)), key)}"


# --------------------------------------------------------------------------- trackers


class TensorBoardTracker:
    def __init__(self, directory: Path):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(directory / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        self._writer.add_text(tag, text, step)

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """One W&B run per run folder: its id is kept in ``RUN_ID_FILE`` and reused on resume."""

    def __init__(self, config: WandbConfig, directory: Path, run_config: dict | None = None):
        try:
            import wandb
        except ImportError:
            from jaxrlhf.config import ConfigError
            raise ConfigError("logging.wandb is set but wandb is not installed: "
                              "pip install 'jaxrlhf[wandb]' (or remove logging.wandb)") from None
        self._wandb = wandb
        id_file = directory / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)  # W&B: [a-z0-9]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=config.project, entity=config.entity, name=config.name or directory.name,
                              mode=config.mode, dir=str(directory), id=run_id, resume="allow",
                              tags=list(config.tags), config=run_config, reinit="create_new")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: self._wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


def as_wandb_config(value: WandbConfig | dict | None) -> WandbConfig | None:
    """A ``logging.wandb`` value as given in code (a dict) or by the config loader."""
    if value is None or isinstance(value, WandbConfig):
        return value
    if isinstance(value, dict):
        return WandbConfig(**{k: tuple(v) if k == "tags" else v for k, v in value.items()})
    raise TypeError(f"wandb must be a WandbConfig or a dict, got {type(value).__name__}")


def open_trackers(directory: str | os.PathLike, *, tensorboard: bool = True,
                  wandb: WandbConfig | dict | None = None, run_config: dict[str, Any] | None = None
                  ) -> list[Tracker]:
    directory = Path(directory)
    trackers: list[Tracker] = [TensorBoardTracker(directory)] if tensorboard else []
    wandb = as_wandb_config(wandb)
    if wandb is not None and wandb.mode != "disabled":
        trackers.append(WandbTracker(wandb, directory, run_config))
    return trackers
