"""Attention backends against the xla reference: forward and gradients in float32 to 1e-5
with left padding, packed segments, sliding windows, soft-capping and grouped-query heads;
through the ports (Llama/Qwen3, Gemma 3, GPT-2); how ``auto`` picks; and that chunked
attention's compiled memory grows linearly in T where xla's grows quadratically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_models import left_padded_batch, tiny_gemma3_config, tiny_gpt2_config, tiny_qwen3_config
from jaxrlhf.config import ConfigError, ModelConfig, RunConfig, load_config
from jaxrlhf.models import attention, config_from_hf, create_model
from jaxrlhf.models.attention import AttentionMask, chunked_attention, resolve_backend, xla_attention
from jaxrlhf.models.base import set_attention

TOL = 1e-5


# --------------------------------------------------------------------------- op level


def left_padded_mask(lengths, t):
    valid = np.zeros((len(lengths), t), bool)
    for row, n in enumerate(lengths):
        valid[row, t - n:] = True
    return AttentionMask.causal(jnp.asarray(valid), t, 0)


def packed_mask(t):
    # row 0: three examples and trailing padding; row 1: one example after left padding
    seg = np.zeros((2, t), np.int32)
    seg[0, :5], seg[0, 5:6], seg[0, 6:t - 2] = 1, 2, 3
    seg[1, 3:] = 1
    return AttentionMask.packed(jnp.asarray(seg))


def qkv(seed, b, t, h, kv, d, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = scale * jax.random.normal(keys[0], (b, t, h, d), jnp.float32)
    k = scale * jax.random.normal(keys[1], (b, t, kv, d), jnp.float32)
    v = jax.random.normal(keys[2], (b, t, kv, d), jnp.float32)
    return q, k, v


def query_rows(mask: AttentionMask) -> np.ndarray:
    """[B, T] rows that see at least one key: the others are garbage in every backend."""
    return np.asarray(mask.dense().any(-1))


def compare(fn, q, k, v, mask, softcap=None):
    """Max abs differences of ``fn`` vs xla: outputs on real query rows, and gradients of a
    random projection of those outputs w.r.t. q, k and v."""
    rows = jnp.asarray(query_rows(mask))[:, :, None, None]
    weight = jax.random.normal(jax.random.key(7), q.shape[:3] + (v.shape[-1],))
    scale = q.shape[-1] ** -0.5

    def loss(impl, q, k, v):
        out = impl(q, k, v)
        return jnp.sum(jnp.where(rows, out * weight, 0.0)), out

    ref_impl = lambda q, k, v: xla_attention(q, k, v, mask.dense(), scale, softcap)
    new_impl = lambda q, k, v: fn(q, k, v, mask, scale, softcap)
    grad = lambda impl: jax.jit(jax.value_and_grad(lambda *a: loss(impl, *a), (0, 1, 2), has_aux=True))
    (_, ref), ref_grads = grad(ref_impl)(q, k, v)
    (_, out), grads = grad(new_impl)(q, k, v)
    assert bool(jnp.all(jnp.isfinite(out))) and all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    fwd = float(jnp.max(jnp.where(rows, jnp.abs(out - ref), 0.0)))
    bwd = max(float(jnp.max(jnp.abs(g - r))) for g, r in zip(grads, ref_grads))
    return fwd, bwd


def chunked(block_q, block_k):
    return lambda q, k, v, mask, scale, softcap: chunked_attention(q, k, v, mask, scale, softcap,
                                                                    block_q=block_q, block_k=block_k)


CASES = {
    # name: (mask builder, window, softcap, heads, kv heads)
    "left-padding": (lambda t: left_padded_mask((13, 9, 1), t), None, None, 4, 2),
    "packed": (packed_mask, None, None, 4, 4),
    "window-left-padding": (lambda t: left_padded_mask((13, 9, 1), t), 3, None, 4, 1),
    "window-packed": (packed_mask, 4, None, 2, 2),
    "softcap": (lambda t: left_padded_mask((13, 5), t), None, 2.0, 2, 1),
}


BLOCKS = ([("left-padding", (16, 16)), ("left-padding", (1, 3)), ("window-packed", (1, 3))]
          + [(case, (4, 5)) for case in sorted(CASES)])


@pytest.mark.slow
@pytest.mark.parametrize("case,blocks", BLOCKS, ids=[f"{c}-{q}x{k}" for c, (q, k) in BLOCKS])
def test_chunked_equals_xla(case, blocks):
    """Uneven blocks (13 tokens in blocks of 4 and 5, or 1 and 3) exercise the block padding
    and the skipping of blocks that the causal mask or the window empty; 16x16 is one block."""
    build, window, softcap, h, kv = CASES[case]
    t = 13
    mask = build(t).with_window(window)
    q, k, v = qkv(0, mask.q_segment.shape[0], t, h, kv, 8, scale=2.0)  # scale 2: peaked softmax
    fwd, bwd = compare(chunked(*blocks), q, k, v, mask, softcap)
    assert fwd < TOL and bwd < TOL, (fwd, bwd)


@pytest.mark.slow
def test_chunked_with_a_query_offset():
    """Queries at slots 5.. of 12 keys (a cache-like index) see the right keys."""
    valid = jnp.asarray(np.r_[[False] * 2, [True] * 10][None], bool)
    mask = AttentionMask.causal(valid, 7, 5).with_window(4)
    q = jax.random.normal(jax.random.key(1), (1, 7, 2, 8))
    _, k, v = qkv(2, 1, 12, 2, 1, 8)
    ref = xla_attention(q, k, v, mask.dense(), 0.3)
    out = chunked_attention(q, k, v, mask, 0.3, block_q=3, block_k=5)
    assert float(jnp.max(jnp.abs(out - ref))) < TOL


def test_the_mask_rule_is_the_transformers_one():
    """One rule for every backend: causal over slots, same non-zero segment, k > q - window."""
    dense = np.asarray(packed_mask(13).with_window(3).dense())[0]
    seg = [1] * 5 + [2] + [3] * 5 + [0] * 2
    for q in range(13):
        expect = [k for k in range(13) if k <= q and seg[k] and seg[k] == seg[q] and k > q - 3]
        assert [k for k in range(13) if dense[q, k]] == expect


# --------------------------------------------------------------------------- splash (Pallas)


def _splash_runs_here() -> bool:
    try:
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _splash_runs_here(), reason="this JAX has no Pallas splash attention")
@pytest.mark.parametrize("case", ["left-padding", "packed", "window-packed", "softcap"])
def test_splash_equals_xla_in_interpret_mode(case):
    """The TPU kernel run by the Pallas interpreter (one 128-token block)."""
    build, window, softcap, h, kv = CASES[case]
    mask = build(128).with_window(window)
    q, k, v = qkv(3, mask.q_segment.shape[0], 128, h, kv, 8, scale=2.0)
    splash = lambda q, k, v, mask, scale, softcap: attention.splash_attention(q, k, v, mask, scale, softcap,
                                                                              interpret=True)
    fwd, bwd = compare(splash, q, k, v, mask, softcap)
    assert fwd < TOL and bwd < TOL, (fwd, bwd)


# --------------------------------------------------------------------------- choosing a backend


def test_auto_picks_per_platform_and_length():
    f32, bf16 = jnp.float32, jnp.bfloat16
    pick = lambda platform, t, dtype=f32, cached=False: resolve_backend(
        "auto", query_len=t, dtype=dtype, cached=cached, platform=platform)
    assert pick("cpu", 128) == "xla"
    assert pick("cpu", attention.CHUNKED_FROM_LEN) == "chunked"
    assert pick("gpu", 128, bf16) == "cudnn"
    assert pick("gpu", 4096, f32) == "chunked"  # cuDNN has no float32 flash kernel
    assert pick("tpu", 512) == "splash"
    assert pick("tpu", 500) == "chunked"  # splash needs whole 128-token blocks
    for platform in ("cpu", "gpu", "tpu"):
        assert pick(platform, 1, cached=True) == "xla"  # decoding with the KV cache
        assert resolve_backend("chunked", query_len=8, dtype=f32, cached=True, platform=platform) == "xla"
    assert resolve_backend("chunked", query_len=8, dtype=f32, cached=False, platform="cpu") == "chunked"


@pytest.mark.parametrize("name,needs", [("cudnn", "GPU"), ("splash", "TPU")])
def test_a_kernel_for_another_platform_is_a_one_line_error(name, needs):
    with pytest.raises(ValueError, match=f"model.attention={name} needs a {needs}") as e:
        resolve_backend(name, query_len=8, dtype=jnp.bfloat16, cached=False, platform="cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend("flash", query_len=8, dtype=jnp.float32, cached=False, platform="cpu")


def test_model_attention_is_a_config_key(tmp_path):
    """``model.attention`` takes the backend names (the same list the module dispatches on)."""
    import typing
    hint = typing.get_type_hints(ModelConfig)["attention"]
    assert typing.get_args(hint) == attention.BACKENDS
    path = tmp_path / "run.yaml"
    path.write_text("model: {attention: chunked}\n")
    assert load_config(RunConfig, path).model.attention == "chunked"
    with pytest.raises(ConfigError, match="model.attention"):
        load_config(RunConfig, path, ["model.attention=flash"])


@pytest.mark.slow
def test_stages_apply_model_attention():
    """The stages' loaders set model.attention on the LM (inside a reward model too); a kernel
    for another platform is a one-line config error."""
    from jaxrlhf.models import create_reward_model
    from jaxrlhf.stages.common import with_attention
    rm = create_reward_model(config_from_hf(tiny_qwen3_config().to_dict()), seed=0)
    assert with_attention(rm, ModelConfig(attention="chunked")).backbone.attention == "chunked"
    with pytest.raises(ConfigError, match="model.attention=cudnn needs a GPU"):
        with_attention(rm, ModelConfig(attention="cudnn"))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_xla_in_bfloat16():
    mask = left_padded_mask((128, 100), 128).with_window(32)
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(4, 2, 128, 4, 2, 64))
    ref = xla_attention(q, k, v, mask.dense(), 0.125).astype(jnp.float32)
    out = attention.cudnn_attention(q, k, v, mask, 0.125).astype(jnp.float32)
    rows = jnp.asarray(query_rows(mask))[:, :, None, None]
    assert float(jnp.max(jnp.where(rows, jnp.abs(out - ref), 0.0))) < 2e-2  # bf16 rounding


# --------------------------------------------------------------------------- through the ports


PORTS = {
    "qwen3-gqa": lambda: tiny_qwen3_config(initializer_range=0.2),
    "gemma3-window": lambda: tiny_gemma3_config(initializer_range=0.2, sliding_window=5, num_hidden_layers=2,
                                                layer_types=["sliding_attention", "full_attention"]),
    "gpt2": lambda: tiny_gpt2_config(initializer_range=0.2),
}


def model_loss_and_grads(model, ids, mask, segment_ids):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    real = jnp.asarray(mask if segment_ids is None else segment_ids > 0)
    weight = jax.random.normal(jax.random.key(5), ids.shape + (model.config.vocab_size,))

    def loss(params):
        out = nnx.merge(graphdef, params, rest)(ids, mask, segment_ids=segment_ids)
        return jnp.sum(jnp.where(real[..., None], out.logits * weight, 0.0)), out.logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.where(np.asarray(real)[..., None], np.asarray(logits), 0.0), grads


# Gemma 3 packed (window, packing, grouped-query heads) in the fast tier; the rest ~20 s each
PORT_CASES = [pytest.param(port, packed, id=f"{port}-{'packed' if packed else 'left-padded'}",
                           marks=() if (port, packed) == ("gemma3-window", True) else pytest.mark.slow)
              for port in sorted(PORTS) for packed in (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize("port,packed", PORT_CASES)
def test_ports_give_the_same_logits_and_gradients_with_chunked(port, packed, monkeypatch):
    """Blocks of 8 so that the 21-token rows span three of them. Gradients are compared
    relative to each parameter's largest gradient where that exceeds 1: they reach ~100 here
    (a sum over every logit), where float32 rounding alone is ~1e-5 in absolute terms."""
    monkeypatch.setattr(attention, "BLOCK", 8)
    model = create_model(config_from_hf(PORTS[port]().to_dict()), seed=0)
    ids, mask = left_padded_batch(lengths=(21, 12, 4), total=21)
    segment_ids = None
    if packed:
        seg = np.zeros_like(ids)
        seg[0, :9], seg[0, 9:21], seg[1, 2:15], seg[2, 17:] = 1, 2, 1, 1
        segment_ids, mask = jnp.asarray(seg), jnp.asarray(seg > 0, jnp.int32)
        ids = np.where(seg > 0, np.maximum(ids, 3), 0)
    ref_logits, ref_grads = model_loss_and_grads(set_attention(model, "xla"), ids, mask, segment_ids)
    logits, grads = model_loss_and_grads(set_attention(model, "chunked"), ids, mask, segment_ids)
    assert np.max(np.abs(logits - ref_logits)) < TOL
    rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1.0))
    diffs = jax.tree.leaves(jax.tree.map(rel, grads, ref_grads))
    assert max(diffs) < TOL, max(diffs)


# --------------------------------------------------------------------------- memory


def attention_temp_bytes(backend: str, t: int) -> int:
    """Temp bytes of the compiled loss-and-gradient program of a one-layer model at length T
    (a compile-time number from XLA's buffer assignment: deterministic, nothing runs)."""
    hf = tiny_qwen3_config(num_hidden_layers=1, vocab_size=64, max_position_embeddings=4096)
    model = set_attention(create_model(config_from_hf(hf.to_dict()), seed=0), backend)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jax.ShapeDtypeStruct((1, t), jnp.int32)

    def loss(params, ids):
        return jnp.mean(nnx.merge(graphdef, params, rest)(ids, jnp.ones_like(ids)).hidden)

    compiled = jax.jit(jax.grad(loss)).lower(params, ids).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_chunked_attention_memory_is_linear_in_length():
    """Doubling T: xla's temp bytes grow ~4x ([T, T] scores), chunked's ~2x."""
    lengths = (512, 1024, 2048)
    table = {b: [attention_temp_bytes(b, t) for t in lengths] for b in ("xla", "chunked")}
    for b, row in table.items():
        print(f"{b:8s} temp MiB at T={lengths}: {[round(x / 2**20, 2) for x in row]}")
    xla, flash = table["xla"], table["chunked"]
    assert xla[2] / xla[1] > 3.0 and xla[1] / xla[0] > 3.0
    assert flash[2] / flash[1] < 2.3 and flash[1] / flash[0] < 2.3
    assert flash[2] < xla[2] / 4
