"""Batched generation with a KV cache: jitted prefill, then a ``lax.while_loop`` decode.

Prompts are left-padded (``[B, P]`` with a 0/1 mask), so every row's next token is
written at the same cache slot; positions come from the mask. The shape is fixed by
(batch, prompt length, max_new_tokens), so one compilation serves every batch of that
shape. Log-probs are taken from the logits divided by the temperature, exactly as the
trainer recomputes them.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.logits_path import last_token_logits


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < float("inf"):  # NaN refused too
            raise ValueError(f"temperature must be >= 0 and finite, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@flax.struct.dataclass
class Generation:
    tokens: jax.Array  # [B, N] generated tokens (pad after EOS)
    log_probs: jax.Array  # [B, N] log-prob of each token under the sampling distribution's logits / temperature
    mask: jax.Array  # [B, N] 1 for generated tokens up to and including EOS
    finished: jax.Array  # [B] bool: emitted EOS


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Mask logits outside the top-k / nucleus (top-p) set. logits: [B, V]."""
    neg = jnp.finfo(logits.dtype).min
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the best token)
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff_index = jnp.sum(before < top_p, axis=-1, keepdims=True) - 1
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, neg, logits)
    return logits


def _pick(logits: jax.Array, key: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    # logits: [B, V] float32 -> (token [B], log-prob [B] under logits / temperature)
    scaled = logits / (config.temperature if config.temperature > 0 else 1.0)
    log_probs = jax.nn.log_softmax(scaled, axis=-1)
    if config.temperature == 0:
        token = jnp.argmax(logits, axis=-1)
    else:
        token = jax.random.categorical(key, filter_logits(scaled, config.top_k, config.top_p), axis=-1)
    return token.astype(jnp.int32), jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]


def generate(graphdef: nnx.GraphDef, state: nnx.State | tuple, input_ids: jax.Array,
             attention_mask: jax.Array, key: jax.Array, *, config: SamplingConfig,
             eos_id: int | tuple[int, ...], pad_id: int, group: int = 1) -> Generation:
    """Generate up to ``config.max_new_tokens`` tokens per row (pure; jit it with the config static).

    state: the model's state, or a tuple of states (e.g. params, buffers) to merge.
    input_ids, attention_mask: [B, P] left-padded prompts.
    group: samples per prompt. Each prompt is prefilled once and its cache repeated, so the
    result has B * group rows, a prompt's samples adjacent: what ``np.repeat(input_ids, group,
    axis=0)`` would give, without prefilling every prompt ``group`` times (PPO samples 8 answers
    per prompt of 160 tokens: the prefill was a third of the rollout).
    """
    model = nnx.merge(graphdef, *(state if isinstance(state, tuple) else (state,)))
    b, p = input_ids.shape
    n = config.max_new_tokens
    eos = jnp.asarray(eos_id if isinstance(eos_id, (tuple, list)) else (eos_id,), jnp.int32)
    slots = jnp.concatenate([attention_mask.astype(jnp.int32), jnp.zeros((b, n), jnp.int32)], axis=1)
    out = model(input_ids, slots, cache=model.init_cache(b, p + n))
    # model.logits chunked: the head on the last position only, not [B, P, V] logits
    cache, last_logits = out.cache, last_token_logits(model, out)
    if group > 1:  # [B, ...] -> [B * group, ...]; the cache's write index is a scalar
        cache, last_logits, slots = jax.tree.map(lambda x: jnp.repeat(x, group, axis=0) if x.ndim else x,
                                                 (cache, last_logits, slots))
        b = b * group
    key, sub = jax.random.split(key)
    token, log_prob = _pick(last_logits, sub, config)
    tokens = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(token)
    log_probs = jnp.zeros((b, n), jnp.float32).at[:, 0].set(log_prob)
    mask = jnp.zeros((b, n), jnp.int32).at[:, 0].set(1)
    done = jnp.isin(token, eos)

    def cond(carry):
        i, *_, done = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, cache, slots, key, tokens, log_probs, mask, done = carry
        previous = tokens[:, i - 1]
        slots = slots.at[:, p + i - 1].set(1)
        out = model(previous[:, None], slots, cache=cache)
        key, sub = jax.random.split(key)
        token, log_prob = _pick(out.logits[:, -1], sub, config)
        token = jnp.where(done, pad_id, token)
        tokens = tokens.at[:, i].set(token)
        log_probs = log_probs.at[:, i].set(jnp.where(done, 0.0, log_prob))
        mask = mask.at[:, i].set((~done).astype(jnp.int32))
        done = done | jnp.isin(token, eos)
        return i + 1, out.cache, slots, key, tokens, log_probs, mask, done

    carry = (jnp.asarray(1, jnp.int32), cache, slots, key, tokens, log_probs, mask, done)
    *_, tokens, log_probs, mask, done = jax.lax.while_loop(cond, body, carry)
    return Generation(tokens=tokens, log_probs=log_probs, mask=mask, finished=done)
