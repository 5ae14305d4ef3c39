"""The one trainer: every stage, supervised or RL, runs its steps through :class:`Trainer`.

The trainer owns the order of things and nothing about models or losses. A stage hands it
a step ``step(state, batch) -> (state, metrics)``, a way to make batches from a data position,
and optionally an ``evaluate(state)``; the trainer runs the steps with a progress bar, logs
(TensorBoard + metrics.jsonl, learning rate included), evaluates, applies the non-finite policy,
checkpoints and resumes. Anything else a stage wants done every N steps is a hook
(``add_hook(fn, every=N)``, levanter-style), called with a :class:`StepInfo`.

Exact resume: a checkpoint stores the state and the data position of the *next* batch (epoch,
batch index); batches are a pure function of (seed, epoch, index), so a resumed run sees the
same batches in the same order as an uninterrupted one. Rows of metrics.jsonl logged after the
checkpoint a run resumes from are dropped, so no step is logged twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxrlhf.loop import MetricsLog, NonFiniteLossError, Position, to_floats

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How a stage's steps are run (the stage's train config supplies these)."""

    total_steps: int
    steps_per_epoch: int
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    max_nonfinite_steps: int = 3  # consecutive skipped (NaN/Inf) steps before the run stops
    desc: str = "train"  # progress bar label
    unit: str = "step"
    prefix: str = "train"  # TensorBoard / metrics.jsonl split of the step metrics
    postfix: tuple[str, ...] = ("loss",)  # metrics shown on the progress bar


@dataclasses.dataclass
class StepInfo:
    """What a hook sees after a step."""

    state: Any
    position: Position
    metrics: dict[str, float]
    trainer: "Trainer"


@dataclasses.dataclass
class FitResult:
    state: Any
    position: Position
    last_eval: dict[str, float]
    history: list[dict]  # every logged row of step metrics, this process's run only


def drop_rows_after(metrics_file: Path, step: int, *, eval_at_step: bool = False) -> int:
    """Remove metrics.jsonl rows logged after ``step`` (a resumed run logs them again), and with
    ``eval_at_step`` the eval rows at ``step`` too (a run resumed at its last step evaluates
    it again); returns how many were dropped."""
    if not metrics_file.exists():
        return 0

    def keep(row: dict) -> bool:
        at = row.get("step", 0)
        return at < step or (at == step and not (eval_at_step and row.get("split") == "eval"))

    lines = metrics_file.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and keep(json.loads(line))]
    if len(kept) != len(lines):
        metrics_file.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return len(lines) - len(kept)


