"""Losses as pure functions of arrays.

Each loss returns ``(loss, metrics)`` and, where it averages over a data-dependent count,
also the sum and the count in ``metrics`` (``*_sum`` / ``*_count``) so that means stay
exact across micro-batches and hosts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ranking_pairs(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Ordered pairs ``(w, l)`` of a prompt's responses with ``score_w > score_l``.

    scores: [B, K]; mask: [B, K] bool -> pairs [B, K, K] bool, ``pairs[b, w, l]``.
    Ties and masked slots give no pair.
    """
    valid = mask[:, :, None] & mask[:, None, :]
    return valid & (scores[:, :, None] > scores[:, None, :])


def ranking_loss(rewards: jax.Array, scores: jax.Array, mask: jax.Array, margin: float = 0.0,
                 center_coef: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """InstructGPT K-wise ranking loss.

    rewards: [B, K] (one reward per response, from one forward per response);
    scores: [B, K] human/rule scores, higher is better; mask: [B, K] bool (K may vary).

    A prompt's loss is the mean over its ordered pairs of ``-log sigmoid(r_w - r_l - margin)``
    (1/C(K,2) weights when there are no ties); the batch loss is the mean over prompts with
    at least one pair. Prompts without pairs (all tied) contribute nothing, gradient included.
    ``center_coef`` adds ``center_coef * mean(r^2)`` over valid slots, keeping rewards near 0.
    """
    rewards = rewards.astype(jnp.float32)
    mask = mask.astype(bool)
    pairs = ranking_pairs(scores, mask)  # [B, K, K]
    diff = rewards[:, :, None] - rewards[:, None, :]  # [B, K, K]: r_w - r_l
    # where() before the loss keeps garbage in masked slots out of values and gradients
    diff = jnp.where(pairs, diff, 0.0)
    pair_loss = jnp.where(pairs, -jax.nn.log_sigmoid(diff - margin), 0.0)
    pairs_per_prompt = pairs.sum(axis=(1, 2))  # [B]
    has_pairs = pairs_per_prompt > 0
    prompt_loss = pair_loss.sum(axis=(1, 2)) / jnp.maximum(pairs_per_prompt, 1)  # [B]
    loss_sum = jnp.sum(jnp.where(has_pairs, prompt_loss, 0.0))
    prompt_count = has_pairs.sum()
    loss = loss_sum / jnp.maximum(prompt_count, 1)

    num_valid = jnp.maximum(mask.sum(), 1)
    masked_rewards = jnp.where(mask, rewards, 0.0)
    reward_mean = masked_rewards.sum() / num_valid
    if center_coef:
        loss = loss + center_coef * jnp.sum(masked_rewards ** 2) / num_valid

    metrics = ranking_metrics(rewards, scores, mask, pairs)
    metrics.update(loss_sum=loss_sum, prompt_count=prompt_count.astype(jnp.float32),
                   reward_sq_sum=jnp.sum(masked_rewards ** 2),
                   reward_count=mask.sum().astype(jnp.float32), reward_mean=reward_mean,
                   reward_std=jnp.sqrt(jnp.sum(jnp.where(mask, (rewards - reward_mean) ** 2, 0.0)) / num_valid))
    return loss, metrics


def ranking_metrics(rewards: jax.Array, scores: jax.Array, mask: jax.Array,
                    pairs: jax.Array | None = None) -> dict[str, jax.Array]:
    """Pairwise accuracy, top-1 accuracy and mean margin, with their sums and counts.

    rewards, scores: [B, K]; mask: [B, K] bool.
    Top-1: the response with the highest reward is one of the best-scored ones (prompts
    whose responses are all tied are not counted).
    """
    mask = mask.astype(bool)
    pairs = ranking_pairs(scores, mask) if pairs is None else pairs
    diff = rewards[:, :, None] - rewards[:, None, :]
    pair_count = pairs.sum()
    correct = jnp.sum(pairs & (diff > 0))
    margin_sum = jnp.sum(jnp.where(pairs, diff, 0.0))

    neg = jnp.finfo(jnp.float32).min
    best_by_reward = jnp.argmax(jnp.where(mask, rewards, neg), axis=1)  # [B]
    top_score = jnp.max(jnp.where(mask, scores, neg), axis=1)  # [B]
    picked_score = jnp.take_along_axis(scores, best_by_reward[:, None], axis=1)[:, 0]
    counted = pairs.any(axis=(1, 2))
    top1_correct = jnp.sum(counted & (picked_score >= top_score))
    top1_count = counted.sum()

    count = jnp.maximum(pair_count, 1)
    return {
        "pair_accuracy": correct / count,
        "pair_correct": correct.astype(jnp.float32),
        "pair_count": pair_count.astype(jnp.float32),
        "margin": margin_sum / count,
        "margin_sum": margin_sum,
        "top1_accuracy": top1_correct / jnp.maximum(top1_count, 1),
        "top1_correct": top1_correct.astype(jnp.float32),
        "top1_count": top1_count.astype(jnp.float32),
    }
