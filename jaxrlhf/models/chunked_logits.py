"""Token log-probs, SFT loss and entropies without the whole ``[B, T, V]`` logits at once.

With a 262k vocabulary (Gemma 3), float32 logits for B=4, T=512 are 2.1 GB, and the plain
path (``log_softmax`` then gather) keeps several such tensors alive, more under ``grad``.
Here the final hidden states are cut into chunks of ``chunk_size`` tokens and a
``lax.map`` multiplies one chunk at a time by the head, reducing it at once to the three
numbers per token the losses need (the logit of the target, the log-normaliser, the
entropy). Each chunk is rematerialised (``jax.checkpoint``) so the backward pass also holds
one chunk's ``[chunk_size, V]`` logits at a time, not every chunk's.

``unembed`` is the model's ``hidden [..., E] -> logits [..., V]`` (``model.unembed``: the tied
or untied head, with Gemma's final soft-cap), so results equal
``losses.token_log_probs`` / ``losses.sft_loss`` / ``losses.entropy_from_logits`` applied to
``model(...).logits``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Unembed = Callable[[jax.Array], jax.Array]


def _chunk_stats(unembed: Unembed, hidden: jax.Array, targets: jax.Array, temperature: float,
                 chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """Per position: log p(target) and entropy under ``softmax(logits / temperature)``.

    hidden: [N, E]; targets: [N] -> (target_log_prob [N], entropy [N]), float32.
    """
    n, e = hidden.shape
    chunks = -(-n // chunk_size)
    pad = chunks * chunk_size - n
    hidden_c = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(chunks, chunk_size, e)
    targets_c = jnp.pad(targets, (0, pad)).reshape(chunks, chunk_size)

    @jax.checkpoint  # backward recomputes this chunk's logits instead of storing all chunks'
    def one_chunk(args):
        h, t = args  # h: [C, E]; t: [C]
        logits = unembed(h).astype(jnp.float32) / temperature  # [C, V]
        log_z = jax.nn.logsumexp(logits, axis=-1)  # [C]
        picked = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0] - log_z
        probs = jnp.exp(logits - log_z[:, None])
        entropy = log_z - jnp.sum(probs * logits, axis=-1)
        return picked, entropy

    picked, entropy = jax.lax.map(one_chunk, (hidden_c, targets_c))
    return picked.reshape(-1)[:n], entropy.reshape(-1)[:n]


def chunked_target_stats(unembed: Unembed, hidden: jax.Array, targets: jax.Array, *,
                         temperature: float = 1.0, chunk_size: int = 512) -> tuple[jax.Array, jax.Array]:
    """Log-prob of each given target and the entropy of the distribution it was drawn from.

    hidden: [B, N, E] (the positions that predict); targets: [B, N] (the tokens they predict)
    -> log_probs [B, N], entropy [B, N], float32, under ``softmax(unembed(hidden) / temperature)``.
    """
    b, n, e = hidden.shape
    picked, entropy = _chunk_stats(unembed, hidden.reshape(b * n, e), targets.reshape(b * n),
                                   temperature, chunk_size)
    return picked.reshape(b, n), entropy.reshape(b, n)


def chunked_token_stats(unembed: Unembed, hidden: jax.Array, input_ids: jax.Array, *,
                        temperature: float = 1.0, chunk_size: int = 512) -> tuple[jax.Array, jax.Array]:
    """Log-probs of the taken tokens and per-position entropies.

    hidden: [B, T, E] final hidden states (position t predicts token t+1); input_ids: [B, T]
    -> log_probs [B, T] (0 at t = 0, as ``losses.token_log_probs(logits, ids, temperature)``)
    and entropy [B, T] (of position t's distribution, as
    ``losses.entropy_from_logits(logits / temperature)``).
    """
    # the target of position t is token t+1; the last position's (unused) target is token 0
    targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    picked, entropy = chunked_target_stats(unembed, hidden, targets, temperature=temperature,
                                           chunk_size=chunk_size)
    log_probs = jnp.pad(picked[:, :-1], ((0, 0), (1, 0)))
    return log_probs, entropy


def chunked_token_log_probs(unembed: Unembed, hidden: jax.Array, input_ids: jax.Array, *,
                            temperature: float = 1.0, chunk_size: int = 512) -> jax.Array:
    """``losses.token_log_probs`` from hidden states. hidden: [B, T, E]; input_ids: [B, T] -> [B, T]."""
    return chunked_token_stats(unembed, hidden, input_ids, temperature=temperature,
                               chunk_size=chunk_size)[0]


def chunked_sft_loss(unembed: Unembed, hidden: jax.Array, input_ids: jax.Array, loss_mask: jax.Array,
                     *, chunk_size: int = 512) -> tuple[jax.Array, dict]:
    """``losses.sft_loss`` from hidden states: mean NLL over the trained tokens, with its sum
    and token count. hidden: [B, T, E]; input_ids, loss_mask: [B, T]."""
    mask = jnp.asarray(loss_mask, jnp.float32).at[:, 0].set(0.0)  # position 0 has no prediction
    log_probs = chunked_token_log_probs(unembed, hidden, input_ids, chunk_size=chunk_size)
    nll_sum, count = -(log_probs * mask).sum(), mask.sum()
    return nll_sum / jnp.maximum(count, 1.0), {"nll_sum": nll_sum, "token_count": count}
