"""Deterministic batching of row arrays (ranked lists, pairs, SFT rows, prompt tables).

A batch is a pure function of ``(seed, epoch, batch index)``, so a run resumed at batch
``b`` of epoch ``e`` sees exactly the batches the interrupted run would have seen.

Arrays are stored right-padded to one ``max_length``. With ``pad_to_multiple`` a batch is
cut to the smallest multiple of it that holds its longest row: fewer wasted FLOPs, at the
price of one compilation per distinct width (at most ``max_length / pad_to_multiple``).
``group_by_length`` batches rows of similar length together (sorted inside windows of
``GROUP_WINDOW`` batches of a shuffled epoch, then the batch order shuffled, as
transformers' LengthGroupedSampler does) so that the cut removes most of the padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

GROUP_WINDOW = 50  # batches per sorting window for group_by_length
# A SeedSequence stream, apart from every epoch's, for the order of grouped batches.
_BATCH_ORDER_STREAM = 0x62617463  # "batc"


class Rows(Protocol):
    def __len__(self) -> int: ...
    def take(self, index: np.ndarray): ...
    def as_dict(self) -> dict[str, np.ndarray]: ...


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch: a permutation that depends only on ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


def batches_per_epoch(num_rows: int, batch_size: int, drop_last: bool = True) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return num_rows // batch_size if drop_last else -(-num_rows // batch_size)


def row_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """``[N]`` int: one past the last real token of each row, the longest over a row's
    sequences (``attention_mask`` ``[N, ..., T]``; 0 for a row with no real token)."""
    mask = attention_mask.reshape(attention_mask.shape[0], -1, attention_mask.shape[-1]) > 0
    t = mask.shape[-1]
    last = np.where(mask.any(-1), t - np.argmax(mask[..., ::-1], axis=-1), 0)  # [N, S]
    return last.max(axis=1)


def trim_padding(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Cut the token axis of a right-padded batch to the smallest multiple of ``multiple``
    (at most its current width) that keeps every real token.

    The token axis is the last axis of ``attention_mask``; every array with the same number
    of dimensions and the same last size is cut with it (ids, loss and segment masks), the
    rest (scores, slot masks, reference log-probs) is left as it is. Left-padded rows end at
    the full width, so they are never cut.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    mask = batch["attention_mask"]
    t = mask.shape[-1]
    longest = int(row_lengths(mask).max(initial=0))
    width = min(t, max(multiple, -(-longest // multiple) * multiple))
    if width == t:
        return batch
    return {k: v[..., :width] if v.ndim == mask.ndim and v.shape[-1] == t else v for k, v in batch.items()}


def length_grouped_order(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """A row order whose consecutive ``batch_size`` blocks hold rows of similar length.

    The epoch's permutation is cut into windows of ``GROUP_WINDOW`` batches, each window is
    sorted by length (longest first), and the order of the full batches is shuffled; rows
    beyond the last full batch stay at the end (where ``drop_last`` drops them). Depends
    only on ``(lengths, batch_size, seed, epoch)``.
    """
    n = len(lengths)
    order = epoch_order(n, seed, epoch)
    window = batch_size * GROUP_WINDOW
    order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                            for chunk in np.split(order, range(window, n, window))]) if n else order
    full = n // batch_size
    blocks = order[:full * batch_size].reshape(full, batch_size)
    shuffled = np.random.default_rng([seed, epoch, _BATCH_ORDER_STREAM]).permutation(full)
    return np.concatenate([blocks[shuffled].reshape(-1), order[full * batch_size:]])


def iterate_batches(data: Rows, batch_size: int, *, seed: int, epoch: int, start_batch: int = 0,
                    shuffle: bool = True, drop_last: bool = True, group_by_length: bool = False,
                    pad_to_multiple: int = 0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(batch_index, batch)`` for one epoch, starting at ``start_batch`` (for resume).

    ``batch`` holds the data's arrays for ``batch_size`` rows (e.g. ``input_ids`` /
    ``attention_mask`` ``[B, K, T]`` and ``scores`` / ``slot_mask`` ``[B, K]`` for ranked
    lists). With ``drop_last=False`` the last batch may be smaller (a new shape, so one more
    compilation). ``group_by_length`` (needs ``shuffle``) batches rows of similar length;
    ``pad_to_multiple > 0`` cuts each batch's token axis (see :func:`trim_padding`).
    """
    count = batches_per_epoch(len(data), batch_size, drop_last)
    if not 0 <= start_batch <= count:
        raise ValueError(f"start_batch {start_batch} is outside 0..{count} (batches in this epoch)")
    if group_by_length and not shuffle:
        raise ValueError("group_by_length reorders an epoch; it needs shuffle=True")
    if not shuffle:
        order = np.arange(len(data))
    elif group_by_length:
        order = length_grouped_order(row_lengths(data.as_dict()["attention_mask"]), batch_size,
                                     seed=seed, epoch=epoch)
    else:
        order = epoch_order(len(data), seed, epoch)
    for b in range(start_batch, count):
        batch = data.take(order[b * batch_size:(b + 1) * batch_size]).as_dict()
        yield b, trim_padding(batch, pad_to_multiple) if pad_to_multiple else batch
