"""Each advantage estimator against a numpy reference (ties, all-equal groups, masked tokens),
the loss aggregations, and the algorithm config's validation."""

import numpy as np
import pytest

from jaxrlhf.algorithms import ADVANTAGES, AlgorithmConfig, KLConfig, SelectionConfig, aggregate, token_rewards
from jaxrlhf.algorithms.advantages import GROUP_STD_EPS, compute_advantages
from jaxrlhf.config import ModelConfig
from jaxrlhf.rewards import RewardSource
from jaxrlhf.stages.rl import RLConfig, RLTrainConfig


def np_whiten(x, mask):
    valid = x[mask > 0]
    return np.where(mask > 0, (x - valid.mean()) / np.sqrt(valid.var() + 1e-8), 0.0)


def np_returns(rewards, mask, gamma):
    out = np.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        running = 0.0
        for j in reversed(range(rewards.shape[1])):
            running = (rewards[i, j] + gamma * running) * mask[i, j]
            out[i, j] = running
    return out


def np_baseline(name, scores, g):
    groups = scores.reshape(-1, g)
    if name == "grpo":  # population std, as tunix
        return ((groups - groups.mean(1, keepdims=True)) / (groups.std(1, keepdims=True) + GROUP_STD_EPS)).ravel()
    if name == "dr_grpo":
        return (groups - groups.mean(1, keepdims=True)).ravel()
    if name == "rloo":
        return (groups - (groups.sum(1, keepdims=True) - groups) / (g - 1)).ravel()
    return scores


def np_advantages(name, scores, kl, mask, finished, *, beta, gamma, whiten, placement, eos_penalty=-1.0):
    """The estimators' definition written out in numpy (critic-free ones)."""
    scores = np.where(finished, scores, scores + eos_penalty)
    b = np_baseline(name, scores, 4)
    rewards = np.zeros_like(kl)
    for i in range(len(b)):
        last = np.nonzero(mask[i])[0].max()
        rewards[i, last] = b[i]
    if placement == "reward":
        rewards = rewards - beta * kl * mask
    adv = np_returns(rewards, mask, gamma)
    return np_whiten(adv, mask) if whiten or name == "reinforce_pp" else adv


def batch(seed):
    rng = np.random.default_rng(seed)
    b, n = 12, 6  # three prompts x four answers
    scores = rng.integers(0, 3, size=b).astype(np.float32)  # many ties
    scores[8:] = 0.5  # the third prompt's answers all score alike
    lengths = rng.integers(1, n + 1, size=b)
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
    kl = rng.normal(size=(b, n)).astype(np.float32) * mask
    finished = rng.random(b) > 0.3
    return scores, kl, mask, finished


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
@pytest.mark.parametrize("placement, whiten", [("reward", True), ("loss", False), ("none", True)])
def test_critic_free_estimators_equal_numpy(seed, name, placement, whiten):
    scores, kl, mask, finished = batch(seed)
    algo = AlgorithmConfig(advantage=name, whiten_advantages=whiten, gamma=0.97,
                           kl=KLConfig(placement=placement, coef=0.1))
    rewards, baselined = token_rewards(scores, kl, mask, finished, np.float32(0.1), algo, 4)
    adv, returns = compute_advantages(rewards, None, mask, algo)
    expected = np_advantages(name, scores, kl, mask, finished, beta=0.1, gamma=0.97, whiten=whiten,
                             placement=placement)
    np.testing.assert_allclose(np.asarray(adv), expected, atol=2e-5)
    assert np.isfinite(np.asarray(adv)).all()
    if name != "reinforce_pp":  # a group baseline: every prompt's answers sum to zero
        np.testing.assert_allclose(np.asarray(baselined).reshape(3, 4).sum(1), 0.0, atol=1e-5)
    assert np.all(np.asarray(adv)[mask == 0] == 0)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_a_group_whose_scores_are_all_equal_gets_zero_advantages(name):
    scores = np.full(8, 0.7, np.float32)
    mask = np.ones((8, 3), np.float32)
    algo = AlgorithmConfig(advantage=name, whiten_advantages=False, missing_eos_penalty=None,
                           kl=KLConfig(placement="none"))
    rewards, baselined = token_rewards(scores, np.zeros_like(mask), mask, np.ones(8, bool), np.float32(0.0), algo, 4)
    adv, _ = compute_advantages(rewards, None, mask, algo)
    np.testing.assert_array_equal(np.asarray(baselined), 0.0)
    np.testing.assert_array_equal(np.asarray(adv), 0.0)


