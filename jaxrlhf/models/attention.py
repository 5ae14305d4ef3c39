"""Attention: one interface, a backend per platform.

Every port calls :func:`attend` with an :class:`AttentionMask`, which says which keys a
query sees *per token* (segment ids, the slot of the first query, an optional sliding
window) instead of as a ``[T, S]`` matrix, and which backend computes it:

- ``xla``: scores materialised as ``[B, H, T, S]`` float32, masked with a select. The
  reference the others are tested against, and what decoding with a KV cache uses.
- ``chunked``: blockwise over query and key blocks with an online softmax (flash
  attention), masks built per block from the segment ids and slots; a ``custom_vjp``
  recomputes the blocks in the backward pass, so neither pass holds ``[T, S]`` scores.
  Blocks that the causal mask or the window empty entirely are skipped.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU, bf16/fp16).
- ``splash``: the Pallas splash-attention kernel (TPU; Pallas interpret mode elsewhere).

``model.attention`` names one of these or ``auto``; :func:`resolve_backend` is the one
place that turns it into a backend for a call.

A query row that sees no key at all (a left-padding query) is garbage in every backend
and must be ignored by the caller; ``xla`` and ``chunked`` keep it finite.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

BACKENDS = ("auto", "xla", "chunked", "cudnn", "splash")
# On CPU, ``auto`` switches from xla to chunked at this many query tokens: below it the
# [T, S] scores are small and one big matmul beats a loop; above it they dominate memory.
CHUNKED_FROM_LEN = 1024
BLOCK = 128  # chunked query/key block (splash needs multiples of 128 too)
FILL = float(np.finfo(np.float32).min)  # score of a masked key, as in the xla path


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
    """Gemma 2/3 logit soft-capping ``tanh(x / cap) * cap`` (identity when ``cap`` is None)."""
    return x if cap is None else jnp.tanh(x / cap) * cap


# --------------------------------------------------------------------------- the mask


def in_window(q_slot: jax.Array, k_slot: jax.Array, window: int) -> jax.Array:
    """q_slot: [Q]; k_slot: [K] -> [Q, K]: ``k > q - window`` (transformers' sliding window)."""
    return k_slot[None, :] > q_slot[:, None] - window


def visible(q_slot: jax.Array, k_slot: jax.Array, q_segment: jax.Array, k_segment: jax.Array,
            window: int | None) -> jax.Array:
    """The one visibility rule: causal over slots, same non-zero segment, inside the window.

    q_slot: [Q]; k_slot: [K]; q_segment: [B, Q]; k_segment: [B, K] -> [B, Q, K] bool.
    A key at slot ``k`` is seen from slot ``q`` iff ``k <= q``, its segment is the query's
    and not 0, and (with a window) ``k > q - window`` (transformers' sliding window).
    """
    seen = (k_slot[None, :] <= q_slot[:, None])[None]
    seen = seen & (k_segment[:, None, :] != 0) & (q_segment[:, :, None] == k_segment[:, None, :])
    if window is not None:
        seen = seen & in_window(q_slot, k_slot, window)[None]
    return seen


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query sees, per token, and the backend that computes attention.

    Unpacked rows: every query has segment 1 and a key has 1 where it holds a real token
    (0 for left padding and empty cache slots). Packed rows: both are the segment ids.
    """

    q_segment: jax.Array  # [B, T] int32
    k_segment: jax.Array  # [B, S] int32, 0 = no query sees this key
    index: jax.Array  # [] int32: cache slot of the first query (0 without a cache)
    window: int | None = flax.struct.field(pytree_node=False, default=None)
    backend: str = flax.struct.field(pytree_node=False, default="xla")

    @classmethod
    def causal(cls, key_valid: jax.Array, query_len: int, index, backend: str = "xla") -> "AttentionMask":
        # key_valid: [B, S] bool
        q_segment = jnp.ones((key_valid.shape[0], query_len), jnp.int32)
        return cls(q_segment, key_valid.astype(jnp.int32), jnp.asarray(index, jnp.int32), None, backend)

    @classmethod
    def packed(cls, segment_ids: jax.Array, backend: str = "xla") -> "AttentionMask":
        # segment_ids: [B, T] (0 = padding)
        segment_ids = segment_ids.astype(jnp.int32)
        return cls(segment_ids, segment_ids, jnp.zeros((), jnp.int32), None, backend)

    def with_window(self, window: int | None) -> "AttentionMask":
        return self.replace(window=window)

    def dense(self) -> jax.Array:
        """The ``[B, T, S]`` bool matrix (what the xla path and cuDNN take)."""
        t, s = self.q_segment.shape[1], self.k_segment.shape[1]
        return visible(self.index + jnp.arange(t), jnp.arange(s), self.q_segment, self.k_segment,
                       self.window)


def resolve_backend(name: str, *, query_len: int, dtype, cached: bool,
                    platform: str | None = None) -> str:
    """``model.attention`` -> the backend for one call (the only place that decides).

    With a KV cache (prefill and decode in the sampler) it is always xla: one query per
    decode step needs no blocking, and the cache's slots are not a static mask. ``auto``:
    cpu -> xla below ``CHUNKED_FROM_LEN`` tokens, chunked from there; gpu -> cudnn for
    bf16/fp16 (cuDNN has no float32 flash kernel), else as cpu; tpu -> splash when the
    length is a multiple of its 128 blocks, else chunked.
    """
    if name not in BACKENDS:
        raise ValueError(f"model.attention must be one of {', '.join(BACKENDS)}, got {name!r}")
    platform = platform or jax.default_backend()
    if cached:
        return "xla"
    if name == "cudnn" and platform != "gpu":
        raise ValueError(f"model.attention=cudnn needs a GPU (this process runs on {platform}); "
                         "use auto, xla or chunked")
    if name == "splash" and platform != "tpu":
        raise ValueError(f"model.attention=splash needs a TPU (this process runs on {platform}); "
                         "use auto, xla or chunked")
    if name != "auto":
        return name
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if platform == "gpu" and half:
        return "cudnn"
    if platform == "tpu":
        return "splash" if query_len % BLOCK == 0 else "chunked"
    return "xla" if query_len < CHUNKED_FROM_LEN else "chunked"


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float,
           softcap: float | None = None) -> jax.Array:
    # q: [B, T, H, D]; k, v: [B, S, K, D] with H a multiple of K (grouped-query) -> [B, T, H, D]
    if mask.backend == "xla":
        return xla_attention(q, k, v, mask.dense(), scale, softcap)
    if mask.backend == "chunked":
        return chunked_attention(q, k, v, mask, scale, softcap, block_q=BLOCK, block_k=BLOCK)
    if mask.backend == "cudnn":
        return cudnn_attention(q, k, v, mask, scale, softcap)
    if mask.backend == "splash":
        return splash_attention(q, k, v, mask, scale, softcap,
                                interpret=jax.default_backend() != "tpu")
    raise ValueError(f"unknown attention backend {mask.backend!r} (resolve 'auto' first)")


# --------------------------------------------------------------------------- xla


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                  softcap: float | None = None) -> jax.Array:
    # q: [B, T, H, D]; k, v: [B, S, K, D]; mask: [B, T, S] bool
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    scores = soft_cap(scores, softcap)  # capped before masking, as transformers does
    scores = jnp.where(mask[:, None, None], scores, FILL)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, v.shape[-1])


# --------------------------------------------------------------------------- chunked


def _pad_axis(x: jax.Array, axis: int, multiple: int) -> jax.Array:
    pad = (-x.shape[axis]) % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def _block_needed(i, j, index, bq: int, bk: int, window: int | None):
    """Whether query block ``i`` and key block ``j`` share any causal, in-window pair."""
    q_first = index + i * bq
    q_last = q_first + bq - 1
    k_first = j * bk
    needed = k_first <= q_last
    if window is not None:
        needed = needed & (k_first + bk - 1 > q_first - window)
    return needed


def _block_scores(q_blk, k_blk, q_seg, k_seg, i, j, index, s_len, scale, softcap, window, bq, bk):
    """Raw and masked scores of one block pair, and where the mask lets them through.

    q_blk: [B, bq, K, G, D]; k_blk: [B, bk, K, D]; q_seg: [B, bq]; k_seg: [B, bk]
    -> raw, scores: [B, K, G, bq, bk] float32; keep: [B, 1, 1, bq, bk] bool.
    Masked keys score ``FILL`` (as in xla, so a row with no visible key stays finite);
    keys past the end (block padding) score -inf so that they never count.
    """
    k_slot = j * bk + jnp.arange(bk)
    seen = visible(index + i * bq + jnp.arange(bq), k_slot, q_seg, k_seg, window)
    raw = jnp.einsum("bqkgd,bskd->bkgqs", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(seen[:, None, None], soft_cap(raw, softcap), FILL)
    in_range = k_slot < s_len
    scores = jnp.where(in_range, scores, -jnp.inf)
    return raw, scores, seen[:, None, None] & in_range


def _slice(x, axis: int, i, size: int):
    return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


def _chunked_fwd_impl(q, k, v, q_seg, k_seg, index, scale, softcap, window, bq, bk, s_len):
    # q: [B, Tp, K, G, D]; k, v: [B, Sp, K, D] (padded to whole blocks)
    # -> out [B, Tp, K, G, Dv] (q.dtype), lse [B, K, G, Tp] float32
    b, tp, kv, g, _ = q.shape
    nq, nk, dv = tp // bq, k.shape[1] // bk, v.shape[-1]

    def query_block(i):
        q_blk, qs = _slice(q, 1, i, bq), _slice(q_seg, 1, i, bq)

        def key_block(j, carry):
            def compute(carry):
                acc, m, l = carry
                _, s, _ = _block_scores(q_blk, _slice(k, 1, j, bk), qs, _slice(k_seg, 1, j, bk), i, j,
                                        index, s_len, scale, softcap, window, bq, bk)
                m_new = jnp.maximum(m, s.max(-1))
                alpha = jnp.exp(m - m_new)
                p = jnp.exp(s - m_new[..., None])
                pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), _slice(v, 1, j, bk),
                                preferred_element_type=jnp.float32)
                return alpha[..., None] * acc + pv, m_new, alpha * l + p.sum(-1)
            return jax.lax.cond(_block_needed(i, j, index, bq, bk, window), compute, lambda c: c, carry)

        init = (jnp.zeros((b, kv, g, bq, dv), jnp.float32), jnp.full((b, kv, g, bq), FILL, jnp.float32),
                jnp.zeros((b, kv, g, bq), jnp.float32))
        acc, m, l = jax.lax.fori_loop(0, nk, key_block, init)
        l = jnp.where(l > 0, l, 1.0)  # only a row that visits no block; keeps it finite
        return acc / l[..., None], m + jnp.log(l)

    out, lse = jax.lax.map(query_block, jnp.arange(nq))  # [nq, B, K, G, bq, Dv], [nq, B, K, G, bq]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, tp, kv, g, dv).astype(q.dtype)
    lse = lse.transpose(1, 2, 3, 0, 4).reshape(b, kv, g, tp)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10, 11))
def _chunked(q, k, v, q_seg, k_seg, index, scale, softcap, window, bq, bk, s_len):
    return _chunked_fwd_impl(q, k, v, q_seg, k_seg, index, scale, softcap, window, bq, bk, s_len)[0]


def _chunked_fwd(q, k, v, q_seg, k_seg, index, scale, softcap, window, bq, bk, s_len):
    out, lse = _chunked_fwd_impl(q, k, v, q_seg, k_seg, index, scale, softcap, window, bq, bk, s_len)
    return out, (q, k, v, q_seg, k_seg, index, out, lse)


def _chunked_bwd(scale, softcap, window, bq, bk, s_len, res, d_out):
    """Flash-attention backward: two passes that recompute each needed block's scores.

    One pass per query block accumulates dq; one per key block accumulates dk and dv, so
    neither holds more than a block pair of scores. Masked entries get no score gradient
    (the xla path's select blocks it there too).
    """
    # d_out, out: [B, Tp, K, G, Dv]; lse: [B, K, G, Tp]
    q, k, v, q_seg, k_seg, index, out, lse = res
    nq, nk = q.shape[1] // bq, k.shape[1] // bk
    delta = jnp.einsum("bqkgd,bqkgd->bkgq", d_out.astype(jnp.float32), out.astype(jnp.float32))

    def probs_and_dscores(i, j):
        q_blk, k_blk, v_blk, do_blk = _slice(q, 1, i, bq), _slice(k, 1, j, bk), _slice(v, 1, j, bk), _slice(d_out, 1, i, bq)
        raw, s, keep = _block_scores(q_blk, k_blk, _slice(q_seg, 1, i, bq), _slice(k_seg, 1, j, bk), i, j,
                                     index, s_len, scale, softcap, window, bq, bk)
        p = jnp.exp(s - _slice(lse, 3, i, bq)[..., None])  # [B, K, G, bq, bk]
        dp = jnp.einsum("bqkgd,bskd->bkgqs", do_blk, v_blk, preferred_element_type=jnp.float32)
        ds = jnp.where(keep, p * (dp - _slice(delta, 3, i, bq)[..., None]), 0.0)
        if softcap is not None:
            ds = ds * (1.0 - jnp.square(jnp.tanh(raw / softcap)))
        return q_blk, k_blk, do_blk, p, ds * scale

    def dq_block(i):
        def key_block(j, dq):
            def compute(dq):
                _, k_blk, _, _, ds = probs_and_dscores(i, j)
                return dq + jnp.einsum("bkgqs,bskd->bqkgd", ds, k_blk, preferred_element_type=jnp.float32)
            return jax.lax.cond(_block_needed(i, j, index, bq, bk, window), compute, lambda d: d, dq)
        zeros = jnp.zeros((q.shape[0], bq) + q.shape[2:], jnp.float32)
        return jax.lax.fori_loop(0, nk, key_block, zeros)

    def dkv_block(j):
        def query_block(i, carry):
            def compute(carry):
                dk, dv = carry
                q_blk, _, do_blk, p, ds = probs_and_dscores(i, j)
                dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(do_blk.dtype), do_blk,
                                     preferred_element_type=jnp.float32)
                dk = dk + jnp.einsum("bkgqs,bqkgd->bskd", ds, q_blk, preferred_element_type=jnp.float32)
                return dk, dv
            return jax.lax.cond(_block_needed(i, j, index, bq, bk, window), compute, lambda c: c, carry)
        zeros = (jnp.zeros((k.shape[0], bk) + k.shape[2:], jnp.float32),
                 jnp.zeros((v.shape[0], bk) + v.shape[2:], jnp.float32))
        return jax.lax.fori_loop(0, nq, query_block, zeros)

    def unblock(x, like):  # [n, B, blk, ...] -> [B, n * blk, ...]
        x = jnp.moveaxis(x, 0, 1)
        return x.reshape(like.shape).astype(like.dtype)

    dq = unblock(jax.lax.map(dq_block, jnp.arange(nq)), q)
    dk, dv = jax.lax.map(dkv_block, jnp.arange(nk))
    zero_int = lambda x: np.zeros(x.shape, jax.dtypes.float0)  # integer inputs have no cotangent
    return dq, unblock(dk, k), unblock(dv, v), zero_int(q_seg), zero_int(k_seg), zero_int(index)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float,
                      softcap: float | None = None, *, block_q: int = BLOCK,
                      block_k: int = BLOCK) -> jax.Array:
    """Flash-style attention that never holds ``[T, S]`` scores (forward or backward)."""
    # q: [B, T, H, D]; k, v: [B, S, K, D] -> [B, T, H, Dv]
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    bq, bk = min(block_q, t), min(block_k, s)
    q5 = _pad_axis(q.reshape(b, t, kv, h // kv, d), 1, bq)
    out = _chunked(q5, _pad_axis(k, 1, bk), _pad_axis(v, 1, bk), _pad_axis(mask.q_segment, 1, bq),
                   _pad_axis(mask.k_segment, 1, bk), jnp.asarray(mask.index, jnp.int32),
                   float(scale), softcap, mask.window, bq, bk, s)
    return out[:, :t].reshape(b, t, h, v.shape[-1])


# --------------------------------------------------------------------------- cudnn


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float,
                    softcap: float | None = None) -> jax.Array:
    """cuDNN flash attention (GPU, bf16/fp16). Causality and the window go to cuDNN as such;
    padding and segments as a boolean mask, which cuDNN turns into a ``[B, 1, T, S]`` bias."""
    # q: [B, T, H, D]; k, v: [B, S, K, D]
    if softcap is not None:
        raise ValueError("attention soft-capping is not supported by the cudnn backend; use chunked or xla")
    if q.shape[1] != k.shape[1]:
        raise ValueError("the cudnn backend needs as many keys as queries (no KV cache)")
    # the padding/segment part of `visible`; causality and the window go as flags
    q_seg, k_seg = mask.q_segment, mask.k_segment
    same = (k_seg[:, None, :] != 0) & (q_seg[:, :, None] == k_seg[:, None, :])  # [B, T, S]
    window = None if mask.window is None else (mask.window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, mask=same[:, None], scale=scale, is_causal=True,
                                        local_window_size=window, implementation="cudnn")


# --------------------------------------------------------------------------- splash


def splash_mask(t: int, heads: int, window: int | None):
    """The static part of the mask for splash: causal, or causal within ``window``."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
    base = (masks.CausalMask((t, t)) if window is None
            else masks.LocalMask((t, t), window_size=(window - 1, 0), offset=0))
    return masks.MultiHeadMask([base] * heads)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float,
                     softcap: float | None = None, *, interpret: bool = False) -> jax.Array:
    """The Pallas splash kernel: a static causal/local mask plus segment ids for padding and
    packing. Needs T == S (no cache) and T a multiple of 128 (its block size)."""
    # q: [B, T, H, D]; k, v: [B, S, K, D]
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    b, t, h, _ = q.shape
    if k.shape[1] != t or t % BLOCK:
        raise ValueError(f"the splash backend needs as many keys as queries and a multiple of {BLOCK} "
                         f"tokens, got {t} queries and {k.shape[1]} keys")
    kernel = splash.make_splash_mha(splash_mask(t, h, mask.window), head_shards=1, q_seq_shards=1,
                                    attn_logits_soft_cap=softcap, interpret=interpret)
    # the kernel wants heads first and does not scale q
    to_heads = lambda x: x.transpose(0, 2, 1, 3)
    segments = splash.SegmentIds(q=mask.q_segment, kv=mask.k_segment)
    out = jax.vmap(kernel)(to_heads(q * jnp.asarray(scale, q.dtype)), to_heads(k), to_heads(v),
                           segment_ids=segments)
    return to_heads(out)
