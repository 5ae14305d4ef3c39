"""What every causal LM port shares: the forward pass over blocks, masks, positions,
KV cache, remat and activation sharding. Architectures supply embeddings, blocks and heads."""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.attention import AttentionMask, resolve_backend
from jaxrlhf.models.layers import KVCache
from jaxrlhf.sharding import constrain

BATCH_LEN_EMBED = ("act_batch", "act_len", "act_embed")

# Keys any transformers config may carry; kept (in ``extra_json``) but not modelled.
GENERIC_HF_KEYS = {"bos_token_id", "eos_token_id", "pad_token_id", "architectures", "dtype",
                   "torch_dtype", "transformers_version", "use_cache", "_name_or_path",
                   "output_hidden_states", "output_attentions", "return_dict", "id2label",
                   "label2id", "problem_type", "is_encoder_decoder", "chunk_size_feed_forward"}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(dtype) -> Any:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r} (choose from {sorted(DTYPES)})")
        return DTYPES[dtype]
    return dtype


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions restarting in each packed segment: segment_ids [B, T] -> positions [B, T]."""
    t = segment_ids.shape[1]
    index = jnp.arange(t, dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], dtype=bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    segment_start = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return index - segment_start


def remat_block(run_block):
    """``run_block`` recomputed in the backward pass, as a pure function of the block's state.

    Why not ``nnx.remat``: it writes the block's variables back after the call, and with LoRA the
    frozen base Params come from the train state's buffers, outside the gradient's trace, where
    that write-back is refused (TraceContextError). A block's forward changes no state."""
    def pure(graphdef, state, *args):
        return run_block(nnx.merge(graphdef, state), *args)

    checkpointed = jax.checkpoint(pure, static_argnums=(0,), prevent_cse=True)

    def call(block, *args):
        graphdef, state = nnx.split(block)
        return checkpointed(graphdef, state, *args)

    return call


@flax.struct.dataclass
class CausalLMOutput:
    logits: jax.Array  # [B, T, V] float32
    hidden: jax.Array  # [B, T, E] last hidden states (after the final norm)
    cache: KVCache | None = None


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Base of the per-architecture configs: hashable, built from an HF config dict.

    ``extra_json`` keeps the HF keys we do not model (token ids, architectures, ...) so
    that an exported ``config.json`` carries them through unchanged.
    """

    model_type: ClassVar[str]
    extra_json: str = "{}"

    @classmethod
    def from_hf(cls, hf: dict, *, strict: bool = False, source: str = "config") -> "ArchConfig":
        raise NotImplementedError

    def to_hf(self) -> dict:
        raise NotImplementedError

    @property
    def extra(self) -> dict:
        return json.loads(self.extra_json)

    @staticmethod
    def split_known(hf: dict, known: set[str], *, strict: bool, source: str,
                    model_type: str) -> tuple[dict, str]:
        unknown = sorted(set(hf) - known - {"model_type"})
        if strict and (bad := [k for k in unknown if k not in GENERIC_HF_KEYS]):
            hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                     for k in bad]
            raise ValueError(f"{source}: unknown key(s) for {model_type}: {', '.join(hints)}")
        return {k: v for k, v in hf.items() if k in known}, json.dumps(
            {k: hf[k] for k in unknown}, sort_keys=True, default=str)


class CausalLM(nnx.Module):
    """Decoder-only LM: ``embed -> blocks -> final norm -> unembed``.

    Subclasses set ``self.layers`` (an ``nnx.List`` of blocks with signature
    ``block(x, positions, mask, layer_cache, cache_index) -> (x, layer_cache)``), ``self.final_norm``
    and implement :meth:`embed` and :meth:`unembed`.
    """

    config: ArchConfig
    remat: bool
    layers: nnx.List
    attention: str = "auto"  # model.attention: see jaxrlhf.models.attention (set_attention)
    # model.logits / model.logits_chunk_size: how losses get token log-probs from the hidden
    # states (jaxrlhf.models.logits_path.set_logits_path)
    logits_path: str = "full"
    logits_chunk_size: int = 512

    def embed(self, input_ids: jax.Array, positions: jax.Array) -> jax.Array:
        raise NotImplementedError

    def unembed(self, hidden: jax.Array) -> jax.Array:
        raise NotImplementedError

    def init_cache(self, batch: int, capacity: int, dtype=None) -> KVCache:
        raise NotImplementedError

    def hidden_states(self, input_ids: jax.Array, attention_mask_: jax.Array,
                      cache: KVCache | None = None,
                      segment_ids: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """Last hidden states ``[B, T, E]`` (after the final norm) and the updated cache.

        input_ids: [B, T]; attention_mask_: [B, S] (S = T without a cache, else the cache
        capacity: which slots hold real tokens once this call's tokens are written).
        Positions come from the mask (left padding is allowed): a token's position is the
        number of real tokens before it.

        segment_ids: [B, T] for packed rows (no cache): tokens attend only within their
        segment (1, 2, ...; 0 = padding) and positions restart at 0 in each segment.
        """
        b, t = input_ids.shape
        index = jnp.zeros((), jnp.int32) if cache is None else cache.index
        key_valid = attention_mask_.astype(bool)
        if cache is None and key_valid.shape[1] != t:
            raise ValueError(f"attention_mask has {key_valid.shape[1]} slots but input_ids {t} tokens")
        backend = resolve_backend(self.attention, query_len=t, dtype=self.dtype, cached=cache is not None)
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed rows) cannot be combined with a KV cache")
            positions = segment_positions(segment_ids)
            mask = AttentionMask.packed(segment_ids, backend)
        else:
            all_positions = jnp.maximum(jnp.cumsum(key_valid, axis=-1, dtype=jnp.int32) - 1, 0)
            positions = jax.lax.dynamic_slice_in_dim(all_positions, index, t, axis=1)  # [B, T]
            mask = AttentionMask.causal(key_valid, t, index, backend)  # per token: no [T, S] matrix

        x = constrain(self.embed(input_ids, positions), BATCH_LEN_EMBED)

        def run_block(block, x, positions, mask, layer_cache, index):
            return block(x, positions, mask, layer_cache, index)

        if self.remat:
            run_block = remat_block(run_block)
        new_layers = []
        for i, block in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layers[i]
            x, layer_cache = run_block(block, x, positions, mask, layer_cache, index)
            x = constrain(x, BATCH_LEN_EMBED)
            new_layers.append(layer_cache)
        hidden = self.final_norm(x)
        new_cache = None if cache is None else KVCache(tuple(new_layers), index + t)
        return hidden, new_cache

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 cache: KVCache | None = None, segment_ids: jax.Array | None = None) -> CausalLMOutput:
        # input_ids: [B, T]; attention_mask: [B, S] -> logits [B, T, V] (float32)
        hidden, cache = self.hidden_states(input_ids, attention_mask, cache, segment_ids)
        logits = constrain(self.unembed(hidden), ("act_batch", "act_len", "act_vocab"))
        return CausalLMOutput(logits=logits.astype(jnp.float32), hidden=hidden, cache=cache)


def set_attention(model: nnx.Module, backend: str) -> nnx.Module:
    """Run every causal LM inside ``model`` (a reward model's backbone too) with ``backend``
    (``model.attention``: auto, xla, chunked, cudnn or splash)."""
    resolve_backend(backend, query_len=1, dtype=jnp.float32, cached=False)  # fails early on a bad name/platform
    for _, module in nnx.iter_modules(model):
        if isinstance(module, CausalLM):
            module.attention = backend
    return model
