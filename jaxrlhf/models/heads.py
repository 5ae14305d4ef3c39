"""Scalar heads on a causal-LM backbone: the reward model (and, later, the PPO critic).

The reward model is the LM with its vocabulary head replaced by a linear map to one
number, read at the last real token of each sequence. This matches transformers'
``*ForSequenceClassification`` with ``num_labels=1`` (a bias-free ``score`` layer), so an
exported reward model scores the same in transformers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.base import CausalLM


class RewardNormalization(nnx.Variable):
    """Non-trainable ``gain``/``bias`` making rewards on the eval set mean 0, std 1."""


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row (left or right padding). mask: [..., T] -> [...]."""
    t = attention_mask.shape[-1]
    positions = jnp.arange(t, dtype=jnp.int32)
    return jnp.max(jnp.where(attention_mask.astype(bool), positions, 0), axis=-1)


class ScalarHeadModel(nnx.Module):
    """Backbone + ``score`` kernel ``[E]``: one scalar per token, or per sequence."""

    def __init__(self, backbone: CausalLM, *, rngs: nnx.Rngs, zero_init: bool = False):
        e = backbone.config.hidden_size
        # the LM head is replaced, not kept: it would only hold unused parameters
        if getattr(backbone, "lm_head", None) is not None:
            backbone.lm_head = None
        self.backbone = backbone
        init = (jax.nn.initializers.zeros if zero_init
                else jax.nn.initializers.normal(stddev=1.0 / (e + 1) ** 0.5))
        self.score = nnx.Param(init(rngs.params(), (e,), jnp.float32), logical_axes=("embed",))
        self.normalization = RewardNormalization(jnp.array([1.0, 0.0], jnp.float32))
        # whether training appended EOS to each answer (the reward is read there); None: unknown.
        # Exported in config.json so that scoring lays sequences out as training did.
        self.append_eos: bool | None = None

    @property
    def config(self):
        return self.backbone.config

    def token_values(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        # input_ids, attention_mask: [B, T] -> values [B, T] float32
        hidden, _ = self.backbone.hidden_states(input_ids, attention_mask)
        return jnp.einsum("bte,e->bt", hidden.astype(jnp.float32), self.score[...].astype(jnp.float32))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Raw rewards ``[B]``, read at each row's last real token."""
        values = self.token_values(input_ids, attention_mask)
        index = last_token_index(attention_mask)
        return jnp.take_along_axis(values, index[:, None], axis=1)[:, 0]

    def normalized(self, rewards: jax.Array) -> jax.Array:
        gain, bias = self.normalization[...][0], self.normalization[...][1]
        return rewards * gain + bias


RewardModel = ScalarHeadModel
