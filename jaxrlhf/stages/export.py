"""Export a training run's checkpoint as a transformers folder."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.config import ConfigError, load_config

STAGE_CONFIGS = {"sft": ("jaxrlhf.stages.sft", "SFTConfig"), "rm": ("jaxrlhf.stages.rm", "RMConfig"),
                 "dpo": ("jaxrlhf.stages.dpo", "DPOConfig")}


def export_run(run_dir: str | Path, out: str | Path, *, step: int | None = None,
               dtype: str | None = None) -> Path:
    """Rebuild the run's model structure, restore a checkpoint into it and save it."""
    import importlib

    from jaxrlhf.checkpoint import Checkpointer
    from jaxrlhf.models import CheckpointError, load_tokenizer, reward_model_from_pretrained, save_pretrained
    from jaxrlhf.sharding import MeshConfig, make_mesh
    from jaxrlhf.stages.common import load_policy
    from jaxrlhf.tokenizer_check import check_stage_tokenizer
    from jaxrlhf.steps.common import init_train_state, make_optimizer

    run_dir = Path(run_dir)
    stage_file = run_dir / "stage"
    stage = stage_file.read_text().strip() if stage_file.exists() else "rm"
    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"{stage_file}: unknown stage {stage!r}")
    module, name = STAGE_CONFIGS[stage]
    cfg = load_config(getattr(importlib.import_module(module), name), run_dir / "config.yaml")
    checkpointer = Checkpointer(run_dir / "checkpoints")
    if step is not None and step not in checkpointer.all_steps():
        raise ConfigError(f"{run_dir / 'checkpoints'}: no complete checkpoint for step {step}")
    if step is None and checkpointer.latest_step() is None:
        raise ConfigError(f"{run_dir / 'checkpoints'}: no complete checkpoint")
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    if stage == "rm":
        model = reward_model_from_pretrained(cfg.model.path, dtype=cfg.model.dtype,
                                             param_dtype=cfg.model.param_dtype, seed=cfg.seed, mesh=mesh)
    else:
        model = load_policy(cfg.model, mesh=mesh, seed=cfg.seed)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg.train.optim, total_steps=1)  # the state's structure only
    abstract = jax.eval_shape(lambda: init_train_state(params, buffers, tx, cfg.seed))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    if step is None:  # the newest checkpoint that reads back; damaged ones set aside
        _, state, _ = checkpointer.restore_latest(abstract)
    else:
        try:
            state, _ = checkpointer.restore(step, abstract)
        except Exception as e:  # the step asked for is damaged: no fallback to another one
            raise CheckpointError(f"{run_dir / 'checkpoints' / str(step)}: cannot be read back "
                                  f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})") from None
    model = nnx.merge(graphdef, state.params, state.buffers)
    results = run_dir / "results.json"
    if stage == "rm" and results.exists():
        norm = json.loads(results.read_text()).get("reward_normalization")
        if norm:
            model.normalization.set_value(jnp.asarray([norm["gain"], norm["bias"]], jnp.float32))
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    check_stage_tokenizer(tokenizer, cfg.model, cfg.tokenizer or cfg.model.path)
    checkpointer.close()
    return save_pretrained(model, out, dtype=dtype, tokenizer=tokenizer)
