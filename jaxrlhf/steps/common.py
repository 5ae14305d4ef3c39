"""What every training step shares: the train state, the optimizer, guarded updates,
micro-batch accumulation and the shardings of state and batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrlhf.sharding import logical_to_spec, state_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # [] int32: optimizer updates applied
    params: nnx.State  # the trained parameters (nnx.Param)
    opt_state: Any
    rng: jax.Array  # [2] uint32 raw key (raw so that checkpoints hold plain arrays)
    buffers: nnx.State  # non-trained module state (e.g. reward normalisation)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-5
    schedule: str = "cosine"  # cosine | linear | constant (after a linear warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # final learning rate as a fraction of the peak
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        # written as "not (in range)" so that NaN is refused too
        if not 0 < self.learning_rate < float("inf"):
            raise ValueError(f"learning_rate must be > 0 and finite, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.weight_decay < float("inf"):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.eps < float("inf"):
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not 0.0 <= self.max_grad_norm < float("inf"):
            raise ValueError(f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}")


def learning_rate_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    peak, warmup = config.learning_rate, min(config.warmup_steps, max(total_steps - 1, 0))
    end = peak * config.min_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.min_lr_ratio)
    elif config.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(config, total_steps)
    # no weight decay on norms, biases and other vectors
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    parts = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def init_train_state(params: nnx.State, buffers: nnx.State, tx: optax.GradientTransformation,
                     seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)), buffers=buffers)


def apply_gradients(state: TrainState, grads: nnx.State, loss: jax.Array,
                    tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
    """One optimizer update, skipped (state unchanged) when the loss or gradients are not finite.

    Skipping inside the step means a NaN never reaches the parameters, so it never reaches
    a checkpoint; the loop sees ``skipped`` and reports it.
    """
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + finite.astype(jnp.int32),
                              params=keep(new_params, state.params),
                              opt_state=keep(new_opt_state, state.opt_state))
    return new_state, {"grad_norm": grad_norm, "skipped": (~finite).astype(jnp.float32)}


def accumulate(loss_fn: Callable, params: nnx.State, micro_batches: dict) -> tuple[Any, dict]:
    """Sum of ``grad(loss_fn)`` and of its aux metrics over micro-batches (``lax.scan``).

    micro_batches: arrays [A, b, ...]; loss_fn(params, micro_batch) -> (loss, aux) whose
    losses are already normalised by whole-batch counts, so the sum is the exact gradient.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(grads, micro_batch):
        (loss, aux), g = grad_fn(params, micro_batch)
        return jax.tree.map(jnp.add, grads, g), dict(aux, loss=loss)

    # aux comes out stacked [A, ...] and is summed after: its structure needs no extra trace
    grads, aux = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), micro_batches)
    aux = jax.tree.map(lambda x: x.sum(axis=0), aux)
    return grads, aux


def batch_shardings(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, NamedSharding]:
    def spec(x):
        s = logical_to_spec((None, "act_batch") + (None,) * (x.ndim - 2), x.shape, mesh)
        return NamedSharding(mesh, s)
    return {k: spec(v) for k, v in batch.items()}


def train_state_shardings(state: TrainState, mesh: Mesh, tx: optax.GradientTransformation):
    """Shardings for a TrainState: params (and buffers) by their logical axes; optimizer
    moments follow the params they belong to; scalars replicated."""
    param_sh = state_shardings(state.params, mesh)
    replicated = NamedSharding(mesh, P())
    # Adam's moments (and any params-shaped optimizer state) are sharded like their params;
    # counts and other scalars are replicated
    opt_sh = optax.tree_map_params(tx, lambda _, sharding: sharding, state.opt_state, param_sh,
                                   transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated,
                      buffers=state_shardings(state.buffers, mesh))
