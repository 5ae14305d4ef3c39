"""model.logits: each stage's loss and gradients on the chunked path equal the full path's
(float32, 1e-5 relative or better) on a tiny Gemma 3 with a final soft-cap, chunks that do not
divide the token count; the config key and its errors; the sampler on both paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.algorithms import AlgorithmConfig, KLConfig
from jaxrlhf.config import ConfigError, ModelConfig, RunConfig, from_dict
from jaxrlhf.generate import SamplingConfig, generate
from jaxrlhf.models import create_model
from jaxrlhf.models.gemma3 import Gemma3Config
from jaxrlhf.models.logits_path import set_logits_path
from jaxrlhf.steps.common import init_train_state
from jaxrlhf.steps.dpo import dpo_loss_fn
from jaxrlhf.steps.rl import RLState, make_experience, minibatch_losses
from jaxrlhf.steps.sft import sft_loss_fn

VOCAB = 97
CHUNK = 7  # divides none of the token counts below: every path has a ragged last chunk
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model_parts():
    """(graphdef per path, params, buffers) of one tiny Gemma 3: sliding and global layers, a
    final soft-cap, an embedding scaled up so the softmax is far from uniform."""
    config = Gemma3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                          layer_types=("sliding_attention", "full_attention"), final_logit_softcapping=5.0)
    model = create_model(config, seed=0)
    embed = model.embed_tokens.embedding
    embed.set_value(embed.get_value() * 30.0)
    graphdefs = {}
    for path in ("full", "chunked"):  # split right after setting: the path is static in the graphdef
        graphdefs[path], params, buffers = nnx.split(set_logits_path(model, path, CHUNK), nnx.Param, ...)
    return graphdefs, params, buffers


def left_padded(rng, lengths, total):
    ids = np.zeros((len(lengths), total), np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, total - n:] = rng.integers(3, VOCAB, size=n)
        mask[row, total - n:] = 1
    return jnp.asarray(ids), jnp.asarray(mask)


def assert_close_values_and_grads(value_and_grad, model_parts, *args, term_scale: float = 0.0):
    """``term_scale``: the size of the terms a loss sums, where they cancel to near zero (a policy
    loss on centred advantages): its error is bounded by TOLERANCE x that size, not x the sum."""
    graphdefs, params, buffers = model_parts
    (v_full, aux_full), g_full = value_and_grad(graphdefs["full"], params, buffers, *args)
    (v_chunk, aux_chunk), g_chunk = value_and_grad(graphdefs["chunked"], params, buffers, *args)
    np.testing.assert_allclose(v_chunk, v_full, rtol=TOLERANCE, atol=TOLERANCE * term_scale)
    for key in aux_full:
        np.testing.assert_allclose(aux_chunk[key], aux_full[key], rtol=TOLERANCE, atol=TOLERANCE, err_msg=key)
    relative = jax.tree.map(lambda a, b: float(np.abs(a - b).max() / np.abs(b).max()), g_chunk, g_full)
    assert max(jax.tree.leaves(relative)) <= TOLERANCE, relative
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(g_full)) > 0  # a gradient to compare
    return aux_full


@pytest.mark.slow
def test_sft_loss_and_grads_packed_rows(model_parts):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, VOCAB, size=(3, 19)), jnp.int32)
    # row 0: two packed examples and padding; rows 1-2: one example each, prompt tokens untrained
    segment_ids = jnp.asarray([[1] * 8 + [2] * 9 + [0] * 2, [1] * 19, [1] * 15 + [0] * 4], jnp.int32)
    attention_mask = (segment_ids > 0).astype(jnp.int32)
    loss_mask = attention_mask.at[:, :5].set(0).at[0, 8:11].set(0)
    batch = {"input_ids": ids, "attention_mask": attention_mask, "loss_mask": loss_mask, "segment_ids": segment_ids}

    def value_and_grad(graphdef, params, buffers, batch):
        fn = lambda p: sft_loss_fn(p, buffers, batch, graphdef=graphdef, token_count=jnp.float32(23.0))
        return jax.value_and_grad(fn, has_aux=True)(params)

    aux = assert_close_values_and_grads(jax.jit(value_and_grad, static_argnums=0), model_parts, batch)
    assert aux["token_count"] == float(loss_mask[:, 1:].sum())


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_and_grads_against_a_reference(model_parts, loss_type):
    _, params, buffers = model_parts
    rng = np.random.default_rng(1)
    ids, mask = left_padded(rng, (17, 11, 14, 6), 17)
    loss_mask = mask.at[:, :-4].set(0)
    batch = {k: v.reshape(2, 2, 17) for k, v in
             {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}.items()}
    # a reference that differs from the policy, so the DPO margin is not zero
    reference = (jax.tree.map(lambda p: p * 0.9, params), buffers)

    def value_and_grad(graphdef, params, buffers, batch):
        fn = lambda p: dpo_loss_fn(p, buffers, reference, batch, graphdef=graphdef, beta=0.5,
                                   loss_type=loss_type, label_smoothing=0.1, pair_count=jnp.float32(2.0))
        return jax.value_and_grad(fn, has_aux=True)(params)

    aux = assert_close_values_and_grads(jax.jit(value_and_grad, static_argnums=0), model_parts, batch)
    assert abs(float(aux["margin_sum"])) > 1e-3


def rl_batch(rng, prompt_len=9, new_tokens=6):
    """A PPO batch of 4 left-padded prompts + responses, two cut short by EOS."""
    prompt, prompt_mask = left_padded(rng, (9, 5, 7, 3), prompt_len)
    response = jnp.asarray(rng.integers(3, VOCAB, size=(4, new_tokens)), jnp.int32)
    response_mask = jnp.asarray([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 2 + [0] * 4], jnp.int32)
    ids = jnp.concatenate([prompt, response * response_mask], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    return ids, mask, response_mask


@pytest.mark.slow
def test_rl_experience_and_policy_loss_grads(model_parts):
    """make_experience's behaviour and reference log-probs, entropy and advantages, and the
    gradient of the clipped policy loss with the GRPO KL term and an entropy bonus."""
    graphdefs, params, buffers = model_parts
    rng = np.random.default_rng(2)
    ids, mask, response_mask = rl_batch(rng)
    algo = AlgorithmConfig(advantage="grpo", kl=KLConfig(placement="loss", estimator="k3", coef=0.1),
                           entropy_coef=0.01, epochs=1, minibatches=1)
    state = RLState(iteration=jnp.zeros((), jnp.int32), actor=init_train_state(params, buffers, _sgd(), 0),
                    critic=None, kl_coef=jnp.float32(0.1), rng=jax.random.key_data(jax.random.key(0)))
    reference = (jax.tree.map(lambda p: p * 0.9, params), buffers)
    static = dict(critic_graphdef=None, prompt_len=9, temperature=0.7, algo=algo)
    scores, finished = jnp.asarray([1.0, -0.5, 0.25, 2.0]), jnp.asarray([False, True, False, True])

    experience = jax.jit(lambda graphdef: make_experience(
        state, reference, ids, mask, response_mask, scores, finished, actor_graphdef=graphdef, group_size=2,
        **static), static_argnums=0)
    exp_full, m_full = experience(graphdefs["full"])
    exp_chunk, m_chunk = experience(graphdefs["chunked"])
    for field in ("old_log_probs", "ref_log_probs", "advantages", "returns"):
        np.testing.assert_allclose(getattr(exp_chunk, field), getattr(exp_full, field), rtol=TOLERANCE,
                                   atol=TOLERANCE, err_msg=field)
    np.testing.assert_allclose(m_chunk["entropy"], m_full["entropy"], rtol=TOLERANCE)
    assert float(jnp.abs(exp_full.old_log_probs - exp_full.ref_log_probs).max()) > 1e-3

    # the policy's log-probs moved away from the behaviour ones, so clipping and the ratio matter
    moved = jax.tree.map(lambda p: p * 1.05, params)

    def value_and_grad(graphdef, params, buffers, experience):
        def fn(p):
            pg, _, metrics = minibatch_losses(p, None, state, experience, actor_graphdef=graphdef, **static)
            return pg, metrics
        return jax.value_and_grad(fn, has_aux=True)(params)

    # the policy loss is a mean of advantage x ratio terms, the advantages centred per group
    term_scale = float(jnp.abs(exp_full.advantages).max())
    aux = assert_close_values_and_grads(jax.jit(value_and_grad, static_argnums=0),
                                        (graphdefs, moved, buffers), exp_full, term_scale=term_scale)
    assert float(aux["approx_kl"]) > 0


def _sgd():
    import optax
    return optax.sgd(1e-3)


@pytest.mark.slow
def test_sampler_on_both_paths(model_parts):
    """The chunked path's prefill runs the head on the last prompt position only: the same
    tokens (greedy and sampled with one key) and the same sampler log-probs."""
    graphdefs, params, buffers = model_parts
    ids, mask = left_padded(np.random.default_rng(3), (8, 3, 6), 8)
    for temperature in (0.0, 0.8):
        config = SamplingConfig(max_new_tokens=5, temperature=temperature)
        out = {path: jax.jit(lambda s, i, m, g=graphdefs[path]: generate(
                   g, s, i, m, jax.random.key(1), config=config, eos_id=2, pad_id=0, group=2))(
                   (params, buffers), ids, mask) for path in graphdefs}
        np.testing.assert_array_equal(out["chunked"].tokens, out["full"].tokens)
        np.testing.assert_allclose(out["chunked"].log_probs, out["full"].log_probs, atol=TOLERANCE)


def test_config_key_and_errors():
    cfg = from_dict(RunConfig, {"model": {"logits": "chunked", "logits_chunk_size": 256}})
    assert (cfg.model.logits, cfg.model.logits_chunk_size) == ("chunked", 256)
    assert ModelConfig().logits == "full"
    with pytest.raises(ConfigError, match=r"model\.logits: 'sliced' is not one of \['full', 'chunked'\]"):
        from_dict(RunConfig, {"model": {"logits": "sliced"}})
    with pytest.raises(ConfigError, match="logits_chunk_size must be >= 1, got 0"):
        from_dict(RunConfig, {"model": {"logits_chunk_size": 0}})
    with pytest.raises(ValueError, match="model.logits must be one of full, chunked"):
        set_logits_path(nnx.Module(), "sliced")


@pytest.mark.slow
def test_plan_takes_the_logits_path():
    """`jaxrlhf plan --logits chunked` compiles the learner's functions on the chunked path: with a
    big vocabulary the PPO iteration's temporaries drop by more than the full path's [B, T, V]
    float32 logits of one forward (make_experience alone runs two: actor and reference)."""
    from jaxrlhf.models import LlamaConfig
    from jaxrlhf.plan import plan_ppo_iteration
    from jaxrlhf.sharding import MeshConfig, make_mesh

    arch = LlamaConfig(vocab_size=32768, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    sizes = dict(batch=4, prompt=32, new_tokens=32)
    full = plan_ppo_iteration(arch, mesh, **sizes, logits=("full", 512))
    chunked = plan_ppo_iteration(arch, mesh, **sizes, logits=("chunked", 16))
    logits_bytes = 4 * (32 + 32) * 32768 * 4
    assert full.argument_bytes == chunked.argument_bytes
    assert full.temp_bytes - chunked.temp_bytes > logits_bytes, (full.temp_bytes, chunked.temp_bytes, logits_bytes)
