"""Training-state checkpoints: the only module that imports Orbax.

A checkpoint is a step folder holding the state pytree (params, optimizer state, step,
RNG, ...) and a small JSON of metadata (data position, metrics). A LoRA run's frozen base (the
``nnx.Param`` arrays in a train state's ``buffers``) is left out: it is read-only and already
on disk at model.path, so a checkpoint holds what training changes, and a restore takes the
base from the state the run built (the run record checks that it is the same base). Orbax writes each step
into a temporary folder and renames it when complete, so a process killed at any moment,
even mid-save, leaves the previous complete checkpoint as the latest one. Saves are
collective across hosts (every process calls ``save``); Orbax writes each host's shards.

A checkpoint damaged after it was written (a truncated or deleted file, a lost disk block)
is not skipped by Orbax: ``restore_latest`` checks the files, tries to read each step back,
newest first, and moves a damaged step aside to ``damaged/<step>`` (never deletes it) so that
the next complete one is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Keep the last ``keep`` checkpoints of a run under ``directory``."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, async_save: bool = False):
        if keep < 1:  # Orbax would delete every checkpoint, the one just saved included
            raise ValueError(f"keep must be >= 1 (the last checkpoint is always kept), got {keep}")
        self.directory = Path(directory).absolute()
        self.async_save = async_save
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        """The newest *complete* checkpoint (unfinished temporary folders are ignored)."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``state`` and JSON-able ``meta``; blocks until written unless async."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(without_frozen_base(state)), meta=ocp.args.JsonSave(meta)), force=True)
        if not self.async_save:
            self._manager.wait_until_finished()
        log.info("saved checkpoint step %d to %s", step, self.directory)

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restore into the shapes, dtypes and shardings of ``abstract_state``.

        abstract_state: a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (or of
        arrays, whose shardings are reused); a LoRA state's frozen base must be real arrays
        (the loaded base), which the restored state keeps.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint to resume from")
        target = jax.tree.map(_as_abstract, without_frozen_base(abstract_state))
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return with_frozen_base(restored["state"], abstract_state), dict(restored["meta"])

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest checkpoint that reads back completely, or None
        when there is no checkpoint at all.

        A damaged step is named in a warning and moved to ``damaged/<step>``; with every step
        damaged this raises CheckpointError. A complete checkpoint that holds different arrays
        than ``abstract_state`` (a resume with another model or optimizer) is not damage: that
        raises CheckpointError and moves nothing.
        """
        from jaxrlhf.models import CheckpointError

        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None
        for step in steps:
            problem = self._missing_or_unreadable(step)
            if problem is None:
                try:
                    saved = _saved_shapes(self.directory / str(step))
                except Exception as e:  # unreadable tree metadata or manifest: damaged
                    problem = _one_line(e)
            if problem is None:
                _check_same_arrays(step, saved, abstract_state, self.directory)
                try:
                    state, meta = self.restore(step, abstract_state)
                    return step, state, meta
                except Exception as e:  # any read error of this step's files: try an older one
                    problem = _one_line(e)
            self._set_aside(step, problem)
        raise CheckpointError(f"{self.directory}: no checkpoint reads back completely (steps "
                              f"{', '.join(map(str, steps))} were damaged and moved to "
                              f"{self.directory / 'damaged'})")

    def _missing_or_unreadable(self, step: int) -> str | None:
        """What makes ``step`` unusable before reading any array, or None."""
        folder = self.directory / str(step)
        for name in ("state/_METADATA", "state/manifest.ocdbt", "meta/metadata"):
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size == 0:
                return f"{name} is empty"
        for name in ("state/_METADATA", "meta/metadata"):
            try:
                json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as e:
                return f"{name} is not readable JSON ({_one_line(e)})"
        return None

    def _set_aside(self, step: int, problem: str) -> None:
        """Move a damaged step out of the manager's sight, keeping its files for inspection."""
        source = self.directory / str(step)
        target = self.directory / "damaged" / str(step)
        n = 1
        while target.exists():  # the same step damaged again after a re-run
            n += 1
            target = self.directory / "damaged" / f"{step}-{n}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
        log.warning("checkpoint step %d in %s is damaged (%s): moved to %s, trying an older one",
                    step, self.directory, problem, target)
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _is_train_state(x) -> bool:
    from jaxrlhf.steps.common import TrainState
    return isinstance(x, TrainState)


def _base_and_rest(buffers):
    """(frozen base Params, other buffers) of a train state's buffers: with LoRA every nnx.Param
    there is the frozen base (split_trained puts trained Params in ``params``); without LoRA
    there are none."""
    from flax import nnx
    return nnx.split_state(buffers, nnx.Param, ...)


def without_frozen_base(state: Any) -> Any:
    """``state`` with the frozen base left out of every TrainState in it (an RL state holds two)."""
    strip = lambda x: x.replace(buffers=_base_and_rest(x.buffers)[1]) if _is_train_state(x) else x
    return jax.tree.map(strip, state, is_leaf=_is_train_state)


def with_frozen_base(restored: Any, built: Any) -> Any:
    """``restored`` (a state without its frozen base) with the base arrays of ``built``, the state
    this run built from model.path, put back."""
    from flax import nnx

    def join(r, b):
        if not _is_train_state(r):
            return r
        base = _base_and_rest(b.buffers)[0]
        if not all(isinstance(x, jax.Array) for x in jax.tree.leaves(base)):
            raise ValueError("restoring a LoRA state needs the loaded frozen base arrays in the target "
                             "state's buffers (checkpoints do not hold the base)")
        return r.replace(buffers=nnx.merge_state(base, r.buffers))

    return jax.tree.map(join, restored, built, is_leaf=_is_train_state)


def _as_abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _saved_shapes(folder: Path) -> list[tuple[int, ...]]:
    """Global shapes of the arrays saved in ``folder/state`` (reads the metadata, no data)."""
    from etils import epath

    handler = ocp.StandardCheckpointHandler()
    try:
        metadata = handler.metadata(epath.Path(folder / "state"))
    finally:
        handler.close()
    return sorted(tuple(x.shape) for x in jax.tree.leaves(metadata))


def _check_same_arrays(step: int, saved: list[tuple[int, ...]], abstract_state: Any,
                       directory: Path) -> None:
    """Refuse (CheckpointError) a readable checkpoint whose arrays differ from the state this
    run builds: restoring would fail on every step, and setting them all aside as damaged
    would hide a good run."""
    from jaxrlhf.models import CheckpointError

    wanted = sorted(tuple(x.shape) for x in jax.tree.leaves(without_frozen_base(abstract_state)))
    if saved != wanted:
        raise CheckpointError(f"{directory / str(step)}: holds {len(saved)} arrays whose shapes differ "
                              f"from the {len(wanted)} this config builds (another model or "
                              "optimizer?): resume with the run's own config")
