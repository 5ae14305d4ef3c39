"""Llama (2/3 family), Qwen2 and Qwen3 (dense) as one Flax NNX port.

Qwen2 is Llama with biases on the q/k/v projections; Qwen3 is Llama with a per-head
RMSNorm on q and k before RoPE (and a ``head_dim`` that need not be hidden / heads). All
read their architecture from a transformers ``config.json`` (``model_type`` ``llama``,
``qwen2`` or ``qwen3``).
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.base import ArchConfig, CausalLM, as_dtype
from jaxrlhf.models.layers import (KVCache, LayerCache, Embedding, Linear, RMSNorm, activation,
                                   apply_rope, dot_product_attention, rope_inv_freq, write_cache)
from jaxrlhf.sharding import constrain


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ArchConfig):
    model_type = "llama"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling_json: str = "null"  # hashable form of the rope-scaling dict
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    initializer_range: float = 0.02

    def __post_init__(self):
        kv = self.num_key_value_heads or self.num_attention_heads
        object.__setattr__(self, "num_key_value_heads", kv)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % kv:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {kv}")
        activation(self.hidden_act)
        rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)  # validates the type

    @property
    def rope_scaling(self) -> dict | None:
        return json.loads(self.rope_scaling_json)

    # ---- HF config.json <-> dataclass
    _HF_KEYS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
                "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
                "rope_parameters", "tie_word_embeddings", "attention_bias", "mlp_bias",
                "initializer_range", "use_sliding_window", "sliding_window", "max_window_layers",
                "layer_types", "attention_dropout", "pretraining_tp"}

    @classmethod
    def from_hf(cls, hf: dict, *, strict: bool = False, source: str = "config") -> "LlamaConfig":
        model_type = hf.get("model_type", cls.model_type)
        known, extra = cls.split_known(hf, cls._HF_KEYS, strict=strict, source=source,
                                       model_type=model_type)
        if known.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        if known.get("pretraining_tp", 1) != 1:
            raise ValueError(f"{source}: pretraining_tp != 1 is not supported")
        # transformers 5 writes rope_parameters {rope_type, rope_theta, ...}; older files
        # write rope_theta + rope_scaling.
        rope = dict(known.get("rope_parameters") or known.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", known.get("rope_theta", 10000.0))
        if rope.get("rope_type", rope.get("type", "default")) == "default":
            rope = {}
        attention_bias = known.get("attention_bias", model_type == "qwen2")
        kwargs = {k: known[k] for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
            "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "mlp_bias",
            "initializer_range") if k in known}
        config_cls = CONFIG_CLASSES.get(model_type, cls)
        return config_cls(**kwargs, rope_theta=float(theta),
                          rope_scaling_json=json.dumps(rope or None, sort_keys=True),
                          qkv_bias=bool(attention_bias),
                          o_bias=bool(attention_bias) and model_type != "qwen2",
                          qk_norm=model_type == "qwen3", extra_json=extra)

    def to_hf(self) -> dict:
        hf = dict(self.extra)
        rope = {"rope_type": "default"} if self.rope_scaling is None else dict(self.rope_scaling)
        rope["rope_theta"] = self.rope_theta
        hf.update(model_type=self.model_type, vocab_size=self.vocab_size,
                  hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                  num_hidden_layers=self.num_hidden_layers,
                  num_attention_heads=self.num_attention_heads,
                  num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
                  hidden_act=self.hidden_act, max_position_embeddings=self.max_position_embeddings,
                  rms_norm_eps=self.rms_norm_eps, rope_parameters=rope, rope_theta=self.rope_theta,
                  tie_word_embeddings=self.tie_word_embeddings, mlp_bias=self.mlp_bias,
                  initializer_range=self.initializer_range)
        if self.model_type == "llama":
            hf["attention_bias"] = self.qkv_bias
            hf["architectures"] = ["LlamaForCausalLM"]
        elif self.model_type == "qwen3":
            hf["attention_bias"] = self.qkv_bias
            hf["architectures"] = ["Qwen3ForCausalLM"]
            hf["use_sliding_window"] = False
        else:
            hf["architectures"] = ["Qwen2ForCausalLM"]
            hf["use_sliding_window"] = False
        if self.rope_scaling is not None:
            hf["rope_scaling"] = dict(self.rope_scaling)
        return hf


@dataclasses.dataclass(frozen=True)
class Qwen2Config(LlamaConfig):
    model_type = "qwen2"
    qkv_bias: bool = True


@dataclasses.dataclass(frozen=True)
class Qwen3Config(LlamaConfig):
    model_type = "qwen3"
    qk_norm: bool = True


QWEN2 = Qwen2Config
CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


class LlamaAttention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        e, h, k, d = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                      config.head_dim)
        common = dict(dtype=dtype, param_dtype=param_dtype, init_std=config.initializer_range, rngs=rngs)
        self.q_proj = Linear((e,), (h, d), in_axes=("embed",), out_axes=("heads", "head_dim"),
                             use_bias=config.qkv_bias, **common)
        self.k_proj = Linear((e,), (k, d), in_axes=("embed",), out_axes=("kv_heads", "head_dim"),
                             use_bias=config.qkv_bias, **common)
        self.v_proj = Linear((e,), (k, d), in_axes=("embed",), out_axes=("kv_heads", "head_dim"),
                             use_bias=config.qkv_bias, **common)
        self.o_proj = Linear((h, d), (e,), in_axes=("heads", "head_dim"), out_axes=("embed",),
                             use_bias=config.o_bias, **common)
        norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.q_norm = RMSNorm(d, **norm) if config.qk_norm else None
        self.k_norm = RMSNorm(d, **norm) if config.qk_norm else None
        self.inv_freq = tuple(rope_inv_freq(d, config.rope_theta, config.rope_scaling).tolist())
        self.scale = d ** -0.5

    def __call__(self, x, positions, mask, layer_cache: LayerCache | None, index):
        # x: [B, T, E]; positions: [B, T]; mask: an AttentionMask (which of S key slots each query sees)
        inv_freq = jnp.asarray(self.inv_freq, jnp.float32)
        q, k = self.q_proj(x), self.k_proj(x)  # [B, T, H, D], [B, T, K, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = constrain(apply_rope(q, positions, inv_freq), ("act_batch", "act_len", "act_heads", None))
        k = apply_rope(k, positions, inv_freq)
        v = self.v_proj(x)
        if layer_cache is not None:
            layer_cache = write_cache(layer_cache, k, v, index)
            k, v = layer_cache.k.astype(q.dtype), layer_cache.v.astype(q.dtype)
        out = dot_product_attention(q, k, v, mask, self.scale)
        return self.o_proj(out), layer_cache


class LlamaMLP(nnx.Module):
    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        e, m = config.hidden_size, config.intermediate_size
        common = dict(use_bias=config.mlp_bias, dtype=dtype, param_dtype=param_dtype,
                      init_std=config.initializer_range, rngs=rngs)
        self.gate_proj = Linear((e,), (m,), in_axes=("embed",), out_axes=("mlp",), **common)
        self.up_proj = Linear((e,), (m,), in_axes=("embed",), out_axes=("mlp",), **common)
        self.down_proj = Linear((m,), (e,), in_axes=("mlp",), out_axes=("embed",), **common)
        self.act = config.hidden_act

    def __call__(self, x):
        h = activation(self.act)(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(constrain(h, ("act_batch", "act_len", "act_mlp")))


class LlamaBlock(nnx.Module):
    def __init__(self, config: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, **norm)
        self.self_attn = LlamaAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm)
        self.mlp = LlamaMLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, positions, mask, layer_cache, index):
        attn, layer_cache = self.self_attn(self.input_layernorm(x), positions, mask, layer_cache, index)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, layer_cache


class LlamaForCausalLM(CausalLM):
    def __init__(self, config: LlamaConfig, *, dtype="float32", param_dtype="float32",
                 remat: bool = False, rngs: nnx.Rngs):
        dtype, param_dtype = as_dtype(dtype), as_dtype(param_dtype)
        self.config, self.dtype, self.remat = config, dtype, remat
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, axes=("vocab", "embed"),
                                      dtype=dtype, param_dtype=param_dtype,
                                      init_std=config.initializer_range, rngs=rngs)
        self.layers = nnx.List([LlamaBlock(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])
        self.final_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype,
                                  param_dtype=param_dtype)
        self.lm_head = None if config.tie_word_embeddings else Linear(
            (config.hidden_size,), (config.vocab_size,), in_axes=("embed",), out_axes=("vocab",),
            use_bias=False, dtype=dtype, param_dtype=param_dtype,
            init_std=config.initializer_range, rngs=rngs)

    def embed(self, input_ids, positions):
        return self.embed_tokens(input_ids)

    def unembed(self, hidden):
        return self.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)

    def init_cache(self, batch: int, capacity: int, dtype=None) -> KVCache:
        c = self.config
        return KVCache.zeros(c.num_hidden_layers, batch, capacity, c.num_key_value_heads,
                             c.head_dim, dtype or self.dtype)
