"""GAE, PPO losses, KL estimators and the KL controller against numpy references."""

import numpy as np
import pytest

from jaxrlhf.losses import (compute_gae, kl_penalty, masked_whiten, ppo_policy_loss, ppo_value_loss)
from jaxrlhf.algorithms import AlgorithmConfig, token_rewards
from jaxrlhf.algorithms.advantages import leave_one_out_baseline
from jaxrlhf.steps.rl import adaptive_kl_coef, prefix_shaping


def shape_rewards(scores, log_probs, ref_log_probs, mask, finished, kl_coef, algo, dense=None, group_size=1):
    """Per-token rewards, per-token KL and baselined scores as make_experience forms them."""
    kl = kl_penalty(log_probs, ref_log_probs, algo.kl.estimator) * mask
    rewards, scores = token_rewards(scores, kl, mask, finished, kl_coef, algo, group_size, dense)
    return rewards, kl, scores


def random_masked(seed, b=4, t=7):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    return rng, mask


def np_gae(rewards, values, mask, gamma, lam):
    b, t = rewards.shape
    adv = np.zeros_like(rewards)
    for i in range(b):
        n = int(mask[i].sum())
        last = 0.0
        for j in reversed(range(n)):
            next_value = values[i, j + 1] if j + 1 < n else 0.0
            delta = rewards[i, j] + gamma * next_value - values[i, j]
            last = delta + gamma * lam * last
            adv[i, j] = last
    return adv, (adv + values) * mask


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.9)])
def test_gae_matches_numpy(seed, gamma, lam):
    rng, mask = random_masked(seed)
    rewards = rng.normal(size=mask.shape).astype(np.float32) * mask
    values = rng.normal(size=mask.shape).astype(np.float32)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = np_gae(rewards, values * mask, mask, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), ref_adv, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), ref_ret, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_policy_and_value_losses_match_numpy(seed):
    rng, mask = random_masked(seed)
    lp, old = (rng.normal(size=mask.shape).astype(np.float32) * 0.3 for _ in range(2))
    adv = rng.normal(size=mask.shape).astype(np.float32)
    loss, m = ppo_policy_loss(lp, old, adv, mask, clip=0.2)
    ratio = np.exp(lp - old)
    per = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2))
    np.testing.assert_allclose(float(loss), (per * mask).sum() / mask.sum(), atol=1e-6)
    clipped = (-adv * np.clip(ratio, 0.8, 1.2)) > (-adv * ratio)
    np.testing.assert_allclose(float(m["clip_fraction"]), (clipped * mask).sum() / mask.sum(), atol=1e-6)
    np.testing.assert_allclose(float(m["approx_kl"]), (0.5 * (lp - old) ** 2 * mask).sum() / mask.sum(), atol=1e-6)

    v, v_old, ret = (rng.normal(size=mask.shape).astype(np.float32) for _ in range(3))
    vloss, _ = ppo_value_loss(v, v_old, ret, mask, clip=0.2)
    vc = v_old + np.clip(v - v_old, -0.2, 0.2)
    ref = 0.5 * (np.maximum((v - ret) ** 2, (vc - ret) ** 2) * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(vloss), ref, atol=1e-6)


