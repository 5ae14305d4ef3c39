"""Export a training run's checkpoint as a transformers folder."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.config import ConfigError, load_config


def export_run(run_dir: str | Path, out: str | Path, *, step: int | None = None,
               dtype: str | None = None) -> Path:
    """Rebuild the run's model structure, restore a checkpoint into it and save it."""
    from jaxrlhf.checkpoint import Checkpointer
    from jaxrlhf.models import load_tokenizer, reward_model_from_pretrained, save_pretrained
    from jaxrlhf.stages.rm import RMConfig
    from jaxrlhf.steps.common import init_train_state, make_optimizer

    run_dir = Path(run_dir)
    cfg = load_config(RMConfig, run_dir / "config.yaml")
    checkpointer = Checkpointer(run_dir / "checkpoints")
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in checkpointer.all_steps():
        raise ConfigError(f"{run_dir / 'checkpoints'}: no complete checkpoint"
                          + (f" for step {step}" if step is not None else ""))
    model = reward_model_from_pretrained(cfg.model.path, dtype=cfg.model.dtype,
                                         param_dtype=cfg.model.param_dtype, seed=cfg.seed)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg.train.optim, total_steps=1)  # structure only
    abstract = jax.eval_shape(lambda: init_train_state(params, buffers, tx, cfg.seed))
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    state, _ = checkpointer.restore(step, abstract)
    model = nnx.merge(graphdef, state.params, state.buffers)
    results = run_dir / "results.json"
    if results.exists():
        norm = json.loads(results.read_text()).get("reward_normalization")
        if norm:
            model.normalization.set_value(jnp.asarray([norm["gain"], norm["bias"]], jnp.float32))
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    checkpointer.close()
    return save_pretrained(model, out, dtype=dtype, tokenizer=tokenizer)
