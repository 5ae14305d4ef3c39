"""Temp bytes of grad(attention) for xla, chunked with its custom_vjp, and chunked differentiated
by JAX through its block loops, at T = 512, 1024, 2048 (compile-time numbers; nothing runs).
Why chunked has a custom_vjp: see experiments/NOTES.md (2026-12-07, attention backends).

    python experiments/attention_autodiff_memory.py
"""

import jax
import jax.numpy as jnp

from jaxrlhf.models import attention as A

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 24
SCALE = HEAD_DIM ** -0.5


def temp_mib(fn, t: int) -> float:
    q = jax.ShapeDtypeStruct((1, t, HEADS, HEAD_DIM), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, KV_HEADS, HEAD_DIM), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(fn(q, k, v, A.AttentionMask.causal(jnp.ones((1, t), bool), t, 0)))

    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, kv, kv).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def chunked_autodiff(q, k, v, mask):
    """The chunked forward without its custom_vjp: JAX differentiates the loops."""
    b, t, h, d = q.shape
    q5 = q.reshape(b, t, KV_HEADS, h // KV_HEADS, d)
    out, _ = A._chunked_fwd_impl(q5, k, v, mask.q_segment, mask.k_segment, mask.index, SCALE, None, None,
                                 A.BLOCK, A.BLOCK, t)
    return out.reshape(b, t, h, d)


BACKENDS = {
    "xla": lambda q, k, v, mask: A.xla_attention(q, k, v, mask.dense(), SCALE),
    "chunked, custom_vjp": lambda q, k, v, mask: A.chunked_attention(q, k, v, mask, SCALE),
    "chunked, autodiff through the loops": chunked_autodiff,
}

if __name__ == "__main__":
    for name, fn in BACKENDS.items():
        print(f"{name:38s} temp MiB at T=512/1024/2048:", [round(temp_mib(fn, t), 2) for t in (512, 1024, 2048)])
