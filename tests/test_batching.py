"""Batches cut to their longest row and grouped by length: same losses, less padding, exact resume."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from rm_fixtures import char_tokenizer, copy_pairs, ranked_rows, tiny_model_folder
from jaxrlhf.data import (RankedArrays, RankedExample, iterate_batches, length_grouped_order, row_lengths,
                          tokenize_pairs, tokenize_ranked, trim_padding)
from jaxrlhf.loop import TrainConfig
from jaxrlhf.models import from_pretrained, reward_model_from_pretrained
from jaxrlhf.stages.common import stack_micro_batches
from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer
from jaxrlhf.steps.dpo import dpo_train_step
from jaxrlhf.steps.rm import rm_train_step


def ranked_with_lengths(lengths, k=2, t=32) -> RankedArrays:
    """Row i: K sequences, the longest with lengths[i] real tokens (ids = row number)."""
    n = len(lengths)
    mask = np.zeros((n, k, t), np.int32)
    for i, length in enumerate(lengths):
        mask[i, 0, :length] = 1
        mask[i, 1:, :max(length // 2, 1)] = 1
    ids = np.where(mask == 1, np.arange(n)[:, None, None] + 1, 0).astype(np.int32)
    return RankedArrays(ids, mask, np.tile(np.arange(k, 0, -1, dtype=np.float32), (n, 1)), np.ones((n, k), bool))


def test_row_lengths_take_the_longest_sequence_of_a_row():
    mask = np.zeros((3, 2, 10), np.int32)
    mask[0, 0, :4], mask[0, 1, :7] = 1, 1
    mask[1, 1, :10] = 1
    assert row_lengths(mask).tolist() == [7, 10, 0]  # row 2 has no real token
    assert row_lengths(mask[:, 0]).tolist() == [4, 0, 0]  # [N, T] rows as well


def test_trim_padding_cuts_token_arrays_to_a_multiple():
    data = ranked_with_lengths([5, 11, 3])
    batch = trim_padding(data.as_dict(), 8)
    assert batch["input_ids"].shape == (3, 2, 16) and batch["attention_mask"].shape == (3, 2, 16)
    assert batch["scores"].shape == (3, 2) and batch["slot_mask"].shape == (3, 2)  # not token arrays
    assert batch["attention_mask"].sum() == data.attention_mask.sum()  # no real token lost
    assert trim_padding(data.as_dict(), 64)["input_ids"].shape[-1] == 32  # never wider than stored
    short = trim_padding(ranked_with_lengths([1, 2]).as_dict(), 8)
    assert short["input_ids"].shape[-1] == 8  # at least one multiple
    left = np.zeros((2, 12), np.int32)
    left[:, 9:] = 1  # left-padded prompts end at the full width: nothing to cut
    assert trim_padding({"input_ids": left, "attention_mask": left}, 4)["input_ids"].shape == (2, 12)
    with pytest.raises(ValueError, match="multiple"):
        trim_padding(data.as_dict(), 0)


def test_length_grouped_order_is_a_deterministic_permutation_of_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1003)
    order = length_grouped_order(lengths, 8, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(1003))
    assert np.array_equal(order, length_grouped_order(lengths, 8, seed=3, epoch=1))
    assert not np.array_equal(order, length_grouped_order(lengths, 8, seed=3, epoch=2))
    blocks = lengths[order[:1000]].reshape(125, 8)
    random_blocks = lengths[np.random.default_rng(1).permutation(1003)[:1000]].reshape(125, 8)
    # a window of 50 batches sorted by length: a batch's longest row is close to its mean
    assert (blocks.max(1) - blocks.min(1)).mean() < 0.2 * (random_blocks.max(1) - random_blocks.min(1)).mean()
    # the batches are shuffled, not served longest first
    assert abs(np.corrcoef(np.arange(125), blocks.max(1))[0, 1]) < 0.5


def test_grouped_batches_resume_exactly_and_lose_no_row():
    lengths = np.random.default_rng(5).integers(1, 33, size=43)
    data = ranked_with_lengths(lengths)
    kwargs = dict(seed=7, epoch=1, group_by_length=True, pad_to_multiple=8)
    full = list(iterate_batches(data, 4, **kwargs))
    assert [b for b, _ in full] == list(range(10))
    rows = np.concatenate([batch["input_ids"][:, 0, 0] - 1 for _, batch in full])
    assert len(set(rows.tolist())) == 40  # drop_last leaves 3 of 43 out, no row twice
    for _, batch in full:  # each batch cut to the multiple of 8 that holds its longest row
        assert batch["input_ids"].shape[-1] == max(8, -(-lengths[batch["input_ids"][:, 0, 0] - 1].max() // 8) * 8)
    padded = sum(b["input_ids"].size for _, b in full)
    assert padded < 0.75 * 40 * 2 * 32  # far less than the stored width
    resumed = list(iterate_batches(data, 4, start_batch=6, **kwargs))
    for (b1, x), (b2, y) in zip(full[6:], resumed, strict=True):
        assert b1 == b2 and all(np.array_equal(x[k], y[k]) for k in x)
    with pytest.raises(ValueError, match="shuffle"):
        list(iterate_batches(data, 4, seed=0, epoch=0, shuffle=False, group_by_length=True))


def test_train_config_checks_the_cut():
    assert TrainConfig(pad_to_multiple=32, group_by_length=True).group_by_length
    with pytest.raises(ValueError, match="pad_to_multiple"):
        TrainConfig(group_by_length=True)
    with pytest.raises(ValueError, match="pad_to_multiple"):
        TrainConfig(pad_to_multiple=-1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("batching") / "model")


def two_steps(step, params, buffers, tx, batch, *extra):
    state = init_train_state(params, buffers, tx, 0)
    jitted = jax.jit(step)
    losses = []
    for _ in range(2):
        state, metrics = jitted(state, *extra, stack_micro_batches(batch, 2))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state.params), losses


def assert_cut_changes_nothing(run, batch):
    """The same two steps on a batch stored 48 wide and on the batch cut to a multiple of 8.

    Only the reduction order differs; Adam turns that noise on near-zero gradients into steps
    of up to the learning rate (1e-3), which bounds the parameter difference we can expect.
    What we see is a few float32 ulps: atol covers parameters near zero, rtol (16 ulps) the
    norm weights near 1 (measured on one 2-core CPU: 1.19e-6 = 10 ulps at 1.043). A masking
    or padding bug moves the losses and parameters by orders of magnitude more."""
    cut = trim_padding(batch, 8)
    assert cut["input_ids"].shape[-1] < batch["input_ids"].shape[-1]
    wide_params, wide_losses = run(batch)
    cut_params, cut_losses = run(cut)
    np.testing.assert_allclose(wide_losses, cut_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6), wide_params,
                 cut_params)


@pytest.mark.slow
def test_cut_rm_batch_gives_the_same_steps(model_dir):
    examples = [RankedExample(r["prompt"], tuple(x[0] for x in r["response"]), tuple(map(float, r["score"])),
                              "mem", i + 1) for i, r in enumerate(ranked_rows(8, k=3, seed=2))]
    batch = tokenize_ranked(examples, char_tokenizer(), max_length=48, num_slots=3).as_dict()
    model = reward_model_from_pretrained(model_dir, seed=0)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=0), 10)
    step = functools.partial(rm_train_step, graphdef=graphdef, tx=tx, margin=0.0, center_coef=0.01)
    assert_cut_changes_nothing(lambda b: two_steps(step, params, buffers, tx, b), batch)


@pytest.mark.slow
def test_cut_dpo_batch_gives_the_same_steps(model_dir):
    pairs = [RankedExample(r["prompt"], (r["chosen"], r["rejected"]), (1.0, 0.0), "mem", i)
             for i, r in enumerate(copy_pairs(8))]
    batch = tokenize_pairs(pairs, char_tokenizer(), max_length=48).as_dict()
    graphdef, params, buffers = nnx.split(from_pretrained(model_dir), nnx.Param, ...)
    _, ref_params, ref_buffers = nnx.split(from_pretrained(model_dir), nnx.Param, ...)
    tx = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=0), 10)
    step = functools.partial(dpo_train_step, graphdef=graphdef, tx=tx, beta=0.5)
    assert_cut_changes_nothing(lambda b: two_steps(step, params, buffers, tx, b, (ref_params, ref_buffers)),
                               batch)
