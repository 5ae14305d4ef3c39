"""Building blocks shared by the model ports: projections, norms, RoPE, attention, KV cache.

Every parameter carries ``logical_axes`` metadata that :mod:`jaxrlhf.sharding` maps to
mesh axes. Parameters are stored in ``param_dtype`` and cast to the compute ``dtype``
where they are used; norms and softmax always run in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.attention import AttentionMask, attend, in_window, soft_cap  # noqa: F401 (soft_cap: re-exported)

Axes = tuple[str | None, ...]


def param(rngs: nnx.Rngs | None, init, shape: Sequence[int], dtype, axes: Axes) -> nnx.Param:
    assert len(shape) == len(axes), (shape, axes)
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, tuple(shape), dtype), logical_axes=tuple(axes))


class Linear(nnx.Module):
    """``y = x . kernel + bias`` contracting ``x``'s trailing ``in_shape`` dims.

    ``kernel`` has shape ``in_shape + out_shape`` so attention projections keep
    separate head dims (``[embed, heads, head_dim]``), which is what tensor parallel
    shards.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], *, in_axes: Axes,
                 out_axes: Axes, use_bias: bool, dtype, param_dtype, init_std: float,
                 rngs: nnx.Rngs):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.dtype = dtype
        self.kernel = param(rngs, jax.nn.initializers.normal(init_std),
                            self.in_shape + self.out_shape, param_dtype, in_axes + out_axes)
        self.bias = (param(rngs, jax.nn.initializers.zeros, self.out_shape, param_dtype, out_axes)
                     if use_bias else None)
        self.lora = nnx.data(None)  # a jaxrlhf.models.lora.LoRA when adapted (models.lora.add_lora)

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_shape)
        kernel = self.kernel[...].astype(self.dtype)
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel,
            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())),
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora is not None:
            y = y + self.lora(x, n_in)
        return y


class Embedding(nnx.Module):
    def __init__(self, num: int, features: int, *, axes: Axes, dtype, param_dtype, init_std: float,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = param(rngs, jax.nn.initializers.normal(init_std), (num, features),
                               param_dtype, axes)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output projection: ``x . embedding^T``."""
        return jnp.einsum("...e,ve->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: normalise in float32, cast back, then scale (as transformers does)."""

    def __init__(self, features: int, *, eps: float, dtype, param_dtype):
        self.eps, self.dtype = eps, dtype
        self.weight = nnx.Param(jnp.ones((features,), param_dtype), logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * x32.astype(self.dtype)


class GemmaRMSNorm(nnx.Module):
    """Gemma's RMSNorm: ``x * (1 + w)`` entirely in float32, then cast (transformers casts
    after the scale, unlike Llama). Its weight is stored zero-centred."""

    def __init__(self, features: int, *, eps: float, dtype, param_dtype):
        self.eps, self.dtype = eps, dtype
        self.weight = nnx.Param(jnp.zeros((features,), param_dtype), logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * (1.0 + self.weight[...].astype(jnp.float32))).astype(self.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, features: int, *, eps: float, dtype, param_dtype):
        self.eps, self.dtype = eps, dtype
        self.weight = nnx.Param(jnp.ones((features,), param_dtype), logical_axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype), logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r} (supported: {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]


# --------------------------------------------------------------------------- RoPE


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """Inverse frequencies ``[head_dim // 2]`` for the rope types transformers calls
    ``default``, ``linear`` and ``llama3`` (computed in float32 as transformers does)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv_freq = inv_freq.astype(np.float32)
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported rope_scaling type {rope_type!r} (supported: default, linear, llama3)")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    # x: [B, T, H, D]; positions: [B, T]
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


# --------------------------------------------------------------------------- attention


@flax.struct.dataclass
class LayerCache:
    k: jax.Array  # [B, S, K, D]
    v: jax.Array  # [B, S, K, D]


@flax.struct.dataclass
class KVCache:
    """Keys/values of every layer for ``S`` slots, and the slot the next token goes to."""

    layers: tuple[LayerCache, ...]
    index: jax.Array  # [] int32

    @classmethod
    def zeros(cls, num_layers: int, batch: int, capacity: int, kv_heads: int, head_dim: int,
              dtype) -> "KVCache":
        shape = (batch, capacity, kv_heads, head_dim)
        layer = lambda: LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
        return cls(tuple(layer() for _ in range(num_layers)), jnp.zeros((), jnp.int32))

    @property
    def capacity(self) -> int:
        return self.layers[0].k.shape[1]


def write_cache(cache: LayerCache, k: jax.Array, v: jax.Array, index: jax.Array) -> LayerCache:
    # k, v: [B, T, K, D] written at slots [index, index + T)
    start = (0, index, 0, 0)
    return LayerCache(jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start),
                      jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start))


def attention_mask(key_valid: jax.Array, query_len: int, index: jax.Array | int) -> jax.Array:
    """The dense causal mask over key slots for queries at slots ``index .. index + query_len``.

    key_valid: [B, S] bool -> mask [B, T, S]. Left padding is masked via ``key_valid``;
    a padded query row may end up with no allowed key (its output is garbage and must be
    ignored by the caller). The models pass :class:`AttentionMask` instead; this is its
    ``dense()`` form, the rule being :func:`jaxrlhf.models.attention.visible`.
    """
    return AttentionMask.causal(key_valid, query_len, index).dense()


def sliding_window_mask(mask: jax.Array, index: jax.Array | int, window: int) -> jax.Array:
    """Restrict a dense ``[B, T, S]`` mask to the last ``window`` key slots of each query slot.

    Query slots are ``index .. index + T``; a key slot ``k`` is kept iff
    ``k > q - window`` (transformers' ``sliding_window_overlay``). Slots, not positions:
    left padding sits before every real token, so among real tokens the two differ by a
    constant per row and the window is the same. (Gemma 3 uses ``AttentionMask.with_window``,
    which applies the same rule inside every backend.)
    """
    return mask & in_window(index + jnp.arange(mask.shape[1]), jnp.arange(mask.shape[2]), window)[None]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask,
                          scale: float, softcap: float | None = None) -> jax.Array:
    """Attention by the backend ``mask`` carries (xla, chunked, cudnn or splash; see
    :mod:`jaxrlhf.models.attention`). ``mask`` describes the visible keys per token."""
    # q: [B, T, H, D]; k, v: [B, S, K, D] with H a multiple of K (grouped-query) -> [B, T, H, D]
    return attend(q, k, v, mask, scale, softcap)
