"""DPO steps: the policy against a frozen reference on (chosen, rejected) pairs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.losses import dpo_loss
from jaxrlhf.models.logits_path import token_log_probs
from jaxrlhf.steps.common import TrainState, accumulate, apply_gradients


def pair_log_probs(params, buffers, graphdef, batch: dict, *, average: bool = False) -> jax.Array:
    """Log-prob of each side's response tokens: [b, 2] from ONE forward over b*2 sequences.

    batch: input_ids, attention_mask, loss_mask [b, 2, T]. ``average``: divide by the
    number of response tokens (IPO).
    """
    b, two, t = batch["input_ids"].shape
    flat = lambda x: x.reshape(b * two, t)
    model = nnx.merge(graphdef, params, buffers)
    mask = flat(batch["loss_mask"]).astype(jnp.float32).at[:, 0].set(0.0)
    # by the model's logits path (model.logits)
    total = (token_log_probs(model, flat(batch["input_ids"]), flat(batch["attention_mask"])) * mask).sum(-1)
    if average:
        total = total / jnp.maximum(mask.sum(-1), 1.0)
    return total.reshape(b, two)


def reference_log_probs(ref_params, ref_buffers, graphdef, batch, *, average: bool) -> jax.Array:
    """The frozen reference's pair log-probs (no gradient flows to it)."""
    ref_params = jax.lax.stop_gradient(ref_params)
    return pair_log_probs(ref_params, ref_buffers, graphdef, batch, average=average)


def dpo_loss_fn(params, buffers, reference, micro_batch, *, graphdef, beta, loss_type,
                label_smoothing, pair_count):
    average = loss_type == "ipo"
    policy = pair_log_probs(params, buffers, graphdef, micro_batch, average=average)
    if "ref_logps" in micro_batch:  # precomputed once for the dataset
        ref = micro_batch["ref_logps"]
    else:
        ref = reference_log_probs(*reference, graphdef, micro_batch, average=average)
    _, m = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=beta,
                    loss_type=loss_type, label_smoothing=label_smoothing)
    return m["loss_sum"] / pair_count, m


def summarize(aux: dict) -> dict:
    n = jnp.maximum(aux["pair_count"], 1.0)
    return {"loss": aux["loss_sum"] / n, "reward_accuracy": aux["correct"] / n,
            "chosen_reward": aux["chosen_reward_sum"] / n,
            "rejected_reward": aux["rejected_reward_sum"] / n, "margin": aux["margin_sum"] / n}


def dpo_train_step(state: TrainState, reference: tuple, batch: dict, *, graphdef: nnx.GraphDef,
                   tx: optax.GradientTransformation, beta: float = 0.1, loss_type: str = "sigmoid",
                   label_smoothing: float = 0.0) -> tuple[TrainState, dict]:
    """One update. reference: (params, buffers) of the frozen reference policy, a separate
    argument from the trained state. batch: input_ids, attention_mask, loss_mask
    [A, b, 2, T] (and optionally ref_logps [A, b, 2])."""
    pairs = jnp.asarray(batch["input_ids"].shape[0] * batch["input_ids"].shape[1], jnp.float32)
    loss_fn = functools.partial(dpo_loss_fn, buffers=state.buffers, reference=reference,
                                graphdef=graphdef, beta=beta, loss_type=loss_type,
                                label_smoothing=label_smoothing, pair_count=pairs)
    grads, aux = accumulate(lambda p, mb: loss_fn(p, micro_batch=mb), state.params, batch)
    state, update_metrics = apply_gradients(state, grads, aux["loss"], tx)
    # input_tokens: real tokens through the policy (the trainer logs tokens_per_second from it)
    return state, {**summarize(aux), "input_tokens": jnp.sum(batch["attention_mask"]), **update_metrics}


def dpo_eval_step(state: TrainState, reference: tuple, batch: dict, *, graphdef: nnx.GraphDef,
                  beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> dict:
    """Summed loss terms over an eval batch [A, b, 2, T]; all-padding rows (no real tokens)
    are left out."""
    def one(micro_batch):
        average = loss_type == "ipo"
        policy = pair_log_probs(state.params, state.buffers, graphdef, micro_batch, average=average)
        ref = (micro_batch["ref_logps"] if "ref_logps" in micro_batch
               else reference_log_probs(*reference, graphdef, micro_batch, average=average))
        valid = micro_batch["attention_mask"].sum(axis=(1, 2)) > 0
        return dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=beta,
                        loss_type=loss_type, label_smoothing=label_smoothing, weights=valid)[1]
    return jax.tree.map(lambda x: x.sum(0), jax.lax.map(one, batch))
