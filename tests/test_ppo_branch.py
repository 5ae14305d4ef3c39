"""Branched PPO rollouts (train.branch_at): prefix choice, the prompt + prefix rows the sampler
sees, the joined layout PPO trains on, and that the sampler's continuation log-probs are
the trainer's on that layout."""

import functools
import json

import jax
import numpy as np
import pytest
from flax import nnx

from rm_fixtures import copy_rows, tiny_model_folder, write_jsonl
from jaxrlhf.cli import main
from jaxrlhf.generate import SamplingConfig, generate
from jaxrlhf.losses import token_log_probs
from jaxrlhf.models import from_pretrained
from jaxrlhf.algorithms import AlgorithmConfig, token_rewards
from jaxrlhf.stages.rl import RLTrainConfig as PPOTrainConfig
from jaxrlhf.stages.ppo_branch import branch_points, branch_prompts, join_branches

PAD = 0


def test_branch_points_cut_inside_the_content_never_at_eos():
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    finished = np.array([True, False, True])  # row 0: 4 content tokens + EOS; row 2: EOS only
    for seed in range(20):
        cuts = branch_points(mask, finished, (0.5, 0.9), np.random.default_rng(seed))
        assert 2 <= cuts[0] <= 3 and 3 <= cuts[1] <= 5 and cuts[2] == 0
    a = branch_points(mask, finished, (0.0, 1.0), np.random.default_rng(7))
    np.testing.assert_array_equal(a, branch_points(mask, finished, (0.0, 1.0), np.random.default_rng(7)))


def test_branch_prompts_are_prompt_plus_prefix_left_padded():
    prompt = np.array([[PAD, 5, 6], [7, 8, 9]])
    first = np.array([[10, 11, 12, 2], [13, 14, PAD, PAD]])
    ids, mask = branch_prompts(prompt, (prompt != PAD).astype(np.int32), first, np.array([2, 0]), PAD)
    np.testing.assert_array_equal(ids, [[PAD, PAD, PAD, 5, 6, 10, 11], [PAD, PAD, PAD, PAD, 7, 8, 9]])
    np.testing.assert_array_equal(mask, (ids != PAD).astype(np.int32))


def test_join_branches_lays_out_prefix_then_continuation_and_trains_the_continuation_only():
    prefix = np.array([[10, 11, 12, 13], [10, 11, 12, 13]])
    cont = np.array([[20, 2, PAD, PAD], [21, 22, 23, 2]])
    cont_mask = (cont != PAD).astype(np.int32)
    lp = np.where(cont_mask, -0.5, 0.0).astype(np.float32)
    out = join_branches(prefix, np.array([2, 2]), cont, lp, cont_mask, np.array([True, True]), PAD)
    np.testing.assert_array_equal(out.tokens, [[10, 11, 20, 2], [10, 11, 21, 22]])
    np.testing.assert_array_equal(out.mask, [[1, 1, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(out.train_mask, [[0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(out.log_probs, [[0, 0, -0.5, -0.5], [0, 0, -0.5, -0.5]])
    # the second continuation did not fit in N = 4 tokens: cut, and it has no EOS any more
    np.testing.assert_array_equal(out.finished, [True, False])


def test_score_lands_on_the_last_trained_token_when_the_mask_starts_late():
    mask = np.array([[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]], np.int32)
    zeros = np.zeros((2, 5), np.float32)
    rewards, _ = token_rewards(np.array([1.0, 2.0]), zeros, mask, np.array([True, True]), np.float32(0.0),
                               AlgorithmConfig(), 1)
    np.testing.assert_allclose(np.asarray(rewards), [[0, 0, 0, 1, 0], [0, 0, 2, 0, 0]])


def test_branch_at_is_validated():
    with pytest.raises(ValueError, match="branch_at"):
        PPOTrainConfig(batch_size=8, samples_per_prompt=4, branch_at=(0.9, 0.5))
    with pytest.raises(ValueError, match="samples_per_prompt"):
        PPOTrainConfig(batch_size=8, samples_per_prompt=1, branch_at=(0.2, 0.8))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_branch")
    model = tiny_model_folder(root / "model")
    prompts = write_jsonl([{"prompt": r["prompt"]} for r in copy_rows(64)], root / "prompts.jsonl")
    return model, prompts


@pytest.mark.slow
def test_continuation_log_probs_are_the_trainers_on_the_joined_layout(setup):
    """The sampler continues ``prompt + prefix`` (left-padded to P + N); PPO trains on
    ``prompt (left-padded to P) + prefix + continuation``. Positions come from the mask, so
    the two layouts give the same log-probs."""
    model_dir, _ = setup
    model = from_pretrained(model_dir)
    graphdef, state = nnx.split(model)
    n, group = 10, 3
    sample = jax.jit(functools.partial(generate, graphdef, config=SamplingConfig(max_new_tokens=n), eos_id=2,
                                       pad_id=PAD))
    prompt = np.array([[PAD, PAD, 20, 21, 22], [PAD, 23, 24, 25, 26], [27, 28, 29, 30, 4]], np.int32)
    prompt_mask = (prompt != PAD).astype(np.int32)
    first = jax.device_get(sample(state, prompt, prompt_mask, jax.random.key(1)))
    cuts = branch_points(first.mask, first.finished, (0.3, 0.9), np.random.default_rng(0))
    ids, mask = branch_prompts(prompt, prompt_mask, first.tokens, cuts, PAD)
    cont = jax.device_get(sample(state, np.repeat(ids, group, 0), np.repeat(mask, group, 0), jax.random.key(2)))
    cuts = np.repeat(cuts, group)
    out = join_branches(np.repeat(first.tokens, group, 0), cuts, cont.tokens, cont.log_probs, cont.mask,
                        cont.finished, PAD)
    full = np.concatenate([np.repeat(prompt, group, 0), out.tokens], axis=1)
    full_mask = np.concatenate([np.repeat(prompt_mask, group, 0), out.mask], axis=1)
    recomputed = np.asarray(token_log_probs(model(full, full_mask).logits, full, 1.0))[:, prompt.shape[1]:]
    trained = out.train_mask.astype(bool)
    assert trained.sum() > 10 and (~trained & out.mask.astype(bool)).any()  # some prefix, some continuation
    np.testing.assert_allclose(out.log_probs[trained], recomputed[trained], atol=1e-5)
    # siblings share their prefix
    for i in range(0, len(cuts), group):
        k = cuts[i]
        assert (out.tokens[i:i + group, :k] == out.tokens[i, :k]).all()


@pytest.mark.slow
def test_branched_ppo_learns_a_rule_reward(setup, tmp_path):
    from test_ppo import ppo_yaml

    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=30,
                   extra="  samples_per_prompt: 4\n  branch_at: [0.2, 0.8]")
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    history = json.loads((tmp_path / "run" / "results.json").read_text())["history"]
    start = np.mean([h["score"] for h in history[:3]])
    end = np.mean([h["score"] for h in history[-5:]])
    assert start < 0.4 and end >= 0.75, (start, end)
    assert all("branch_prefix_length" in h for h in history)
    assert all(h["response_length"] >= h["branch_prefix_length"] for h in history)
