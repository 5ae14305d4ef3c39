"""Reward-model steps: one forward per response, all pairs from the [B, K] reward matrix."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.losses import ranking_loss, ranking_pairs
from jaxrlhf.steps.common import TrainState, accumulate, apply_gradients


def score_responses(params: nnx.State, buffers: nnx.State, graphdef: nnx.GraphDef,
                    input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Rewards [B, K] for B prompts x K responses: ONE forward over B*K sequences.

    input_ids, attention_mask: [B, K, T].
    """
    b, k, t = input_ids.shape
    model = nnx.merge(graphdef, params, buffers)
    rewards = model(input_ids.reshape(b * k, t), attention_mask.reshape(b * k, t))  # [B*K]
    return rewards.reshape(b, k)


def batch_counts(scores: jax.Array, slot_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prompts with at least one pair, and valid responses, over a whole [A, b, K] batch.

    Known before any forward pass, so micro-batch losses can be normalised by them and
    summed into the exact whole-batch gradient.
    """
    a, b, k = scores.shape
    pairs = ranking_pairs(scores.reshape(a * b, k), slot_mask.reshape(a * b, k).astype(bool))
    prompts = jnp.maximum(pairs.any(axis=(1, 2)).sum(), 1).astype(jnp.float32)
    responses = jnp.maximum(slot_mask.sum(), 1).astype(jnp.float32)
    return prompts, responses


def rm_loss(params, buffers, micro_batch, *, graphdef, margin: float, center_coef: float,
            prompt_count, response_count):
    rewards = score_responses(params, buffers, graphdef, micro_batch["input_ids"],
                              micro_batch["attention_mask"])
    _, metrics = ranking_loss(rewards, micro_batch["scores"], micro_batch["slot_mask"], margin=margin)
    loss = metrics["loss_sum"] / prompt_count
    if center_coef:
        loss = loss + center_coef * metrics["reward_sq_sum"] / response_count
    reward_sum = jnp.sum(jnp.where(micro_batch["slot_mask"], rewards, 0.0))
    aux = {k: metrics[k] for k in ("pair_correct", "pair_count", "margin_sum", "top1_correct",
                                   "top1_count", "reward_sq_sum", "reward_count")}
    return loss, dict(aux, reward_sum=reward_sum)


def summarize(aux: dict) -> dict:
    """Means from the summed counts of :func:`rm_loss`'s aux."""
    n = jnp.maximum(aux["reward_count"], 1)
    mean = aux["reward_sum"] / n
    return {
        "loss": aux["loss"],
        "pair_accuracy": aux["pair_correct"] / jnp.maximum(aux["pair_count"], 1),
        "top1_accuracy": aux["top1_correct"] / jnp.maximum(aux["top1_count"], 1),
        "margin": aux["margin_sum"] / jnp.maximum(aux["pair_count"], 1),
        "reward_mean": mean,
        "reward_std": jnp.sqrt(jnp.maximum(aux["reward_sq_sum"] / n - mean ** 2, 0.0)),
        "pairs": aux["pair_count"],
    }


def rm_train_step(state: TrainState, batch: dict, *, graphdef: nnx.GraphDef,
                  tx: optax.GradientTransformation, margin: float = 0.0,
                  center_coef: float = 0.0) -> tuple[TrainState, dict]:
    """One optimizer update on a batch of ranked responses.

    batch: input_ids, attention_mask [A, b, K, T]; scores [A, b, K]; slot_mask [A, b, K]
    (A micro-batches of b prompts, accumulated exactly).
    """
    prompts, responses = batch_counts(batch["scores"], batch["slot_mask"])
    loss_fn = functools.partial(rm_loss, buffers=state.buffers, graphdef=graphdef, margin=margin,
                                center_coef=center_coef, prompt_count=prompts,
                                response_count=responses)
    grads, aux = accumulate(lambda p, mb: loss_fn(p, micro_batch=mb), state.params, batch)
    state, update_metrics = apply_gradients(state, grads, aux["loss"], tx)
    metrics = summarize(aux)
    metrics.update(update_metrics)
    metrics["input_tokens"] = jnp.sum(batch["attention_mask"])  # the trainer logs tokens_per_second from it
    return state, metrics


def rm_eval_step(state: TrainState, batch: dict, *, graphdef: nnx.GraphDef, margin: float = 0.0):
    """Summed loss terms and counts for one eval batch (the loop adds them up over the set)
    and the rewards [A, b, K] (for the reward normalisation)."""
    prompts, _ = batch_counts(batch["scores"], batch["slot_mask"])

    def one(micro_batch):
        rewards = score_responses(state.params, state.buffers, graphdef, micro_batch["input_ids"],
                                  micro_batch["attention_mask"])
        _, m = ranking_loss(rewards, micro_batch["scores"], micro_batch["slot_mask"], margin=margin)
        sums = {k: m[k] for k in ("loss_sum", "prompt_count", "pair_correct", "pair_count",
                                  "margin_sum", "top1_correct", "top1_count", "reward_sq_sum",
                                  "reward_count")}
        sums["reward_sum"] = jnp.sum(jnp.where(micro_batch["slot_mask"], rewards, 0.0))
        return sums, rewards

    sums, rewards = jax.lax.map(one, batch)
    return jax.tree.map(lambda x: x.sum(0), sums), rewards


def eval_summary(sums: dict) -> dict:
    out = summarize(dict(sums, loss=sums["loss_sum"] / jnp.maximum(sums["prompt_count"], 1)))
    return {k: float(v) for k, v in out.items()}