def test_gae_uses_the_critic_and_the_others_do_not():
    assert ADVANTAGES["gae"].needs_critic and not any(ADVANTAGES[n].needs_critic for n in ADVANTAGES if n != "gae")
    rng = np.random.default_rng(0)
    mask = np.ones((2, 4), np.float32)
    rewards = rng.normal(size=(2, 4)).astype(np.float32)
    values = rng.normal(size=(2, 4)).astype(np.float32)
    algo = AlgorithmConfig(advantage="gae", whiten_advantages=False, gamma=1.0, lam=1.0)
    adv, returns = compute_advantages(rewards, values, mask, algo)
    # lambda 1: advantage = return-to-go - value
    np.testing.assert_allclose(np.asarray(adv), np_returns(rewards, mask, 1.0) - values, atol=1e-5)


def test_loss_aggregations_equal_numpy():
    rng = np.random.default_rng(1)
    losses = rng.normal(size=(3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.float32)
    token_mean = (losses * mask).sum() / mask.sum()
    per_answer = (losses * mask).sum(1)
    np.testing.assert_allclose(float(aggregate(losses, mask, "token_mean")), token_mean, rtol=1e-6)
    # sequence_mean: rows with no tokens do not count
    np.testing.assert_allclose(float(aggregate(losses, mask, "sequence_mean")),
                               np.mean(per_answer[:2] / mask.sum(1)[:2]), rtol=1e-6)
    # sequence_sum (Dr. GRPO): divided by the constant N, not each answer's length
    np.testing.assert_allclose(float(aggregate(losses, mask, "sequence_sum")), np.mean(per_answer / 5), rtol=1e-6)


def test_algorithm_config_names_its_choices():
    for bad, message in ((dict(advantage="ppo2"), "advantage must be one of"),
                         (dict(loss_aggregation="mean"), "loss_aggregation must be one of")):
        with pytest.raises(ValueError, match=message):
            AlgorithmConfig(**bad)
    with pytest.raises(ValueError, match="kl.target"):
        KLConfig(placement="loss", target=6.0)
    with pytest.raises(ValueError, match="selection.keep must be even"):
        SelectionConfig(kind="max_variance", keep=3)


def rl_config(**kwargs):
    return RLConfig(model=ModelConfig(path="m"), rewards=(RewardSource(kind="model", path="rm"),), **kwargs)


def test_rl_config_checks_the_group_and_the_trained_answers():
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        rl_config(algorithm=AlgorithmConfig(advantage="grpo"), train=RLTrainConfig(samples_per_prompt=1))
    with pytest.raises(ValueError, match="selection.keep"):
        rl_config(algorithm=AlgorithmConfig(advantage="rloo", selection=SelectionConfig("max_variance", 8)),
                  train=RLTrainConfig(batch_size=64, samples_per_prompt=8))
    with pytest.raises(ValueError, match="not a multiple of algorithm.minibatches"):  # 3 prompts x 2 kept = 6
        rl_config(algorithm=AlgorithmConfig(advantage="rloo", selection=SelectionConfig("max_variance", 2),
                                            minibatches=4), train=RLTrainConfig(batch_size=24, samples_per_prompt=8))
    cfg = rl_config(algorithm=AlgorithmConfig(advantage="rloo", selection=SelectionConfig("max_variance", 4),
                                              minibatches=2), train=RLTrainConfig(batch_size=64, samples_per_prompt=8))
    assert cfg.trained_per_prompt == 4 and cfg.trained_per_iteration == 32