def test_kl_estimators_and_whitening():
    rng, mask = random_masked(0)
    lp, ref = (rng.normal(size=mask.shape).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(np.asarray(kl_penalty(lp, ref, "k1")), lp - ref, atol=1e-6)
    r = np.exp(ref - lp)
    np.testing.assert_allclose(np.asarray(kl_penalty(lp, ref, "k3")), (r - 1) - np.log(r), atol=1e-5)
    assert (np.asarray(kl_penalty(lp, ref, "k3")) >= -1e-7).all()
    w = np.asarray(masked_whiten(lp, mask))
    valid = mask.astype(bool)
    np.testing.assert_allclose([w[valid].mean(), w[valid].std()], [0.0, 1.0], atol=1e-4)
    assert not w[~valid].any()


def test_adaptive_kl_controller_formula():
    beta = np.float32(0.1)
    for kl, target in [(12.0, 6.0), (1.0, 6.0), (6.6, 6.0)]:
        expected = beta * (1 + np.clip(kl / target - 1, -0.2, 0.2) * 64 / 10000)
        got = adaptive_kl_coef(beta, np.float32(kl), target=target, horizon=10000, batch_size=64)
        np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    assert float(adaptive_kl_coef(beta, np.float32(50.0), target=None, horizon=1, batch_size=1)) == beta


def test_shaped_rewards_put_score_at_last_token_and_penalise_missing_eos():
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
    lp = np.full((2, 4), -1.0, np.float32)
    ref = np.full((2, 4), -1.5, np.float32)
    algo = AlgorithmConfig(missing_eos_penalty=-2.0)
    rewards, kl, scores = shape_rewards(np.array([1.0, 1.0]), lp, ref, mask, np.array([True, False]),
                                        np.float32(0.1), algo)
    expected = -0.1 * 0.5 * mask
    expected[0, 2] += 1.0
    expected[1, 3] += 1.0 - 2.0
    np.testing.assert_allclose(np.asarray(rewards), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(scores), [1.0, -1.0])


def test_prefix_shaping_pays_each_answer_token_its_change_in_score_and_sums_to_the_final_score():
    # potentials: [B, N + 1], the score of the first j response tokens
    phi = np.array([[0.1, 0.5, 0.9, 0.4, 7.0], [0.2, -0.3, 0.6, 0.8, 1.0]], np.float32)
    answer = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)  # row 0: 3 answer tokens, then EOS
    rewards = np.asarray(prefix_shaping(phi, answer))
    np.testing.assert_allclose(rewards[0], [0.4, 0.4, -0.5, 0.0], atol=1e-6)  # EOS earns nothing
    np.testing.assert_allclose(rewards.sum(axis=1), [0.4 - 0.1, 1.0 - 0.2], atol=1e-6)
    # return-to-go of token j = phi(answer) - phi(answer[:j]): how the answer did against stopping there
    to_go = np.cumsum(rewards[0, ::-1])[::-1]
    np.testing.assert_allclose(to_go[:3], 0.4 - phi[0, :3], atol=1e-6)
    # shape_rewards adds them on the trained tokens only, next to the KL and the terminal score
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.float32)  # row 0 trains from token 1 (branched)
    lp = np.zeros((2, 4), np.float32)
    algo = AlgorithmConfig(missing_eos_penalty=None)
    shaped, _, _ = shape_rewards(np.array([0.0, 2.0]), lp, lp, mask, np.ones(2, bool), np.float32(0.1), algo,
                                 rewards)
    expected = rewards * mask
    expected[1, 3] += 2.0
    np.testing.assert_allclose(np.asarray(shaped), expected, atol=1e-6)


def test_group_baseline_subtracts_the_mean_of_the_prompts_other_samples():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 0.0], np.float32)  # two prompts x three samples
    expected = [1 - 2.5, 2 - 2.0, 3 - 1.5, 4 - 0.0, 0 - 2.0, 0 - 2.0]
    np.testing.assert_allclose(np.asarray(leave_one_out_baseline(scores, 3)), expected, atol=1e-6)
    mask = np.ones((6, 2), np.float32)
    lp = np.zeros((6, 2), np.float32)
    algo = AlgorithmConfig(advantage="rloo", missing_eos_penalty=None)
    rewards, _, shaped = shape_rewards(scores, lp, lp, mask, np.ones(6, bool), np.float32(0.1), algo, group_size=3)
    np.testing.assert_allclose(np.asarray(shaped), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rewards)[:, 1], expected, atol=1e-6)
    # a prompt whose samples all score alike teaches nothing
    same = np.asarray(leave_one_out_baseline(np.full(4, 0.7, np.float32), 4))
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_max_variance_subset_keeps_each_prompts_best_and_worst_in_order():
    from jaxrlhf.steps.rl import max_variance_subset

    scores = np.array([0.1, 0.9, 0.5, 0.3,   2.0, -1.0, 0.0, 1.0], np.float32)  # two prompts x 4 samples
    np.testing.assert_array_equal(max_variance_subset(scores, 4, 2), [0, 1, 4, 5])
    # keep 2 of each side of 6: the two lowest and the two highest, original order within the prompt
    six = np.array([5, 0, 3, 1, 4, 2], np.float32)
    np.testing.assert_array_equal(max_variance_subset(six, 6, 4), [0, 1, 3, 4])
    kept = six[max_variance_subset(six, 6, 4)]
    assert kept.var() == max(six[list(c)].var() for c in __import__("itertools").combinations(range(6), 4))


def test_update_ema_averages_the_params_in_float32():
    import jax.numpy as jnp

    from jaxrlhf.steps.rl import update_ema

    rng = np.random.default_rng(0)
    ema = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.bfloat16), "b": jnp.ones(4, jnp.bfloat16)}
    new = update_ema(ema, params, 0.9)
    for k in ema:
        assert new[k].dtype == jnp.float32
        np.testing.assert_allclose(new[k], 0.9 * ema[k] + 0.1 * np.asarray(params[k], np.float32), rtol=1e-6)
    assert update_ema(None, params, 0.9) is None  # averaging off
