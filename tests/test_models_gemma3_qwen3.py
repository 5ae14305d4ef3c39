"""Gemma 3 (text) and Qwen3 ports against transformers: logits on long left-padded batches
(past the sliding window, both RoPE bases), bit-exact export, KV-cache decoding and greedy
sampling past the window, reward heads, sharding, remat and bf16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from hf_models import (build_hf_model, left_padded_batch, tiny_gemma3_config, tiny_qwen3_config,
                       torch_logits)
from jaxrlhf.generate import SamplingConfig, generate
from jaxrlhf.models import from_pretrained, reward_model_from_pretrained, save_pretrained
from jaxrlhf.models.layers import attention_mask, sliding_window_mask
from jaxrlhf.sharding import MeshConfig, make_mesh, per_device_bytes

TOL = 1e-4
T = 44  # > 5 sliding windows of 8
LENGTHS = (44, 30, 9, 1)

CASES = {
    "qwen3": lambda: tiny_qwen3_config(),
    "qwen3-tied": lambda: tiny_qwen3_config(tie_word_embeddings=True),
    "qwen3-mqa-llama3-rope": lambda: tiny_qwen3_config(
        num_key_value_heads=1, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "gemma3": lambda: tiny_gemma3_config(),
    "gemma3-final-softcap": lambda: tiny_gemma3_config(final_logit_softcapping=3.0),
    # transformers' Gemma3Attention stores attn_logit_softcapping but never applies it
    "gemma3-attn-softcap-ignored": lambda: tiny_gemma3_config(attn_logit_softcapping=5.0),
    "gemma3-untied-mqa-linear-rope": lambda: tiny_gemma3_config(
        tie_word_embeddings=False, num_key_value_heads=1,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                         "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}),
}


def max_err_on_valid(ours, ref, mask):
    return float(np.abs(np.asarray(ours) - ref)[mask.astype(bool)].max())


def long_batch(seed=0):
    return left_padded_batch(seed=seed, lengths=LENGTHS, total=T)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_and_round_trip(case, tmp_path):
    hf_model = build_hf_model(CASES[case](), tmp_path / "hf")
    ids, mask = long_batch()
    ref = torch_logits(hf_model, ids, mask)

    model = from_pretrained(tmp_path / "hf")
    out = model(ids, mask)
    assert out.logits.shape == ref.shape
    assert max_err_on_valid(out.logits, ref, mask) < TOL

    save_pretrained(model, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(reloaded) is type(hf_model)
    assert max_err_on_valid(torch_logits(reloaded, ids, mask), ref, mask) < TOL
    for name, tensor in hf_model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0)
    assert reloaded.config.to_dict().get("layer_types") == hf_model.config.to_dict().get("layer_types")


def test_sliding_window_boundary():
    """A query at slot q sees key slots q - window + 1 .. q (transformers: kv > q - window)."""
    window, s = 3, 7
    mask = np.asarray(sliding_window_mask(attention_mask(jnp.ones((1, s), bool), s, 0), 0, window))[0]
    for q in range(s):
        assert [k for k in range(s) if mask[q, k]] == list(range(max(0, q - window + 1), q + 1))
    # decoding: one query at slot 5 of a cache whose slots 0-1 are left padding
    valid = jnp.asarray([[0, 0, 1, 1, 1, 1, 0]], bool)
    step = np.asarray(sliding_window_mask(attention_mask(valid, 1, 5), 5, window))[0, 0]
    assert step.tolist() == [False, False, False, True, True, True, False]


def test_window_and_both_rope_bases_are_exercised(tmp_path):
    """Guards the parity cases against passing because the window or a RoPE base changed nothing."""
    ids, mask = long_batch()
    base = tiny_gemma3_config()
    reference = torch_logits(build_hf_model(base, tmp_path / "base"), ids, mask)
    rope = base.rope_parameters
    variants = {
        "window": dict(sliding_window=1000),
        "local base": dict(rope_parameters={**rope, "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}),
        "global base": dict(rope_parameters={**rope, "full_attention": {"rope_type": "default", "rope_theta": 10.0}}),
    }
    for name, overrides in variants.items():
        other = torch_logits(build_hf_model(tiny_gemma3_config(**overrides), tmp_path / name), ids, mask)
        assert max_err_on_valid(other, reference, mask) > 1e-3, name


def test_gemma3_config_reads_legacy_rope_keys():
    from jaxrlhf.models import config_from_hf
    config = config_from_hf({"model_type": "gemma3_text", "num_hidden_layers": 7, "rope_theta": 1e6,
                             "rope_local_base_freq": 1e4, "sliding_window": 512,
                             "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    assert config.layer_types == ("sliding_attention",) * 5 + ("full_attention", "sliding_attention")
    assert config.rope_by_type["full_attention"] == (1e6, {"rope_type": "linear", "factor": 8.0})
    assert config.rope_by_type["sliding_attention"] == (1e4, None)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gemma3", "qwen3"])
def test_kv_cache_prefill_and_decode_match_full_forward(case, tmp_path):
    """Prefill 20 slots, then decode 24 tokens one by one: past the window, with left padding."""
    build_hf_model(CASES[case](), tmp_path)
    model = from_pretrained(tmp_path)
    ids, mask = long_batch(seed=1)
    full = np.asarray(model(ids, mask).logits)

    prompt = 20
    slot_mask = np.zeros_like(mask)
    slot_mask[:, :prompt] = mask[:, :prompt]
    out = model(ids[:, :prompt], slot_mask, cache=model.init_cache(batch=len(ids), capacity=T))
    steps, cache = [np.asarray(out.logits)], out.cache
    step = jax.jit(lambda ids, m, c: model(ids, m, cache=c))
    for t in range(prompt, T):
        slot_mask[:, t] = mask[:, t]
        out = step(ids[:, t:t + 1], slot_mask, cache)
        cache = out.cache
        steps.append(np.asarray(out.logits))
    assert max_err_on_valid(np.concatenate(steps, axis=1), full, mask) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gemma3", "qwen3"])
def test_greedy_generate_equals_transformers(case, tmp_path):
    """24 new tokens after left-padded prompts of up to 12: three windows past the prompt."""
    hf_model = build_hf_model(CASES[case](), tmp_path, seed=3)
    ids, mask = left_padded_batch(seed=4, lengths=(12, 5, 9), total=12)
    n = 24
    with torch.no_grad():
        hf_out = hf_model.generate(input_ids=torch.from_numpy(ids).long(),
                                   attention_mask=torch.from_numpy(mask).long(), do_sample=False,
                                   max_new_tokens=n, pad_token_id=0, eos_token_id=2)
    # transformers pads finished rows with pad_token_id and stops when all are finished
    expected = np.zeros((len(ids), n), np.int64)
    expected[:, :hf_out.shape[1] - ids.shape[1]] = hf_out[:, ids.shape[1]:].numpy()
    assert (expected[:, 16] != 0).any()  # some row is still generating two windows past its prompt

    model = from_pretrained(tmp_path)
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, ids, mask: generate(
        graphdef, state, ids, mask, jax.random.key(0), config=SamplingConfig(max_new_tokens=n, temperature=0.0),
        eos_id=2, pad_id=0))
    got = np.asarray(run(state, ids, mask).tokens)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_gemma3_reward_model_exports_for_transformers(tmp_path):
    build_hf_model(tiny_gemma3_config(), tmp_path / "lm")
    rm = reward_model_from_pretrained(tmp_path / "lm", seed=1)
    ids, mask = long_batch()
    ours = np.asarray(rm(ids, mask))
    save_pretrained(rm, tmp_path / "rm")
    hf_rm = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert type(hf_rm).__name__ == "Gemma3TextForSequenceClassification"
    # transformers reads the score at the last non-pad token: right-pad for it
    right_ids = np.zeros_like(ids)
    for row, n in enumerate(mask.sum(1)):
        right_ids[row, :n] = ids[row, T - n:]
    hf_rm.config.pad_token_id = 0
    with torch.no_grad():
        theirs = hf_rm(input_ids=torch.from_numpy(right_ids).long(),
                       attention_mask=torch.from_numpy((right_ids > 0).astype(np.int64))).logits[:, 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.asarray(reward_model_from_pretrained(tmp_path / "rm")(ids, mask)), ours,
                               atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gemma3", "qwen3"])
def test_sharded_forward_shards_vocab_and_matches(case, tmp_path):
    factory = {"gemma3": tiny_gemma3_config, "qwen3": tiny_qwen3_config}[case]
    build_hf_model(factory(vocab_size=128), tmp_path)
    ids, mask = left_padded_batch(lengths=(44, 30, 9, 1, 12, 40, 3, 20), total=T, vocab=128)
    expected = np.asarray(from_pretrained(tmp_path)(ids, mask).logits)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = from_pretrained(tmp_path, mesh=mesh)
    embedding = model.embed_tokens.embedding.get_value()
    assert embedding.sharding.spec[0] == "tensor"  # the vocab axis
    assert per_device_bytes(embedding) * 4 == embedding.nbytes
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh):
        got = np.asarray(jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m).logits)(state, ids, mask))
    assert max_err_on_valid(got, expected, mask) < 1e-5


@pytest.mark.slow
def test_gemma3_remat_and_bf16(tmp_path):
    hf_model = build_hf_model(tiny_gemma3_config(), tmp_path)
    ids, mask = long_batch()

    def loss_and_grad(remat):
        model = from_pretrained(tmp_path, remat=remat)
        graphdef, params = nnx.split(model)
        # over real tokens only: padded query rows attend to nothing and are garbage by contract
        loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(ids, mask).logits * mask[..., None]) / mask.sum()
        return jax.jit(jax.value_and_grad(loss))(params)

    (l0, g0), (l1, g1) = loss_and_grad(False), loss_and_grad(True)
    np.testing.assert_allclose(l0, l1, atol=1e-6)
    # float32 re-association under remat: compare each leaf relative to its largest entry
    relative = jax.tree.map(lambda a, b: float(np.abs(a - b).max() / np.abs(b).max()), g0, g1)
    assert max(jax.tree.leaves(relative)) < 1e-5, relative

    model = from_pretrained(tmp_path, dtype="bfloat16", param_dtype="float32")
    out = model(ids, mask)
    assert out.hidden.dtype == np.dtype("bfloat16") and out.logits.dtype == np.float32
    err = max_err_on_valid(out.logits, torch_logits(hf_model, ids, mask), mask)
    assert 0 < err < 0.1  # bf16 activations: close to the float32 reference, not equal to it


def test_gemma3_image_text_folder_loads_its_text_tower(tmp_path):
    from hf_models import build_hf_gemma3_image_text_model
    hf_model = build_hf_gemma3_image_text_model(tmp_path / "hf")
    ids, mask = left_padded_batch(lengths=LENGTHS, total=T, vocab=90)  # no image tokens
    ref = torch_logits(hf_model, ids, mask)
    model = from_pretrained(tmp_path / "hf")
    assert model.config.model_type == "gemma3_text" and model.config.sliding_window == 8
    assert max_err_on_valid(model(ids, mask).logits, ref, mask) < TOL
    # exported as a text-only gemma3_text folder with the same text-tower weights
    save_pretrained(model, tmp_path / "export")
    text_only = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(text_only).__name__ == "Gemma3ForCausalLM"
    assert max_err_on_valid(torch_logits(text_only, ids, mask), ref, mask) < TOL
