"""What the trainer (:mod:`jaxrlhf.trainer`) is configured with and logs through: the supervised
stages' TrainConfig, the data Position of the next batch, and MetricsLog (TensorBoard, W&B and
metrics.jsonl)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax

from jaxrlhf.steps.common import OptimConfig

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/Inf loss or gradient."""


# what 0 means for TrainConfig's counts that may be 0 (named in their range errors)
_ZERO_MEANS = {"epochs": "use max_steps", "max_steps": "no step limit", "micro_batch_size": "no accumulation",
               "eval_batch_size": "batch_size", "eval_every": "only at the end", "save_every": "only at the end"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    max_steps: int = 0  # > 0: stop after this many steps even mid-epoch
    batch_size: int = 8  # prompts per optimizer step (global, all devices)
    micro_batch_size: int = 0  # > 0: accumulate gradients over batch_size / micro_batch_size parts
    eval_batch_size: int = 0  # 0: same as batch_size
    eval_every: int = 0  # steps between evaluations; 0: only at the end
    save_every: int = 0  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    max_nonfinite_steps: int = 3  # consecutive skipped (NaN/Inf) steps before the run stops
    # > 0: cut each batch's token axis to the smallest multiple of this that holds its longest
    # row (less padding computed; one compilation per distinct width). 0: always max_length
    pad_to_multiple: int = 0
    group_by_length: bool = False  # batch rows of similar length together (with pad_to_multiple)
    optim: OptimConfig = OptimConfig()

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("epochs", "max_steps", "micro_batch_size", "eval_batch_size", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: {_ZERO_MEANS[name]}), got {getattr(self, name)}")
        for name in ("log_every", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # 0 would let Orbax delete every checkpoint, the last included
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 (the last checkpoint is always kept), "
                             f"got {self.keep_checkpoints}")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of "
                             f"micro_batch_size {self.micro_batch_size}")
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("set epochs >= 1 or max_steps >= 1")
        if self.pad_to_multiple < 0:
            raise ValueError(f"pad_to_multiple must be >= 0 (0 = no cut), got {self.pad_to_multiple}")
        if self.group_by_length and not self.pad_to_multiple:
            raise ValueError("group_by_length only saves work when batches are cut: set pad_to_multiple "
                             "(e.g. 32) as well")

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size if self.micro_batch_size else 1

    def total_steps(self, steps_per_epoch: int) -> int:
        total = steps_per_epoch * max(self.epochs, 1)
        return min(total, self.max_steps) if self.max_steps > 0 else total


@dataclasses.dataclass
class Position:
    """Where the next batch comes from, and how many steps were taken."""

    epoch: int = 0
    batch: int = 0
    steps: int = 0

    def advance(self, steps_per_epoch: int) -> "Position":
        batch, epoch = self.batch + 1, self.epoch
        if batch >= steps_per_epoch:
            batch, epoch = 0, epoch + 1
        return Position(epoch, batch, self.steps + 1)


class MetricsLog:
    """Trackers (TensorBoard by default, W&B when ``wandb`` is given; see jaxrlhf/tracking.py)
    on process 0, plus a JSONL copy of everything logged under the metrics' own names.

    ``wandb``: a :class:`~jaxrlhf.tracking.WandbConfig` or its dict (``{"project": ...,
    "mode": "offline"}``); ``run_config``: the run's settings, shown by W&B next to the run."""

    def __init__(self, directory: str | Path, wandb=None, *, tensorboard: bool = True,
                 run_config: dict | None = None):
        from jaxrlhf.tracking import open_trackers

        self.directory = Path(directory)
        self.enabled = jax.process_index() == 0
        self._trackers = []
        if self.enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._trackers = open_trackers(self.directory, tensorboard=tensorboard, wandb=wandb,
                                           run_config=run_config)
            self._jsonl = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")

    def write(self, step: int, metrics: dict[str, float], prefix: str) -> None:
        from jaxrlhf.tracking import tag_name

        if not self.enabled:
            return
        tagged = {tag_name(prefix, key): value for key, value in metrics.items()}
        for tracker in self._trackers:
            tracker.scalars(step, tagged)
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **metrics}) + "\n")
        self._jsonl.flush()

    def write_text(self, step: int, tag: str, text: str) -> None:
        """Text for the trackers (e.g. a few sampled completions), tagged ``tag`` (``ppo/samples``)."""
        from jaxrlhf.tracking import tag_name

        if self.enabled:
            prefix, _, key = tag.rpartition("/")
            for tracker in self._trackers:
                tracker.text(step, tag_name(prefix, key) if prefix else key, text)

    def close(self) -> None:
        if self.enabled:
            for tracker in self._trackers:
                tracker.close()
            self._jsonl.close()


def to_floats(metrics: dict) -> dict[str, float]:
    from jaxrlhf.sharding import to_host
    return {k: float(to_host(v)) for k, v in metrics.items()}