class Trainer:
    """Runs steps from a start position to ``settings.total_steps``.

    learning_rate: step -> the learning rate in force (logged with the step metrics).
    save_meta: extra JSON metadata stored with each checkpoint. logging_config: a stage's
    ``logging:`` section (jaxrlhf.tracking.LoggingConfig: TensorBoard, W&B).
    """

    def __init__(self, settings: LoopSettings, *, out: str | Path, checkpointer=None,
                 learning_rate: Callable[[int], float] | None = None,
                 save_meta: Callable[[], dict] | None = None, logging_config=None, run_config: dict | None = None):
        self.settings = settings
        self.out = Path(out)
        self.checkpointer = checkpointer
        self.learning_rate = learning_rate
        self.save_meta = save_meta
        self.log_options = ({} if logging_config is None else
                            dict(wandb=logging_config.wandb, tensorboard=logging_config.tensorboard,
                                 run_config=run_config))
        self.hooks: list[tuple[int, Callable[[StepInfo], None]]] = []
        self.metrics_log: MetricsLog | None = None
        self.last_eval: dict[str, float] = {}
        self.history: list[dict] = []
        self._bar = None

    def add_hook(self, fn: Callable[[StepInfo], None], every: int) -> None:
        """Call ``fn(info)`` after every ``every``-th step (and never with every <= 0)."""
        if every > 0:
            self.hooks.append((every, fn))

    def write(self, message: str) -> None:
        """A line printed above the progress bar (process 0)."""
        if self._bar is not None:
            self._bar.write(message)
        elif jax.process_index() == 0:
            print(message)

    def log(self, step: int, metrics: dict[str, float], prefix: str) -> None:
        if self.metrics_log is not None:
            self.metrics_log.write(step, metrics, prefix)

    # ------------------------------------------------------------------ checkpoints and eval

    def save(self, state, position: Position) -> None:
        if self.checkpointer is None or self.checkpointer.latest_step() == position.steps:
            return
        meta = {"epoch": position.epoch, "batch": position.batch, "steps": position.steps}
        meta.update(self.save_meta() if self.save_meta else {})
        self.checkpointer.save(position.steps, state, meta)

    def run_eval(self, state, position: Position, evaluate) -> None:
        if evaluate is None:
            return
        self.last_eval = evaluate(state)
        self.log(position.steps, self.last_eval, "eval")
        self.write(f"{self.settings.desc} step {position.steps}: eval "
                   + ", ".join(f"{k} {v:.4g}" for k, v in self.last_eval.items()))

    # ------------------------------------------------------------------ the loop

    def fit(self, state, step: Callable[[Any, Any], tuple[Any, dict]],
            batches: Callable[[int, int], Iterator[Any]], start: Position,
            evaluate: Callable[[Any], dict[str, float]] | None = None) -> FitResult:
        """Run the steps; returns the final state, position, last eval and logged history.

        batches(epoch, start_batch) yields the batches of that epoch from start_batch.
        """
        s = self.settings
        if jax.process_index() == 0:
            # resumed at the last step (killed after the final save): the final eval runs again
            dropped = drop_rows_after(self.out / "metrics.jsonl", start.steps,
                                      eval_at_step=start.steps >= s.total_steps)
            if dropped:
                log.info("dropped %d metrics.jsonl rows logged after step %d (logged again on resume)",
                         dropped, start.steps)
        self.metrics_log = MetricsLog(self.out, **self.log_options)
        self._bar = tqdm(total=s.total_steps, initial=start.steps, desc=s.desc, unit=s.unit,
                         disable=jax.process_index() != 0, dynamic_ncols=True)
        position, nonfinite = start, 0
        window: list[dict] = []
        started = time.perf_counter()
        try:
            while position.steps < s.total_steps:
                for batch in batches(position.epoch, position.batch):
                    state, metrics = step(state, batch)
                    position = position.advance(s.steps_per_epoch)
                    metrics = to_floats(metrics)
                    nonfinite = self._check_finite(metrics, position, nonfinite)
                    window.append(metrics)
                    self._bar.update(1)
                    last = position.steps >= s.total_steps
                    if position.steps % s.log_every == 0 or last:
                        self._log_window(window, position, time.perf_counter() - started)
                        window, started = [], time.perf_counter()
                    info = StepInfo(state, position, metrics, self)
                    for every, hook in self.hooks:
                        if position.steps % every == 0:
                            hook(info)
                    if s.eval_every and position.steps % s.eval_every == 0 and not last:
                        self.run_eval(state, position, evaluate)
                    if s.save_every and position.steps % s.save_every == 0 and not last:
                        self.save(state, position)
                    if last:
                        break
            self._bar.close()
            self._bar = None
            self.run_eval(state, position, evaluate)
            self.save(state, position)
            if self.checkpointer is not None:
                self.checkpointer.wait()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self.metrics_log.close()
        return FitResult(state, position, self.last_eval, self.history)

    def _check_finite(self, metrics: dict, position: Position, nonfinite: int) -> int:
        """The non-finite policy: a skipped update is logged; too many in a row stop the run (the
        last checkpoint holds finite parameters: a skipped update never changes them)."""
        if metrics.get("skipped", 0.0) <= 0:
            return 0
        nonfinite += 1
        log.warning("%s step %d: non-finite loss, gradient or reward (loss=%s); update skipped (%d in a row)",
                    self.settings.desc, position.steps, metrics.get("loss", metrics.get("policy_loss")), nonfinite)
        if nonfinite >= self.settings.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{nonfinite} consecutive {self.settings.desc} steps with a non-finite loss, gradient or reward "
                f"at step {position.steps}; stopping (the last checkpoint holds finite parameters)")
        return nonfinite

    def _log_window(self, window: list[dict], position: Position, seconds: float) -> None:
        keys = list(dict.fromkeys(k for m in window for k in m))
        mean = {k: float(np.mean([m[k] for m in window if k in m])) for k in keys}
        mean["steps_per_second"] = len(window) / max(seconds, 1e-9)
        if "input_tokens" in mean:  # a supervised step's real tokens forwarded
            mean["tokens_per_second"] = sum(m.get("input_tokens", 0.0) for m in window) / max(seconds, 1e-9)
        if self.learning_rate is not None:
            mean["learning_rate"] = float(self.learning_rate(position.steps))
        self.log(position.steps, mean, self.settings.prefix)
        self.history.append({"step": position.steps, **mean})
        shown = {k: f"{mean[k]:.4g}" for k in self.settings.postfix if k in mean}
        if shown:
            self._bar.set_postfix(shown)
