"""Gemma 3 (text) as a Flax NNX port: transformers' ``gemma3_text`` (``Gemma3ForCausalLM``).

Differences from Llama that this module owns: RMSNorm as ``x * (1 + w)`` in float32; the
embeddings scaled by sqrt(hidden_size) in the compute dtype; q and k RMS-normed per head
before RoPE; scores scaled by ``query_pre_attn_scalar ** -0.5``; four norms per block
(input, post-attention, pre- and post-feedforward); a gelu-tanh MLP; layers of two types
(``sliding_attention`` over the last ``sliding_window`` slots, ``full_attention``) with
their own RoPE parameters; a tied head; optional final-logit soft-capping.

``attn_logit_softcapping`` is read and written back but not applied: transformers'
``Gemma3Attention`` (5.x) never passes it to the attention function (Gemma 3 replaced
Gemma 2's attention soft-capping by QK-norm), and parity with transformers is the contract.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.base import ArchConfig, CausalLM, as_dtype
from jaxrlhf.models.layers import (Embedding, GemmaRMSNorm, KVCache, LayerCache, Linear, activation,
                                   apply_rope, dot_product_attention, rope_inv_freq, soft_cap,
                                   write_cache)
from jaxrlhf.models.llama import LlamaMLP
from jaxrlhf.sharding import constrain

SLIDING, FULL = "sliding_attention", "full_attention"
DEFAULT_THETA = {SLIDING: 10_000.0, FULL: 1_000_000.0}


def _rope_json(params: dict | None) -> str:
    """Hashable form of one layer type's RoPE scaling (None for the default rope)."""
    params = {k: v for k, v in (params or {}).items() if k != "rope_theta"}
    if params.get("rope_type", params.get("type", "default")) == "default":
        return "null"
    return json.dumps(params, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Gemma3Config(ArchConfig):
    model_type = "gemma3_text"

    vocab_size: int = 262_208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] | None = None  # None: every 6th layer global (HF's default)
    rope_local_theta: float = DEFAULT_THETA[SLIDING]
    rope_global_theta: float = DEFAULT_THETA[FULL]
    rope_local_scaling_json: str = "null"
    rope_global_scaling_json: str = "null"
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", tuple(
                SLIDING if (i + 1) % 6 else FULL for i in range(self.num_hidden_layers)))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries but num_hidden_layers "
                             f"is {self.num_hidden_layers}")
        if bad := sorted(set(self.layer_types) - {SLIDING, FULL}):
            raise ValueError(f"unsupported layer_types {bad} (supported: {SLIDING}, {FULL})")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        activation(self.hidden_activation)
        for theta, scaling in self.rope_by_type.values():
            rope_inv_freq(self.head_dim, theta, scaling)  # validates the rope types

    # LlamaMLP reads these names
    @property
    def hidden_act(self) -> str:
        return self.hidden_activation

    @property
    def mlp_bias(self) -> bool:
        return False

    @property
    def rope_by_type(self) -> dict[str, tuple[float, dict | None]]:
        return {SLIDING: (self.rope_local_theta, json.loads(self.rope_local_scaling_json)),
                FULL: (self.rope_global_theta, json.loads(self.rope_global_scaling_json))}

    def window(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    # ---- HF config.json <-> dataclass
    _HF_KEYS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_activation",
                "hidden_act", "max_position_embeddings", "rms_norm_eps", "query_pre_attn_scalar",
                "sliding_window", "sliding_window_pattern", "layer_types", "rope_parameters",
                "rope_theta", "rope_local_base_freq", "rope_scaling", "final_logit_softcapping",
                "attn_logit_softcapping", "tie_word_embeddings", "attention_bias",
                "initializer_range", "attention_dropout", "use_bidirectional_attention",
                "cache_implementation"}

    @classmethod
    def from_hf(cls, hf: dict, *, strict: bool = False, source: str = "config") -> "Gemma3Config":
        known, extra = cls.split_known(hf, cls._HF_KEYS, strict=strict, source=source,
                                       model_type=hf.get("model_type", cls.model_type))
        if known.get("use_bidirectional_attention"):
            raise ValueError(f"{source}: use_bidirectional_attention=true is not supported")
        if known.get("attention_bias"):
            raise ValueError(f"{source}: attention_bias=true is not supported for gemma3_text")
        # transformers 5 writes rope_parameters {sliding_attention: {...}, full_attention: {...}};
        # older files write rope_theta (global), rope_local_base_freq and rope_scaling (global).
        rope = known.get("rope_parameters") or {}
        local = dict(rope.get(SLIDING) or {})
        global_ = dict(rope.get(FULL) or known.get("rope_scaling") or {})
        local.setdefault("rope_theta", known.get("rope_local_base_freq", DEFAULT_THETA[SLIDING]))
        global_.setdefault("rope_theta", known.get("rope_theta", DEFAULT_THETA[FULL]))
        layer_types = known.get("layer_types")
        if layer_types is None and "num_hidden_layers" in known:
            pattern = known.get("sliding_window_pattern", 6)
            layer_types = [SLIDING if (i + 1) % pattern else FULL
                           for i in range(known["num_hidden_layers"])]
        kwargs = {k: known[k] for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
            "rms_norm_eps", "query_pre_attn_scalar", "sliding_window", "final_logit_softcapping",
            "attn_logit_softcapping", "tie_word_embeddings", "initializer_range") if k in known}
        act = known.get("hidden_activation") or known.get("hidden_act")
        if act is not None:
            kwargs["hidden_activation"] = act
        return cls(**kwargs, layer_types=None if layer_types is None else tuple(layer_types),
                   rope_local_theta=float(local["rope_theta"]),
                   rope_global_theta=float(global_["rope_theta"]),
                   rope_local_scaling_json=_rope_json(local),
                   rope_global_scaling_json=_rope_json(global_), extra_json=extra)

    def to_hf(self) -> dict:
        hf = dict(self.extra)
        rope = {}
        for layer_type, (theta, scaling) in self.rope_by_type.items():
            rope[layer_type] = dict(scaling or {"rope_type": "default"}, rope_theta=theta)
        hf.update(model_type=self.model_type, architectures=["Gemma3ForCausalLM"],
                  vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                  intermediate_size=self.intermediate_size,
                  num_hidden_layers=self.num_hidden_layers,
                  num_attention_heads=self.num_attention_heads,
                  num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
                  hidden_activation=self.hidden_activation,
                  max_position_embeddings=self.max_position_embeddings,
                  rms_norm_eps=self.rms_norm_eps, query_pre_attn_scalar=self.query_pre_attn_scalar,
                  sliding_window=self.sliding_window, layer_types=list(self.layer_types),
                  rope_parameters=rope, final_logit_softcapping=self.final_logit_softcapping,
                  attn_logit_softcapping=self.attn_logit_softcapping,
                  tie_word_embeddings=self.tie_word_embeddings, attention_bias=False,
                  initializer_range=self.initializer_range)
        return hf


