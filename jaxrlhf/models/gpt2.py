"""GPT-2 as a Flax NNX port: learned positions, pre-LayerNorm blocks, GELU MLP, tied head.

transformers stores GPT-2's projections as ``Conv1D`` (weight ``[in, out]``) with q, k and v
fused in ``c_attn``; :mod:`jaxrlhf.models.hf` splits them into the per-head layout used here.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from jaxrlhf.models.base import ArchConfig, CausalLM, as_dtype
from jaxrlhf.models.layers import (KVCache, LayerCache, Embedding, LayerNorm, Linear, activation,
                                   dot_product_attention, write_cache)
from jaxrlhf.sharding import constrain


@dataclasses.dataclass(frozen=True)
class GPT2Config(ArchConfig):
    model_type = "gpt2"

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        activation(self.activation_function)

    # names shared with the Llama config, so heads and samplers need not care which it is
    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def intermediate_size(self) -> int:
        return self.n_inner or 4 * self.n_embd

    _HF_KEYS = {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                "activation_function", "layer_norm_epsilon", "scale_attn_weights",
                "scale_attn_by_inverse_layer_idx", "tie_word_embeddings", "initializer_range",
                "reorder_and_upcast_attn", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                "add_cross_attention", "n_ctx"}

    @classmethod
    def from_hf(cls, hf: dict, *, strict: bool = False, source: str = "config") -> "GPT2Config":
        known, extra = cls.split_known(hf, cls._HF_KEYS, strict=strict, source=source,
                                       model_type="gpt2")
        if known.get("add_cross_attention"):
            raise ValueError(f"{source}: add_cross_attention=true is not supported")
        # reorder_and_upcast_attn only changes where the float32 upcast happens; we always
        # compute attention scores in float32. Dropout rates are irrelevant: dropout is off.
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in known.items() if k in fields}, extra_json=extra)

    def to_hf(self) -> dict:
        hf = dict(self.extra)
        hf.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "extra_json"})
        hf.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
        return hf


class GPT2Attention(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        e, h, d = config.n_embd, config.n_head, config.head_dim
        common = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype,
                      init_std=config.initializer_range, rngs=rngs)
        self.q_proj = Linear((e,), (h, d), in_axes=("embed",), out_axes=("heads", "head_dim"), **common)
        self.k_proj = Linear((e,), (h, d), in_axes=("embed",), out_axes=("heads", "head_dim"), **common)
        self.v_proj = Linear((e,), (h, d), in_axes=("embed",), out_axes=("heads", "head_dim"), **common)
        self.o_proj = Linear((h, d), (e,), in_axes=("heads", "head_dim"), out_axes=("embed",), **common)
        scale = d ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale

    def __call__(self, x, mask, layer_cache: LayerCache | None, index):
        # x: [B, T, E]; mask: an AttentionMask (which of S key slots each query sees, and the backend)
        q = constrain(self.q_proj(x), ("act_batch", "act_len", "act_heads", None))
        k, v = self.k_proj(x), self.v_proj(x)
        if layer_cache is not None:
            layer_cache = write_cache(layer_cache, k, v, index)
            k, v = layer_cache.k.astype(q.dtype), layer_cache.v.astype(q.dtype)
        return self.o_proj(dot_product_attention(q, k, v, mask, self.scale)), layer_cache


class GPT2MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        e, m = config.n_embd, config.intermediate_size
        common = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype,
                      init_std=config.initializer_range, rngs=rngs)
        self.c_fc = Linear((e,), (m,), in_axes=("embed",), out_axes=("mlp",), **common)
        self.c_proj = Linear((m,), (e,), in_axes=("mlp",), out_axes=("embed",), **common)
        self.act = config.activation_function

    def __call__(self, x):
        h = activation(self.act)(self.c_fc(x))
        return self.c_proj(constrain(h, ("act_batch", "act_len", "act_mlp")))


class GPT2Block(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        norm = dict(eps=config.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype)
        self.ln_1 = LayerNorm(config.n_embd, **norm)
        self.attn = GPT2Attention(config, layer_idx, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_2 = LayerNorm(config.n_embd, **norm)
        self.mlp = GPT2MLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, positions, mask, layer_cache, index):
        attn, layer_cache = self.attn(self.ln_1(x), mask, layer_cache, index)
        x = x + attn
        x = x + self.mlp(self.ln_2(x))
        return x, layer_cache


class GPT2LMHeadModel(CausalLM):
    def __init__(self, config: GPT2Config, *, dtype="float32", param_dtype="float32",
                 remat: bool = False, rngs: nnx.Rngs):
        dtype, param_dtype = as_dtype(dtype), as_dtype(param_dtype)
        self.config, self.dtype, self.remat = config, dtype, remat
        common = dict(dtype=dtype, param_dtype=param_dtype, init_std=config.initializer_range,
                      rngs=rngs)
        self.wte = Embedding(config.vocab_size, config.n_embd, axes=("vocab", "embed"), **common)
        self.wpe = Embedding(config.n_positions, config.n_embd, axes=("positions", "embed"), **common)
        self.layers = nnx.List([GPT2Block(config, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for i in range(config.n_layer)])
        self.final_norm = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, dtype=dtype,
                                    param_dtype=param_dtype)
        self.lm_head = None if config.tie_word_embeddings else Linear(
            (config.n_embd,), (config.vocab_size,), in_axes=("embed",), out_axes=("vocab",),
            use_bias=False, **common)

    def embed(self, input_ids, positions):
        return self.wte(input_ids) + self.wpe(positions)

    def unembed(self, hidden):
        return self.wte.attend(hidden) if self.lm_head is None else self.lm_head(hidden)

    def init_cache(self, batch: int, capacity: int, dtype=None) -> KVCache:
        c = self.config
        return KVCache.zeros(c.n_layer, batch, capacity, c.n_head, c.head_dim, dtype or self.dtype)
