"""Chunked log-probs / SFT loss / entropies equal the plain [B, T, V] path, values and
gradients, and never hold the whole [B, T, V] float32 logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_models import build_hf_model, left_padded_batch, tiny_gemma3_config, tiny_qwen3_config
from jaxrlhf.losses import entropy_from_logits, sft_loss, token_log_probs
from jaxrlhf.models import create_model, from_pretrained
from jaxrlhf.models.chunked_logits import chunked_sft_loss, chunked_token_stats
from jaxrlhf.models.gemma3 import Gemma3Config

CASES = {"gemma3-softcap": lambda: tiny_gemma3_config(final_logit_softcapping=3.0),
         "qwen3-untied": lambda: tiny_qwen3_config()}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_chunked_equals_plain_values_and_grads(case, tmp_path):
    build_hf_model(CASES[case](), tmp_path)
    model = from_pretrained(tmp_path)
    ids, mask = left_padded_batch(lengths=(20, 13, 4), total=20)
    graphdef, params = nnx.split(model)

    def plain(params):
        logits = nnx.merge(graphdef, params)(ids, mask).logits
        loss, aux = sft_loss(logits, ids, mask)
        return loss, (token_log_probs(logits, ids, temperature=0.7), entropy_from_logits(logits / 0.7))

    def chunked(params):
        m = nnx.merge(graphdef, params)
        hidden, _ = m.hidden_states(ids, mask)
        loss, aux = chunked_sft_loss(m.unembed, hidden, ids, mask, chunk_size=7)  # 60 tokens: a ragged last chunk
        return loss, chunked_token_stats(m.unembed, hidden, ids, temperature=0.7, chunk_size=7)

    (l0, (lp0, h0)), g0 = jax.jit(jax.value_and_grad(plain, has_aux=True))(params)
    (l1, (lp1, h1)), g1 = jax.jit(jax.value_and_grad(chunked, has_aux=True))(params)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    np.testing.assert_allclose(lp1, lp0, atol=1e-5)
    np.testing.assert_allclose(h1, h0, atol=1e-5)
    assert np.all(np.asarray(lp1)[:, 0] == 0)
    relative = jax.tree.map(lambda a, b: float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30)), g1, g0)
    assert max(jax.tree.leaves(relative)) < 1e-5, relative


def test_chunked_sft_grad_never_holds_full_logits():
    """Compiled temporary memory of the SFT gradient: the plain path needs several [B, T, V]
    float32 buffers; the chunked one a few [chunk, V] ones (logits, probabilities, their
    cotangent), far under one [B, T, V]."""
    config = Gemma3Config(vocab_size=16384, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=1, num_key_value_heads=1, head_dim=32, sliding_window=8,
                          layer_types=("sliding_attention",))
    graphdef, params = nnx.split(create_model(config))
    b, t = 4, 256
    ids = jax.ShapeDtypeStruct((b, t), jnp.int32)
    chunk = 64
    full_logits_bytes = b * t * config.vocab_size * 4
    chunk_logits_bytes = chunk * config.vocab_size * 4

    def plain(params, ids):
        return sft_loss(nnx.merge(graphdef, params)(ids, jnp.ones_like(ids)).logits, ids, jnp.ones_like(ids))[0]

    def chunked(params, ids):
        m = nnx.merge(graphdef, params)
        hidden, _ = m.hidden_states(ids, jnp.ones_like(ids))
        return chunked_sft_loss(m.unembed, hidden, ids, jnp.ones_like(ids), chunk_size=chunk)[0]

    def temp_bytes(fn):
        compiled = jax.jit(jax.grad(fn)).lower(params, ids).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain_bytes, chunked_bytes = temp_bytes(plain), temp_bytes(chunked)
    assert plain_bytes >= 2 * full_logits_bytes, (plain_bytes, full_logits_bytes)
    assert chunked_bytes < 4 * chunk_logits_bytes, (chunked_bytes, chunk_logits_bytes)
    assert chunked_bytes < full_logits_bytes / 4, (chunked_bytes, full_logits_bytes)