class Gemma3Attention(nnx.Module):
    def __init__(self, config: Gemma3Config, layer: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        e, h, k, d = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                      config.head_dim)
        common = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype,
                      init_std=config.initializer_range, rngs=rngs)
        self.q_proj = Linear((e,), (h, d), in_axes=("embed",), out_axes=("heads", "head_dim"), **common)
        self.k_proj = Linear((e,), (k, d), in_axes=("embed",), out_axes=("kv_heads", "head_dim"), **common)
        self.v_proj = Linear((e,), (k, d), in_axes=("embed",), out_axes=("kv_heads", "head_dim"), **common)
        self.o_proj = Linear((h, d), (e,), in_axes=("heads", "head_dim"), out_axes=("embed",), **common)
        norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.q_norm = GemmaRMSNorm(d, **norm)
        self.k_norm = GemmaRMSNorm(d, **norm)
        theta, scaling = config.rope_by_type[config.layer_types[layer]]
        self.inv_freq = tuple(rope_inv_freq(d, theta, scaling).tolist())
        self.window = config.window(layer)
        self.scale = float(config.query_pre_attn_scalar) ** -0.5

    def __call__(self, x, positions, mask, layer_cache: LayerCache | None, index):
        # x: [B, T, E]; positions: [B, T]; mask: which of S key slots each query sees
        inv_freq = jnp.asarray(self.inv_freq, jnp.float32)
        q = self.q_norm(self.q_proj(x))  # [B, T, H, D]
        k = self.k_norm(self.k_proj(x))  # [B, T, K, D]
        q = constrain(apply_rope(q, positions, inv_freq), ("act_batch", "act_len", "act_heads", None))
        k = apply_rope(k, positions, inv_freq)
        v = self.v_proj(x)
        if layer_cache is not None:
            layer_cache = write_cache(layer_cache, k, v, index)
            k, v = layer_cache.k.astype(q.dtype), layer_cache.v.astype(q.dtype)
        if self.window is not None:
            mask = mask.with_window(self.window)
        out = dot_product_attention(q, k, v, mask, self.scale)  # no attention soft-cap: see the module doc
        return self.o_proj(out), layer_cache


