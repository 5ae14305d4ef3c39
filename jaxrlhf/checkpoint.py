"""Training-state checkpoints: the only module that imports Orbax.

A checkpoint is a step folder holding the state pytree (params, optimizer state, step,
RNG, ...) and a small JSON of metadata (data position, metrics). Orbax writes each step
into a temporary folder and renames it when complete, so a process killed at any moment,
even mid-save, leaves the previous complete checkpoint as the latest one. Saves are
collective across hosts (every process calls ``save``); Orbax writes each host's shards.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Keep the last ``keep`` checkpoints of a run under ``directory``."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, async_save: bool = False):
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
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        if not self.async_save:
            self._manager.wait_until_finished()
        log.info("saved checkpoint step %d to %s", step, self.directory)

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restore into the shapes, dtypes and shardings of ``abstract_state``.

        abstract_state: a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set (or of
        arrays, whose shardings are reused).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint to resume from")
        target = jax.tree.map(_as_abstract, abstract_state)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _as_abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
