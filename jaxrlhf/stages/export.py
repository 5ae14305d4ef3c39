"""Export a training run's checkpoint as a transformers folder."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.config import ConfigError, load_config



def export_run(run_dir: str | Path, out: str | Path, *, step: int | None = None,
               dtype: str | None = None, role: str = "policy") -> Path:
    """Rebuild the run's model structure, restore a checkpoint into it and save it."""
    from jaxrlhf.checkpoint import Checkpointer
    from jaxrlhf.models import CheckpointError, load_tokenizer, reward_model_from_pretrained, save_pretrained
    from jaxrlhf.sharding import MeshConfig, make_mesh
    from jaxrlhf.models.lora import split_trained
    from jaxrlhf.stages.common import load_policy, with_lora
    from jaxrlhf.tokenizer_check import check_stage_tokenizer
    from jaxrlhf.steps.common import init_train_state, make_optimizer

    run_dir = Path(run_dir)
    stage_file = run_dir / "stage"
    stage = stage_file.read_text().strip() if stage_file.exists() else "rm"
    from jaxrlhf.stages.registry import STAGES
    if stage not in STAGES:
        raise ConfigError(f"{stage_file}: unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    info = STAGES[stage]
    cfg = load_config(info.config_type(), run_dir / "config.yaml")
    if info.preset is not None:
        return export_rl_run(run_dir, cfg, out, step=step, dtype=dtype, role=role)
    if role != "policy":
        raise ConfigError(f"--role {role}: a {stage} run holds one model (its policy or reward model)")
    checkpointer = Checkpointer(run_dir / "checkpoints")
    if step is not None and step not in checkpointer.all_steps():
        raise ConfigError(f"{run_dir / 'checkpoints'}: no complete checkpoint for step {step}")
    if step is None and checkpointer.latest_step() is None:
        raise ConfigError(f"{run_dir / 'checkpoints'}: no complete checkpoint")
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    if stage == "rm":
        model = reward_model_from_pretrained(cfg.model.path, dtype=cfg.model.dtype,
                                             param_dtype=cfg.model.param_dtype, seed=cfg.seed, mesh=mesh)
        model = with_lora(model, cfg.model, mesh=mesh, seed=cfg.seed)
    else:
        model = load_policy(cfg.model, mesh=mesh, seed=cfg.seed)
    graphdef, params, buffers = split_trained(model)  # the train state's split (LoRA: adapters + heads)
    tx = make_optimizer(cfg.train.optim, total_steps=1)  # the state's structure only
    abstract = jax.eval_shape(lambda: init_train_state(params, buffers, tx, cfg.seed))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    abstract = abstract.replace(buffers=buffers)  # LoRA: checkpoints leave the frozen base out, it is model.path's
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
    if stage == "rm":
        model.append_eos = cfg.data.append_eos
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    check_stage_tokenizer(tokenizer, cfg.model, cfg.tokenizer or cfg.model.path)
    checkpointer.close()
    return save_pretrained(model, out, dtype=dtype, tokenizer=tokenizer)


def restore_state(checkpointer, abstract, step: int | None, where: Path):
    """The state of checkpoint ``step`` (default: the newest that reads back completely)."""
    from jaxrlhf.models import CheckpointError

    if step is None:
        restored = checkpointer.restore_latest(abstract)
        if restored is None:
            raise ConfigError(f"{where}: no checkpoint to export (has the run saved one yet?)")
        return restored[1]
    try:
        return checkpointer.restore(step, abstract)[0]
    except Exception as e:  # the step asked for is damaged: no fallback to another one
        raise CheckpointError(f"{where / str(step)}: cannot be read back "
                              f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})") from None


def export_rl_run(run_dir: Path, cfg, out, *, step: int | None, dtype: str | None, role: str) -> Path:
    """An RL run's actor (the exported weights: the moving average when averaging was on) or, with
    ``role`` critic, its value model."""
    from jaxrlhf.checkpoint import Checkpointer
    from jaxrlhf.models import load_tokenizer, save_pretrained
    from jaxrlhf.sharding import MeshConfig, make_mesh
    from jaxrlhf.models.lora import split_trained
    from jaxrlhf.stages.rl import abstract_rl_state, load_rl_models

    if role not in ("policy", "critic"):
        raise ConfigError(f"--role must be policy or critic, got {role!r}")
    if role == "critic" and not cfg.algorithm.uses_critic:
        raise ConfigError(f"{run_dir}: advantage {cfg.algorithm.advantage} trains no critic")
    checkpointer = Checkpointer(run_dir / "checkpoints")
    if step is not None and step not in checkpointer.all_steps():
        raise ConfigError(f"{run_dir / 'checkpoints'}: no complete checkpoint for step {step}")
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    actor, _, critic = load_rl_models(cfg, mesh, reference=False)
    (actor_graphdef, critic_graphdef), abstract = abstract_rl_state(cfg, actor, critic)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    # LoRA: checkpoints leave the frozen bases out; they are the loaded models' own
    abstract = abstract.replace(
        actor=abstract.actor.replace(buffers=split_trained(actor)[2]),
        critic=None if critic is None else abstract.critic.replace(buffers=split_trained(critic)[2]))
    state = restore_state(checkpointer, abstract, step, run_dir / "checkpoints")
    checkpointer.close()
    if role == "critic":
        return save_pretrained(nnx.merge(critic_graphdef, state.critic.params, state.critic.buffers), out, dtype=dtype)
    params = state.actor.params if state.ema is None else jax.tree.map(lambda e, p: e.astype(p.dtype), state.ema,
                                                                        state.actor.params)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    return save_pretrained(nnx.merge(actor_graphdef, params, state.actor.buffers), out, dtype=dtype,
                           tokenizer=tokenizer)
