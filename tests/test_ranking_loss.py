"""ranking_loss against a brute-force loop over pairs; K=2 is Bradley-Terry; ties are safe."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.losses import ranking_loss


def brute_force(rewards, scores, mask, margin=0.0):
    prompt_losses, correct, pairs_seen = [], 0, 0
    for r, s, m in zip(rewards, scores, mask):
        terms = []
        for w, l in itertools.permutations(range(len(r)), 2):
            if m[w] and m[l] and s[w] > s[l]:
                terms.append(-math.log(1.0 / (1.0 + math.exp(-(r[w] - r[l] - margin)))))
                correct += r[w] > r[l]
                pairs_seen += 1
        if terms:
            prompt_losses.append(sum(terms) / len(terms))
    loss = sum(prompt_losses) / len(prompt_losses) if prompt_losses else 0.0
    return loss, correct / max(pairs_seen, 1), pairs_seen


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_matches_brute_force_with_ties_and_masks(seed, margin):
    rng = np.random.default_rng(seed)
    b, k = 6, 9
    rewards = rng.normal(size=(b, k)).astype(np.float64)
    scores = rng.integers(0, 4, size=(b, k)).astype(np.float64)  # many ties
    mask = rng.random((b, k)) > 0.25
    mask[0] = False
    mask[0, :2] = True
    scores[1] = 2.0  # a prompt with only ties: no pairs
    loss, metrics = ranking_loss(jnp.asarray(rewards, jnp.float32), jnp.asarray(scores),
                                 jnp.asarray(mask), margin=margin)
    ref_loss, ref_acc, ref_pairs = brute_force(rewards.astype(np.float32), scores, mask, margin)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(metrics["pair_accuracy"]), ref_acc, atol=1e-6)
    assert int(metrics["pair_count"]) == ref_pairs


def test_k9_has_36_pairs_per_prompt():
    rewards = jnp.zeros((2, 9))
    scores = jnp.tile(jnp.arange(9.0), (2, 1))
    _, metrics = ranking_loss(rewards, scores, jnp.ones((2, 9), bool))
    assert int(metrics["pair_count"]) == 2 * 36


def test_k2_is_bradley_terry():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=8), rng.normal(size=8)
    rewards = jnp.asarray(np.stack([chosen, rejected], 1), jnp.float32)
    scores = jnp.asarray([[1.0, 0.0]] * 8)
    loss, _ = ranking_loss(rewards, scores, jnp.ones((8, 2), bool))
    bt = np.mean(np.log1p(np.exp(-(chosen - rejected))))
    np.testing.assert_allclose(float(loss), bt, rtol=1e-6)


@pytest.mark.slow
def test_all_ties_give_zero_loss_and_finite_grads():
    scores = jnp.ones((3, 4))
    mask = jnp.ones((3, 4), bool)
    grad_fn = jax.grad(lambda r: ranking_loss(r, scores, mask)[0])
    rewards = jnp.array(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    assert float(ranking_loss(rewards, scores, mask)[0]) == 0.0
    grads = grad_fn(rewards)
    assert np.isfinite(np.asarray(grads)).all() and not np.asarray(grads).any()


@pytest.mark.slow
def test_masked_slots_do_not_leak_even_if_not_finite():
    rewards = jnp.array([[1.0, 0.0, jnp.nan]])
    scores = jnp.array([[2.0, 1.0, 5.0]])
    mask = jnp.array([[True, True, False]])
    loss, metrics = ranking_loss(rewards, scores, mask)
    np.testing.assert_allclose(float(loss), np.log1p(np.exp(-1.0)), rtol=1e-6)
    grads = jax.grad(lambda r: ranking_loss(r, scores, mask)[0])(rewards)
    assert np.isfinite(np.asarray(grads)).all()
    assert float(metrics["top1_accuracy"]) == 1.0


def test_top1_accuracy_and_margin():
    rewards = jnp.array([[0.1, 0.9, 0.5], [2.0, 1.0, 0.0]])
    scores = jnp.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    _, m = ranking_loss(rewards, scores, jnp.ones((2, 3), bool))
    assert float(m["top1_accuracy"]) == 0.0
    # prompt 0: pairs (0,1) -0.8, (0,2) -0.4, (1,2) +0.4; prompt 1: -1, -2, -1
    np.testing.assert_allclose(float(m["margin"]), (-0.8 - 0.4 + 0.4 - 1 - 2 - 1) / 6, rtol=1e-5)
    np.testing.assert_allclose(float(m["pair_accuracy"]), 1 / 6, rtol=1e-6)


def test_center_term():
    rewards = jnp.array([[1.0, -1.0]])
    scores = jnp.array([[1.0, 0.0]])
    base, _ = ranking_loss(rewards, scores, jnp.ones((1, 2), bool))
    centred, _ = ranking_loss(rewards, scores, jnp.ones((1, 2), bool), center_coef=0.01)
    np.testing.assert_allclose(float(centred - base), 0.01 * 1.0, rtol=1e-6)
