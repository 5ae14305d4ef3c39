"""Supervised fine-tuning steps: next-token loss on response tokens only."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.models.logits_path import sft_loss
from jaxrlhf.steps.common import TrainState, accumulate, apply_gradients


def trained_token_count(loss_mask: jax.Array) -> jax.Array:
    """Targets in a whole batch ([..., T]); position 0 of a row predicts nothing."""
    return jnp.maximum(loss_mask[..., 1:].sum(), 1).astype(jnp.float32)


def lm_sft_loss(params, buffers, graphdef, batch: dict) -> tuple[jax.Array, dict]:
    """``losses.sft_loss`` of one micro-batch [b, T] by the model's logits path (model.logits);
    rows may be packed (segment_ids isolate the examples)."""
    model = nnx.merge(graphdef, params, buffers)
    return sft_loss(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                    segment_ids=batch["segment_ids"])


def sft_loss_fn(params, buffers, micro_batch, *, graphdef, token_count):
    _, m = lm_sft_loss(params, buffers, graphdef, micro_batch)
    return m["nll_sum"] / token_count, m


def sft_train_step(state: TrainState, batch: dict, *, graphdef: nnx.GraphDef,
                   tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
    """One update. batch: input_ids, attention_mask, loss_mask, segment_ids [A, b, T].

    Each micro-batch's NLL sum is divided by the whole batch's target count, so the
    accumulated gradient is exactly that of the mean over all trained tokens.
    """
    count = trained_token_count(batch["loss_mask"])
    loss_fn = functools.partial(sft_loss_fn, buffers=state.buffers, graphdef=graphdef, token_count=count)
    grads, aux = accumulate(lambda p, mb: loss_fn(p, micro_batch=mb), state.params, batch)
    state, update_metrics = apply_gradients(state, grads, aux["loss"], tx)
    # input_tokens: real tokens forwarded (the trainer logs tokens_per_second from it)
    return state, {"loss": aux["loss"], "tokens": aux["token_count"], "input_tokens": jnp.sum(batch["attention_mask"]),
                   **update_metrics}


def sft_eval_step(state: TrainState, batch: dict, *, graphdef: nnx.GraphDef) -> dict:
    """Summed NLL and target count over an eval batch [A, b, T]."""
    def one(micro_batch):
        return lm_sft_loss(state.params, state.buffers, graphdef, micro_batch)[1]
    return jax.tree.map(lambda x: x.sum(0), jax.lax.map(one, batch))
