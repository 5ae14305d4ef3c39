"""Branched rollouts for PPO: a prompt's samples share a prefix and differ after it.

With ``train.branch_at: [lo, hi]``, one response is first sampled per prompt and cut at a
uniform fraction ``u ~ U(lo, hi)`` of its length; the prompt's ``samples_per_prompt``
responses are then fresh continuations of that prefix. Only continuation tokens are
trained on (the prefix is context, like the prompt), so with the group baseline the
siblings' advantages differ only through what they did after the branch point: where they
stopped, how they ended. Every continuation is an on-policy sample given its prefix, so
the policy gradient at the continuation tokens stays unbiased; what changes is which states
are trained on. This is the tree / "vine" idea of re-sampling from intermediate states
(VinePPO, Kazemnejad et al. 2024) reduced to one branch point per prompt.

Host-side array surgery only: :func:`branch_points` picks the cut, :func:`branch_prompts`
builds ``prompt + prefix`` rows for the sampler, :func:`join_branches` lays the result out
as an ordinary rollout (prompt left-padded to P, response right-padded to N) plus the mask
of the trained tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Branched:
    """A rollout of prefix + continuation responses, as the PPO loop consumes it.

    tokens, log_probs: [B, N]; mask: [B, N] 1 on prefix and continuation (what the reward
    sees); train_mask: [B, N] 1 on continuation tokens only (what PPO trains); finished: [B].
    """

    tokens: np.ndarray
    log_probs: np.ndarray
    mask: np.ndarray
    train_mask: np.ndarray
    finished: np.ndarray

    def take(self, rows) -> "Branched":
        """The rollout restricted to ``rows`` (indices into the batch)."""
        return Branched(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))


def branch_points(first_mask: np.ndarray, first_finished: np.ndarray, fraction: tuple[float, float],
                  rng: np.random.Generator) -> np.ndarray:
    """Prefix lengths [M]: floor(u * content length), u ~ U(lo, hi), where the content
    length excludes a final EOS (a prefix never contains it). first_mask: [M, N]."""
    content = first_mask.sum(axis=1) - first_finished.astype(np.int64)
    u = rng.uniform(fraction[0], fraction[1], size=content.shape)
    return np.floor(u * content).astype(np.int64)


def branch_prompts(prompt_ids: np.ndarray, prompt_mask: np.ndarray, first_tokens: np.ndarray,
                   cuts: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``prompt + first_tokens[:cut]`` per row, left-padded to width P + N.

    prompt_ids, prompt_mask: [M, P] left-padded; first_tokens: [M, N]; cuts: [M].
    Returns (ids, mask), both [M, P + N].
    """
    m, p = prompt_ids.shape
    n = first_tokens.shape[1]
    ids = np.full((m, p + n), pad_id, np.int32)
    mask = np.zeros((m, p + n), np.int32)
    for i in range(m):
        row = np.concatenate([prompt_ids[i][prompt_mask[i].astype(bool)], first_tokens[i, :cuts[i]]])
        ids[i, p + n - len(row):] = row
        mask[i, p + n - len(row):] = 1
    return ids, mask


def join_branches(prefix_tokens: np.ndarray, cuts: np.ndarray, cont_tokens: np.ndarray, cont_log_probs: np.ndarray,
                  cont_mask: np.ndarray, cont_finished: np.ndarray, pad_id: int) -> Branched:
    """Responses ``prefix + continuation`` cut to N tokens, one row per continuation.

    prefix_tokens: [B, N] (each row's first sample, repeated per sibling); cuts: [B];
    cont_*: [B, N] from the sampler. A continuation that does not fit in N tokens is cut
    and counts as unfinished, as a response reaching max_new_tokens does.
    """
    b, n = cont_tokens.shape
    tokens = np.full((b, n), pad_id, np.int32)
    log_probs = np.zeros((b, n), np.float32)
    mask = np.zeros((b, n), np.int32)
    train_mask = np.zeros((b, n), np.int32)
    finished = np.zeros((b,), bool)
    for i in range(b):
        k = int(cuts[i])
        length = int(cont_mask[i].sum())
        fit = min(length, n - k)
        tokens[i, :k] = prefix_tokens[i, :k]
        tokens[i, k:k + fit] = cont_tokens[i, :fit]
        log_probs[i, k:k + fit] = cont_log_probs[i, :fit]
        mask[i, :k + fit] = 1
        train_mask[i, k:k + fit] = 1
        finished[i] = bool(cont_finished[i]) and fit == length
    return Branched(tokens, log_probs, mask, train_mask, finished)
