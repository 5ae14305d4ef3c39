"""Advantage estimators, registered by name.

Every estimator runs the same pipeline on a batch of scored answers, rows grouped by prompt
(a prompt's ``group_size`` answers are adjacent):

1. sequence scores: + missing-EOS penalty, clipped (``AlgorithmConfig``);
2. the estimator's baseline over each prompt's group (none, group mean, group mean / std,
   leave-one-out);
3. per-token rewards: the (baselined) score at the last trained token, plus dense rewards,
   minus ``beta * KL_t`` when the KL sits in the reward;
4. advantages: GAE against a critic (``gae``), else returns-to-go (gamma) of those rewards, which
   with no KL in the reward is the baselined score on every token of its answer;
5. whitening over the batch's valid tokens (configurable; always for ``reinforce_pp``).

A group whose scores are all equal gets zero advantages from every group estimator, never NaN.
GRPO's std is the population std (as tunix; trl uses torch's sample std) plus ``GROUP_STD_EPS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrlhf.losses import compute_gae, masked_whiten

GROUP_STD_EPS = 1e-4


def no_baseline(scores: jax.Array, group_size: int) -> jax.Array:
    return scores


def group_mean_baseline(scores: jax.Array, group_size: int) -> jax.Array:
    """Dr. GRPO (Liu et al. 2025): r_i - mean(r) over the prompt's answers. scores: [B]."""
    groups = scores.reshape(-1, group_size)  # [B / G, G]
    return (groups - groups.mean(axis=1, keepdims=True)).reshape(-1)


def group_normalized_baseline(scores: jax.Array, group_size: int) -> jax.Array:
    """GRPO (Shao et al. 2024): (r_i - mean(r)) / (std(r) + eps), population std. scores: [B]."""
    groups = scores.reshape(-1, group_size)  # [B / G, G]
    centred = groups - groups.mean(axis=1, keepdims=True)
    return (centred / (groups.std(axis=1, keepdims=True) + GROUP_STD_EPS)).reshape(-1)


def leave_one_out_baseline(scores: jax.Array, group_size: int) -> jax.Array:
    """RLOO (Ahmadian et al. 2024): r_i - mean of the prompt's other answers. scores: [B]."""
    groups = scores.reshape(-1, group_size)  # [B / G, G]
    others = (groups.sum(axis=1, keepdims=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


@dataclasses.dataclass(frozen=True)
class AdvantageEstimator:
    name: str
    baseline: Callable[[jax.Array, int], jax.Array]
    needs_critic: bool = False  # a value model is trained alongside the policy
    needs_group: bool = False  # several answers per prompt
    always_whiten: bool = False  # whitening is part of the estimator's definition


ADVANTAGES: dict[str, AdvantageEstimator] = {e.name: e for e in (
    AdvantageEstimator("gae", no_baseline, needs_critic=True),
    AdvantageEstimator("grpo", group_normalized_baseline, needs_group=True),
    AdvantageEstimator("dr_grpo", group_mean_baseline, needs_group=True),
    AdvantageEstimator("rloo", leave_one_out_baseline, needs_group=True),
    # REINFORCE++ (Hu 2025): no critic, no group baseline; KL-shaped returns whitened over the batch
    AdvantageEstimator("reinforce_pp", no_baseline, always_whiten=True),
)}


def penalized_scores(scores: jax.Array, finished: jax.Array, algo) -> jax.Array:
    """Scores [B] with the missing-EOS penalty and the clip applied."""
    if algo.missing_eos_penalty is not None:
        scores = jnp.where(finished, scores, scores + algo.missing_eos_penalty)
    if algo.score_clip > 0:
        scores = jnp.clip(scores, -algo.score_clip, algo.score_clip)
    return scores


def last_token_one_hot(mask: jax.Array) -> jax.Array:
    """[B, N]: 1 at each row's last trained token (the mask need not start at 0: branched
    rollouts train a suffix), 0 for rows with no trained token."""
    mask = mask.astype(jnp.float32)
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)
    return jax.nn.one_hot(last, mask.shape[1]) * mask


def token_rewards(scores, kl, response_mask, finished, kl_coef, algo, group_size: int, dense_rewards=None):
    """(rewards [B, N], baselined scores [B]).

    scores, finished: [B]; kl: [B, N] per-token KL estimate (0 off the mask);
    dense_rewards: [B, N] or None (added on trained tokens)."""
    mask = response_mask.astype(jnp.float32)
    scores = algo.estimator.baseline(penalized_scores(scores, finished, algo), group_size)
    rewards = scores[:, None] * last_token_one_hot(mask)
    if algo.kl.placement == "reward":
        rewards = rewards - kl_coef * kl * mask
    if dense_rewards is not None:
        rewards = rewards + dense_rewards * mask
    return rewards, scores


def compute_advantages(rewards, values, response_mask, algo) -> tuple[jax.Array, jax.Array]:
    """(advantages, returns), both [B, N]. values: [B, N] critic values (gae) or None."""
    if algo.estimator.needs_critic:
        advantages, returns = compute_gae(rewards, values, response_mask, algo.gamma, algo.lam)
    else:  # returns-to-go: with lambda 1 and zero values GAE is exactly that
        advantages, returns = compute_gae(rewards, jnp.zeros_like(rewards), response_mask, algo.gamma, 1.0)
    if algo.whiten_advantages or algo.estimator.always_whiten:
        advantages = masked_whiten(advantages, response_mask)
    return advantages, returns
