"""How token losses become one number (registered by name in AlgorithmConfig.loss_aggregation).

token_mean: sum over every valid token of the minibatch / their count (PPO in trl / OpenRLHF);
sequence_mean: each answer's mean over its tokens, then the mean over answers (GRPO's paper);
sequence_sum: each answer's sum / a constant (the max new tokens), mean over answers
(Dr. GRPO: no bias towards short or long answers from per-answer length normalisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def aggregate(token_losses: jax.Array, mask: jax.Array, kind: str) -> jax.Array:
    """token_losses, mask: [B, N] -> []."""
    mask = mask.astype(jnp.float32)
    if kind == "token_mean":
        return jnp.sum(token_losses * mask) / jnp.maximum(mask.sum(), 1.0)
    summed = jnp.sum(token_losses * mask, axis=1)  # [B]
    if kind == "sequence_mean":
        per_answer = summed / jnp.maximum(mask.sum(axis=1), 1.0)
        has_tokens = (mask.sum(axis=1) > 0).astype(jnp.float32)
        return jnp.sum(per_answer * has_tokens) / jnp.maximum(has_tokens.sum(), 1.0)
    if kind == "sequence_sum":
        return jnp.mean(summed / mask.shape[1])
    raise ValueError(f"unknown loss aggregation {kind!r}")


def clipped_surrogate(log_probs, old_log_probs, advantages, clip: float) -> tuple[jax.Array, jax.Array]:
    """Per-token clipped policy loss and whether the clip was active. All [B, N]."""
    ratio = jnp.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    return jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(jnp.float32)
