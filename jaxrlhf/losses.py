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


# --------------------------------------------------------------------------- language modelling


def token_log_probs(logits: jax.Array, input_ids: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``log p(x_t | x_<t)`` for every position (0 at t = 0, which nothing predicts).

    logits: [B, T, V] (position t predicts token t+1); input_ids: [B, T] -> [B, T] float32.
    ``temperature`` divides the logits, as the sampler does, so sampled and recomputed
    log-probs agree.
    """
    logits = logits[:, :-1].astype(jnp.float32) / temperature
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, input_ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(picked, ((0, 0), (1, 0)))


def sft_loss(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, dict]:
    """Mean negative log-likelihood over the trained tokens of the batch.

    logits: [B, T, V]; input_ids, loss_mask: [B, T] (loss_mask[t] = 1: token t is a target).
    Returns the sum and the token count too, so means stay exact across micro-batches.
    """
    mask = jnp.asarray(loss_mask, jnp.float32).at[:, 0].set(0.0)  # position 0 has no prediction
    nll = -token_log_probs(logits, input_ids) * mask
    nll_sum, count = nll.sum(), mask.sum()
    return nll_sum / jnp.maximum(count, 1.0), {"nll_sum": nll_sum, "token_count": count}


DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """DPO and its variants on per-sequence log-probs (all [B]).

    h = (log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log ref(y_l))
      sigmoid: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (DPO; eps: label smoothing)
      ipo:     (h - 1 / (2 beta))^2                                          (IPO; pass length-averaged log-probs)
      hinge:   max(0, 1 - beta h)                                            (SLiC)
    Implicit rewards are beta * (log pi - log ref) of each side. ``weights`` [B] (0/1)
    leaves padding pairs out of the loss and every sum.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
                  - label_smoothing * jax.nn.log_sigmoid(-beta * h))
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = jax.nn.relu(1.0 - beta * h)
    w = jnp.ones_like(losses) if weights is None else weights.astype(losses.dtype)
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    metrics = {
        "loss_sum": jnp.sum(losses * w),
        "pair_count": w.sum(),
        "chosen_reward_sum": jnp.sum(chosen_reward * w),
        "rejected_reward_sum": jnp.sum(rejected_reward * w),
        "correct": jnp.sum((chosen_reward > rejected_reward) * w),
        "margin_sum": jnp.sum((chosen_reward - rejected_reward) * w),
    }
    return metrics["loss_sum"] / jnp.maximum(metrics["pair_count"], 1.0), metrics


# --------------------------------------------------------------------------- PPO


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(mask.sum(), 1.0)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """Normalise ``x`` to unit variance (and zero mean) over the valid entries."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return jnp.where(mask.astype(bool), whitened, 0.0)


def kl_penalty(log_probs: jax.Array, ref_log_probs: jax.Array, estimator: str = "k1") -> jax.Array:
    """Per-token KL estimate between policy and reference from sampled tokens.

    k1: log p - log q (unbiased, can be negative); k3: (r - 1) - log r with r = q/p
    (unbiased, always >= 0, lower variance). [B, T] -> [B, T].
    """
    log_ratio = log_probs - ref_log_probs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return jnp.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator must be k1 or k3, got {estimator!r}")


def compute_gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation as a masked reverse ``lax.scan``.

    rewards, values, mask: [B, T] (mask 1 on response tokens, contiguous from the start).
    The value after the last valid token is 0 (the episode ends there).
    Returns (advantages, returns), both [B, T] and 0 where mask is 0.
    """
    mask = mask.astype(jnp.float32)
    values = values * mask
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)

    def step(next_advantage, inputs):
        reward, value, next_value, m = inputs
        delta = reward + gamma * next_value - value
        advantage = (delta + gamma * lam * next_advantage) * m
        return advantage, advantage

    xs = tuple(jnp.swapaxes(a, 0, 1) for a in (rewards, values, next_values, mask))  # time-major
    _, advantages = jax.lax.scan(step, jnp.zeros_like(rewards[:, 0]), xs, reverse=True)
    advantages = jnp.swapaxes(advantages, 0, 1)
    return advantages, (advantages + values) * mask


def ppo_policy_loss(log_probs: jax.Array, old_log_probs: jax.Array, advantages: jax.Array,
                    mask: jax.Array, clip: float = 0.2) -> tuple[jax.Array, dict]:
    """Clipped surrogate objective, mean over valid tokens. All [B, T]."""
    ratio = jnp.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    log_ratio = log_probs - old_log_probs
    return loss, {
        "clip_fraction": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
    }


def ppo_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
                   clip: float = 0.2) -> tuple[jax.Array, dict]:
    """Clipped value loss 0.5 * max((v - R)^2, (clip(v, v_old +- clip) - R)^2), token mean."""
    clipped_values = old_values + jnp.clip(values - old_values, -clip, clip)
    loss = 0.5 * masked_mean(jnp.maximum((values - returns) ** 2, (clipped_values - returns) ** 2), mask)
    return loss, {"value_clip_fraction": masked_mean(
        ((clipped_values - returns) ** 2 > (values - returns) ** 2).astype(jnp.float32), mask)}


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """Entropy of each position's distribution. logits: [B, T, V] -> [B, T]."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