class Gemma3Block(nnx.Module):
    def __init__(self, config: Gemma3Config, layer: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        e = config.hidden_size
        self.input_layernorm = GemmaRMSNorm(e, **norm)
        self.self_attn = Gemma3Attention(config, layer, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = GemmaRMSNorm(e, **norm)
        self.pre_feedforward_layernorm = GemmaRMSNorm(e, **norm)
        self.mlp = LlamaMLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_feedforward_layernorm = GemmaRMSNorm(e, **norm)

    def __call__(self, x, positions, mask, layer_cache, index):
        attn, layer_cache = self.self_attn(self.input_layernorm(x), positions, mask, layer_cache, index)
        x = x + self.post_attention_layernorm(attn)
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x, layer_cache


class Gemma3ForCausalLM(CausalLM):
    def __init__(self, config: Gemma3Config, *, dtype="float32", param_dtype="float32",
                 remat: bool = False, rngs: nnx.Rngs):
        dtype, param_dtype = as_dtype(dtype), as_dtype(param_dtype)
        self.config, self.dtype, self.remat = config, dtype, remat
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, axes=("vocab", "embed"),
                                      dtype=dtype, param_dtype=param_dtype,
                                      init_std=config.initializer_range, rngs=rngs)
        self.layers = nnx.List([Gemma3Block(config, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for i in range(config.num_hidden_layers)])
        self.final_norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype,
                                       param_dtype=param_dtype)
        self.lm_head = None if config.tie_word_embeddings else Linear(
            (config.hidden_size,), (config.vocab_size,), in_axes=("embed",), out_axes=("vocab",),
            use_bias=False, dtype=dtype, param_dtype=param_dtype,
            init_std=config.initializer_range, rngs=rngs)

    def embed(self, input_ids, positions):
        # the scale is rounded to the compute dtype first, as transformers does (55.4256 -> 55.5 in bf16)
        scale = jnp.asarray(math.sqrt(self.config.hidden_size), jnp.float32).astype(self.dtype)
        return self.embed_tokens(input_ids) * scale

    def unembed(self, hidden):
        # hidden: [..., E] -> logits [..., V] float32 (soft-capped in float32)
        logits = self.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return soft_cap(logits.astype(jnp.float32), self.config.final_logit_softcapping)

    def init_cache(self, batch: int, capacity: int, dtype=None) -> KVCache:
        c = self.config
        return KVCache.zeros(c.num_hidden_layers, batch, capacity, c.num_key_value_heads,
                             c.head_dim, dtype or self.dtype)
