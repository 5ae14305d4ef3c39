"""SFT token loss and DPO losses against plain numpy references."""

import numpy as np
import pytest
from scipy.special import log_softmax

from jaxrlhf.losses import dpo_loss, sft_loss, token_log_probs


def test_token_log_probs_and_sft_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1]])
    lp = np.asarray(token_log_probs(logits, ids, temperature=0.7))
    ref = np.zeros((2, 5))
    for b in range(2):
        for t in range(1, 5):
            ref[b, t] = log_softmax(logits[b, t - 1] / 0.7)[ids[b, t]]
    np.testing.assert_allclose(lp, ref, atol=1e-5)
    loss, m = sft_loss(logits, ids, mask)
    full = np.asarray(token_log_probs(logits, ids))
    counted = mask.copy()
    counted[:, 0] = 0  # position 0 is never a target
    np.testing.assert_allclose(float(loss), -(full * counted).sum() / counted.sum(), rtol=1e-6)
    assert float(m["token_count"]) == counted.sum()


def np_dpo(pc, pr, rc, rr, beta, loss_type, eps):
    h = (pc - pr) - (rc - rr)
    logsig = lambda x: -np.log1p(np.exp(-x))
    if loss_type == "sigmoid":
        losses = -(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = np.maximum(0, 1 - beta * h)
    return losses.mean()


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_losses_match_numpy(loss_type, beta, eps):
    rng = np.random.default_rng(1)
    pc, pr, rc, rr = (rng.normal(size=16) * 5 - 20 for _ in range(4))
    if loss_type != "sigmoid" and eps:
        eps = 0.0  # label smoothing only applies to the sigmoid loss
    loss, m = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    np.testing.assert_allclose(float(loss), np_dpo(pc, pr, rc, rr, beta, loss_type, eps), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(m["chosen_reward_sum"]), beta * (pc - rc).sum(), rtol=1e-5)
    assert float(m["correct"]) == np.sum(beta * (pc - rc) > beta * (pr - rr))


def test_unknown_dpo_loss_type():
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss(np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1), loss_type="kto")
