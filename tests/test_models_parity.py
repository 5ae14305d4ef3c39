"""Our ports against transformers' PyTorch models: load, compare logits, export, reload."""

import numpy as np
import pytest
import torch
import transformers

from hf_models import (build_hf_model, left_padded_batch, tiny_gpt2_config, tiny_llama_config,
                       tiny_qwen2_config, torch_logits)
from jaxrlhf.models import from_pretrained, save_pretrained

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

CASES = {
    "llama-mha": lambda: tiny_llama_config(),
    "llama-gqa": lambda: tiny_llama_config(num_key_value_heads=2),
    "llama-mqa-tied": lambda: tiny_llama_config(num_key_value_heads=1, tie_word_embeddings=True),
    "llama-gqa-tied-llama3-rope": lambda: tiny_llama_config(
        num_key_value_heads=2, tie_word_embeddings=True, rope_scaling=LLAMA3_ROPE),
    "llama-bias-head_dim": lambda: tiny_llama_config(attention_bias=True, mlp_bias=True, head_dim=24),
    "qwen2": lambda: tiny_qwen2_config(),
    "qwen2-tied": lambda: tiny_qwen2_config(tie_word_embeddings=True),
    "gpt2": lambda: tiny_gpt2_config(),
    "gpt2-untied-inverse-layer-scale": lambda: tiny_gpt2_config(
        tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True, activation_function="gelu"),
}

TOL = 1e-4


def max_err_on_valid(ours, ref, mask):
    return float(np.abs(np.asarray(ours) - ref)[mask.astype(bool)].max())


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_and_round_trip(case, tmp_path):
    hf_model = build_hf_model(CASES[case](), tmp_path / "hf")
    ids, mask = left_padded_batch(lengths=(12, 7, 3, 1))
    ref = torch_logits(hf_model, ids, mask)

    model = from_pretrained(tmp_path / "hf")
    out = model(ids, mask)
    assert out.logits.shape == ref.shape
    assert max_err_on_valid(out.logits, ref, mask) < TOL
    assert out.hidden.shape == ids.shape + (model.config.hidden_size,)

    save_pretrained(model, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(reloaded) is type(hf_model)
    assert max_err_on_valid(torch_logits(reloaded, ids, mask), ref, mask) < TOL
    for name, tensor in hf_model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_llama3_rope_scaling_is_exercised(tmp_path):
    """Guards the llama3 case above against passing because scaling changed nothing."""
    ids, mask = left_padded_batch()
    plain = torch_logits(build_hf_model(tiny_llama_config(), tmp_path / "a"), ids, mask)
    scaled = torch_logits(build_hf_model(tiny_llama_config(rope_scaling=LLAMA3_ROPE), tmp_path / "b"),
                          ids, mask)
    assert max_err_on_valid(plain, scaled, mask) > 1e-3


@pytest.mark.slow
def test_left_padding_does_not_change_valid_logits(tmp_path):
    build_hf_model(tiny_llama_config(num_key_value_heads=2), tmp_path)
    model = from_pretrained(tmp_path)
    ids, mask = left_padded_batch(lengths=(5,), total=9)
    padded = np.asarray(model(ids, mask).logits)[0, 4:]
    unpadded = np.asarray(model(ids[:, 4:], mask[:, 4:]).logits)[0]
    np.testing.assert_allclose(padded, unpadded, atol=1e-5)


@pytest.mark.slow
def test_bf16_compute_with_fp32_params(tmp_path):
    hf_model = build_hf_model(tiny_llama_config(num_key_value_heads=2), tmp_path)
    ids, mask = left_padded_batch()
    model = from_pretrained(tmp_path, dtype="bfloat16", param_dtype="float32")
    assert model.layers[0].mlp.up_proj.kernel.dtype == np.float32
    out = model(ids, mask)
    assert out.hidden.dtype == np.dtype("bfloat16")
    assert out.logits.dtype == np.float32
    # bf16 activations: close to the float32 reference, not equal to it
    assert max_err_on_valid(out.logits, torch_logits(hf_model, ids, mask), mask) < 0.1


@pytest.mark.slow
def test_remat_gives_same_logits_and_grads(tmp_path):
    import jax
    from flax import nnx

    build_hf_model(tiny_gpt2_config(), tmp_path)
    ids, mask = left_padded_batch()

    def loss_and_grad(remat):
        model = from_pretrained(tmp_path, remat=remat)
        graphdef, params = nnx.split(model)
        loss = lambda p: nnx.merge(graphdef, p)(ids, mask).logits.mean()
        return jax.jit(jax.value_and_grad(loss))(params)

    (l0, g0), (l1, g1) = loss_and_grad(False), loss_and_grad(True)
    np.testing.assert_allclose(l0, l1, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["llama-gqa", "gpt2"])
def test_kv_cache_prefill_and_decode_match_full_forward(case, tmp_path):
    build_hf_model(CASES[case](), tmp_path)
    model = from_pretrained(tmp_path)
    ids, mask = left_padded_batch(lengths=(10, 6, 2), total=10)
    full = np.asarray(model(ids, mask).logits)

    prompt = 6  # prefill the first 6 slots, then decode the remaining 4 one at a time
    cache = model.init_cache(batch=3, capacity=10)
    slot_mask = np.zeros_like(mask)
    slot_mask[:, :prompt] = mask[:, :prompt]
    out = model(ids[:, :prompt], slot_mask, cache=cache)
    steps = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(prompt, 10):
        slot_mask[:, t] = mask[:, t]
        out = model(ids[:, t:t + 1], slot_mask, cache=cache)
        cache = out.cache
        steps.append(np.asarray(out.logits))
    assert int(cache.index) == 10
    assert max_err_on_valid(np.concatenate(steps, axis=1), full, mask) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("case", ["llama-gqa", "gpt2"])
def test_packed_segments_equal_separate_rows(case, tmp_path):
    build_hf_model(CASES[case](), tmp_path)
    model = from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    a, b = rng.integers(3, 97, size=5), rng.integers(3, 97, size=4)
    packed = np.zeros((1, 12), np.int32)
    packed[0, :5], packed[0, 5:9] = a, b
    segments = np.array([[1] * 5 + [2] * 4 + [0] * 3], np.int32)
    out = np.asarray(model(packed, (segments > 0).astype(np.int32), segment_ids=segments).logits)[0]
    alone_a = np.asarray(model(a[None], np.ones((1, 5), np.int32)).logits)[0]
    alone_b = np.asarray(model(b[None], np.ones((1, 4), np.int32)).logits)[0]
    np.testing.assert_allclose(out[:5], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[5:9], alone_b, atol=1e-5)
