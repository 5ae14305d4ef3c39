"""What the losses need from a causal LM's head, by the path ``model.logits`` names.

The stages never look at whole logits: SFT wants the log-prob of each target token, DPO the
same summed per answer, the RL learner the log-prob and entropy of each response token. Two
paths give them:

- ``full``: ``model(...).logits``, the whole ``[B, T, V]`` float32 tensor, then
  ``losses.token_log_probs`` / ``losses.sft_loss`` / ``losses.entropy_from_logits``. Fine for
  small vocabularies, and the reference the other path is tested against.
- ``chunked``: the final hidden states go through the head ``model.logits_chunk_size`` tokens
  at a time (:mod:`jaxrlhf.models.chunked_logits`), each chunk reduced at once to the numbers
  per token the losses need and recomputed in the backward pass; at most a few
  ``[chunk, V]`` blocks are alive. For 262k vocabularies (Gemma 3), where the full logits of a
  training batch take gigabytes.

The path is a static attribute of every :class:`~jaxrlhf.models.base.CausalLM` inside a model
(set here by :func:`set_logits_path`, as ``model.attention`` is by ``set_attention``), so it
travels in the graphdef: a step function, the DPO reference and the RL reference (both merged
with the policy's graphdef) follow it without an argument of their own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf import losses
from jaxrlhf.models.base import CausalLM
from jaxrlhf.models.chunked_logits import chunked_sft_loss, chunked_target_stats, chunked_token_log_probs

LOGITS_PATHS = ("full", "chunked")  # what model.logits may name


def set_logits_path(model: nnx.Module, path: str, chunk_size: int = 512) -> nnx.Module:
    """Run every causal LM inside ``model`` with the logits path ``path`` (full or chunked),
    ``chunk_size`` tokens per chunk on the chunked path."""
    if path not in LOGITS_PATHS:
        raise ValueError(f"model.logits must be one of {', '.join(LOGITS_PATHS)}, got {path!r}")
    if chunk_size < 1:
        raise ValueError(f"model.logits_chunk_size must be >= 1, got {chunk_size}")
    for _, module in nnx.iter_modules(model):
        if isinstance(module, CausalLM):
            module.logits_path = path
            module.logits_chunk_size = chunk_size
    return model


def _chunked(model: CausalLM) -> bool:
    return model.logits_path == "chunked"


def sft_loss(model: CausalLM, input_ids: jax.Array, attention_mask: jax.Array, loss_mask: jax.Array,
             segment_ids: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """``losses.sft_loss`` of the model on a batch: mean NLL over the trained tokens, with its
    sum (``nll_sum``) and count (``token_count``). input_ids, attention_mask, loss_mask,
    segment_ids (packed rows, or None): [B, T]."""
    if _chunked(model):
        hidden, _ = model.hidden_states(input_ids, attention_mask, segment_ids=segment_ids)
        return chunked_sft_loss(model.unembed, hidden, input_ids, loss_mask, chunk_size=model.logits_chunk_size)
    logits = model(input_ids, attention_mask, segment_ids=segment_ids).logits
    return losses.sft_loss(logits, input_ids, loss_mask)


def token_log_probs(model: CausalLM, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """``log p(x_t | x_<t)`` of every token (0 at t = 0). input_ids, attention_mask: [B, T] -> [B, T]."""
    if _chunked(model):
        hidden, _ = model.hidden_states(input_ids, attention_mask)
        return chunked_token_log_probs(model.unembed, hidden, input_ids, chunk_size=model.logits_chunk_size)
    return losses.token_log_probs(model(input_ids, attention_mask).logits, input_ids)


def response_log_probs_and_entropy(model: CausalLM, input_ids: jax.Array, attention_mask: jax.Array,
                                   prompt_len: int, temperature: float) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies [B, N] of the response tokens at ``temperature``.

    input_ids, attention_mask: [B, P + N], prompt_len = P. Response token j sits at P + j and
    is predicted by position P + j - 1; the chunked path runs the head on those N positions only.
    """
    if _chunked(model):
        hidden, _ = model.hidden_states(input_ids, attention_mask)
        return chunked_target_stats(model.unembed, hidden[:, prompt_len - 1:-1], input_ids[:, prompt_len:],
                                    temperature=temperature, chunk_size=model.logits_chunk_size)
    logits = model(input_ids, attention_mask).logits
    log_probs = losses.token_log_probs(logits, input_ids, temperature)[:, prompt_len:]
    entropy = losses.entropy_from_logits(logits[:, prompt_len - 1:-1] / temperature)
    return log_probs, entropy


def last_token_logits(model: CausalLM, out) -> jax.Array:
    """Float32 logits [B, V] of the last position of a forward ``out`` (a CausalLMOutput); the
    chunked path runs the head on that position only instead of slicing [B, T, V] logits."""
    if _chunked(model):
        return model.unembed(out.hidden[:, -1]).astype(jnp.float32)
    return out.logits[:, -1]
