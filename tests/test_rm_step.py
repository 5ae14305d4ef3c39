"""The jitted RM step: B*K forwards, exact accumulation, NaN guard, sharded == single device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rm_fixtures import char_tokenizer, ranked_rows, tiny_model_folder
from jaxrlhf.data import RankedExample, tokenize_ranked
from jaxrlhf.models import reward_model_from_pretrained
from jaxrlhf.models.heads import ScalarHeadModel
from jaxrlhf.sharding import MeshConfig, make_mesh
from jaxrlhf.stages.common import stack_micro_batches
from jaxrlhf.steps.common import (OptimConfig, batch_shardings, init_train_state, make_optimizer,
                                  train_state_shardings)
from jaxrlhf.steps.rm import rm_train_step


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tiny_model_folder(tmp_path_factory.mktemp("rm") / "model")
    tok = char_tokenizer()
    rows = ranked_rows(8, k=4, seed=1)
    examples = [RankedExample(r["prompt"], tuple(x[0] for x in r["response"]),
                              tuple(map(float, r["score"])), "mem", i + 1) for i, r in enumerate(rows)]
    arrays = tokenize_ranked(examples, tok, max_length=20, num_slots=4)
    arrays.slot_mask[0, 3] = False  # K varies: prompt 0 has 3 answers
    arrays.scores[1] = 1.0  # prompt 1 is all ties: no pairs
    return folder, arrays.as_dict()


def make_state(folder, mesh=None):
    model = reward_model_from_pretrained(folder, mesh=mesh, seed=0)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=0), total_steps=10)
    return graphdef, tx, init_train_state(params, buffers, tx, seed=0)


def run_steps(folder, batch, *, parts=1, mesh=None, steps=2):
    graphdef, tx, state = make_state(folder, mesh)
    step = functools.partial(rm_train_step, graphdef=graphdef, tx=tx, margin=0.1, center_coef=0.01)
    stacked = stack_micro_batches(batch, parts)
    if mesh is None:
        jitted = jax.jit(step, donate_argnums=0)
    else:
        shardings = train_state_shardings(state, mesh, tx)
        state = jax.device_put(state, shardings)
        batch_sh = batch_shardings(mesh, stacked)
        stacked = jax.device_put(stacked, batch_sh)
        jitted = jax.jit(step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                         donate_argnums=0)
    all_metrics = []
    for _ in range(steps):
        if mesh is None:
            state, metrics = jitted(state, stacked)
        else:
            with jax.set_mesh(mesh):
                state, metrics = jitted(state, stacked)
        all_metrics.append(jax.device_get(metrics))
    return jax.device_get(state.params), all_metrics


def test_one_forward_per_response(setup, monkeypatch):
    folder, batch = setup
    graphdef, tx, state = make_state(folder)
    calls = []
    original = ScalarHeadModel.__call__

    def counting(self, input_ids, attention_mask):
        calls.append(input_ids.shape)
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(ScalarHeadModel, "__call__", counting)
    jax.make_jaxpr(functools.partial(rm_train_step, graphdef=graphdef, tx=tx))(
        state, stack_micro_batches(batch, 1))
    b, k, t = batch["input_ids"].shape
    # traced once (inside the micro-batch scan), over all B*K sequences at once
    assert calls == [(b * k, t)]


@pytest.mark.slow
def test_accumulation_is_exact(setup):
    folder, batch = setup
    whole, m1 = run_steps(folder, batch, parts=1)
    accumulated, m4 = run_steps(folder, batch, parts=4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), whole, accumulated)
    np.testing.assert_allclose(m1[0]["loss"], m4[0]["loss"], rtol=1e-6)
    assert m1[0]["pairs"] == m4[0]["pairs"] == 6 * 6 + 3  # 6 prompts with K=4, one with K=3, one all tied


@pytest.mark.slow
def test_loss_falls(setup):
    folder, batch = setup
    _, metrics = run_steps(folder, batch, steps=5)
    assert metrics[-1]["loss"] < metrics[0]["loss"]


@pytest.mark.slow
def test_sharded_step_equals_single_device(setup):
    folder, batch = setup
    single, m_single = run_steps(folder, batch)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded, m_sharded = run_steps(folder, batch, mesh=mesh)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), single, sharded)
    for a, b in zip(m_single, m_sharded):
        np.testing.assert_allclose(a["loss"], b["loss"], atol=1e-5)


@pytest.mark.slow
def test_nonfinite_step_is_skipped(setup):
    folder, batch = setup
    graphdef, tx, state = make_state(folder)
    before = jax.device_get(state.params)
    poisoned = jax.tree.map(lambda x: x, state.params)
    poisoned["score"].set_value(poisoned["score"].get_value().at[0].set(jnp.nan))
    state = state.replace(params=poisoned)
    new_state, metrics = jax.jit(functools.partial(rm_train_step, graphdef=graphdef, tx=tx))(
        state, stack_micro_batches(batch, 1))
    assert float(metrics["skipped"]) == 1.0 and int(new_state.step) == 0
    after = jax.device_get(new_state.params)
    jax.tree.map(np.testing.assert_array_equal, after["backbone"], before["backbone"])
