"""``jaxrlhf rm``: train a reward model on ranked answers.

data -> tokenise (fixed [N, K, T]) -> RM = backbone + scalar head -> jitted sharded
``rm_train_step`` driven by the shared loop -> reward normalisation on the eval set ->
export as a transformers ``*ForSequenceClassification`` folder in ``output_dir/final``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, ModelConfig, save_config
from jaxrlhf.loop import MetricsLog, Position, TrainConfig, train_loop
from jaxrlhf.sharding import MeshConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RMDataConfig:
    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()  # empty: hold out eval_fraction of the training rows
    eval_fraction: float = 0.1
    max_length: int = 512  # tokens per prompt+response sequence (fixed: one compilation)
    min_prompt_tokens: int = 0  # prompt tokens kept when truncating; 0: max_length // 4
    num_slots: int = 0  # responses per prompt K (padded); 0: the most any row has
    append_eos: bool = True
    strict: bool = False  # stop at the first bad row instead of skipping and counting it

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")


@dataclasses.dataclass(frozen=True)
class RMLossConfig:
    margin: float = 0.0  # -log sigmoid(r_w - r_l - margin)
    center_coef: float = 0.0  # + center_coef * mean(r^2): keeps rewards near zero


@dataclasses.dataclass(frozen=True)
class RMConfig:
    seed: int = 0
    output_dir: str = "runs/rm"
    tokenizer: str | None = None  # default: model.path
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    data: RMDataConfig = RMDataConfig()
    train: TrainConfig = TrainConfig()
    loss: RMLossConfig = RMLossConfig()

    def __post_init__(self):
        if not self.model.path:
            raise ValueError("model.path is required: a Hugging Face folder (base LM, SFT export "
                             "or reward model) to start from")


def load_data(cfg: RMConfig, tokenizer):
    """Tokenised train and eval arrays, and the cleaning report of each file set."""
    from jaxrlhf.data import load_preference_data, split_train_eval, tokenize_ranked

    if not cfg.data.train_files:
        raise ConfigError("data.train_files is empty: give at least one JSONL/JSON/parquet file")
    tokenize = functools.partial(tokenize_ranked, tokenizer=tokenizer, max_length=cfg.data.max_length,
                                 min_prompt_tokens=cfg.data.min_prompt_tokens or None,
                                 append_eos=cfg.data.append_eos)
    examples, report = load_preference_data(list(cfg.data.train_files), tokenizer=tokenizer,
                                            strict=cfg.data.strict)
    num_slots = cfg.data.num_slots or max(len(e.responses) for e in examples)
    train = tokenize(examples, num_slots=num_slots, report=report)
    reports = {"train": report}
    if cfg.data.eval_files:
        eval_examples, eval_report = load_preference_data(list(cfg.data.eval_files),
                                                          tokenizer=tokenizer, strict=cfg.data.strict)
        eval_ = tokenize(eval_examples, num_slots=num_slots, report=eval_report)
        reports["eval"] = eval_report
    elif cfg.data.eval_fraction > 0:
        train, eval_ = split_train_eval(train, cfg.data.eval_fraction, cfg.seed)
    else:
        eval_ = None
    return train, eval_, reports


def stack_micro_batches(batch: dict[str, np.ndarray], parts: int) -> dict[str, np.ndarray]:
    """[B, ...] -> [parts, B / parts, ...] (the step's accumulation axis first)."""
    return {k: v.reshape((parts, v.shape[0] // parts) + v.shape[1:]) for k, v in batch.items()}


def pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Pad a short (last) eval batch with fully masked rows, keeping shapes fixed."""
    n = next(iter(batch.values())).shape[0]
    if n == rows:
        return batch
    return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def run_rm(cfg: RMConfig, *, resume: bool = False) -> dict:
    from jaxrlhf.checkpoint import Checkpointer
    from jaxrlhf.data import batches_per_epoch, iterate_batches
    from jaxrlhf.models import load_tokenizer, reward_model_from_pretrained, save_pretrained
    from jaxrlhf.sharding import make_mesh
    from jaxrlhf.steps.common import (batch_shardings, init_train_state, make_optimizer,
                                      train_state_shardings)
    from jaxrlhf.steps.rm import eval_summary, rm_eval_step, rm_train_step

    out = Path(cfg.output_dir)
    checkpointer = Checkpointer(out / "checkpoints", keep=cfg.train.keep_checkpoints)
    if not resume and checkpointer.latest_step() is not None:
        raise ConfigError(f"{out / 'checkpoints'} already holds checkpoints: pass --resume to "
                          "continue that run, or choose another output_dir")
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    mesh = make_mesh(cfg.mesh)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    train, eval_, reports = load_data(cfg, tokenizer)
    for split, report in reports.items():
        log.info("%s data: %s", split, report.summary())
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.train.batch_size // cfg.train.accumulation_steps
    if micro % data_parallel:
        raise ConfigError(f"train.batch_size / accumulation ({micro}) must be a multiple of the "
                          f"data-parallel size data x fsdp = {data_parallel}")
    steps_per_epoch = batches_per_epoch(len(train), cfg.train.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train)} training prompts are fewer than train.batch_size "
                          f"{cfg.train.batch_size}")
    total_steps = cfg.train.total_steps(steps_per_epoch)

    model = reward_model_from_pretrained(cfg.model.path, dtype=cfg.model.dtype,
                                         param_dtype=cfg.model.param_dtype, remat=cfg.model.remat,
                                         mesh=mesh, seed=cfg.seed)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg.train.optim, total_steps)
    shardings = train_state_shardings(
        jax.eval_shape(lambda: init_train_state(params, buffers, tx, cfg.seed)), mesh, tx)
    with jax.set_mesh(mesh):
        state = jax.jit(init_train_state, static_argnums=(2, 3), out_shardings=shardings)(
            params, buffers, tx, cfg.seed)

    start = Position()
    if resume and checkpointer.latest_step() is not None:
        state, meta = checkpointer.restore(None, state)
        start = Position(meta["epoch"], meta["batch"], meta["steps"])
        log.info("resumed from step %d (epoch %d, batch %d)", start.steps, start.epoch, start.batch)
    elif resume:
        log.info("--resume: no checkpoint in %s yet, starting from the beginning", out / "checkpoints")

    accumulation = cfg.train.accumulation_steps
    example = stack_micro_batches(train.take(np.arange(cfg.train.batch_size)).as_dict(), accumulation)
    batch_sh = batch_shardings(mesh, example)
    step = jax.jit(functools.partial(rm_train_step, graphdef=graphdef, tx=tx, margin=cfg.loss.margin,
                                     center_coef=cfg.loss.center_coef),
                   in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                   donate_argnums=0)

    def train_step(state, batch):
        with jax.set_mesh(mesh):
            return step(state, batch)

    def batches(epoch, start_batch):
        for _, batch in iterate_batches(train, cfg.train.batch_size, seed=cfg.seed, epoch=epoch,
                                        start_batch=start_batch):
            yield jax.device_put(stack_micro_batches(batch, accumulation), batch_sh)

    eval_batch_size = cfg.train.eval_batch_size or micro
    eval_fn = jax.jit(functools.partial(rm_eval_step, graphdef=graphdef, margin=cfg.loss.margin))

    def evaluate_with_rewards(state):
        sums, rewards = None, []
        for _, batch in iterate_batches(eval_, eval_batch_size, seed=cfg.seed, epoch=0,
                                        shuffle=False, drop_last=False):
            valid = batch["slot_mask"].copy()
            batch = stack_micro_batches(pad_rows(batch, eval_batch_size), 1)
            with jax.set_mesh(mesh):
                part, r = eval_fn(state, jax.device_put(batch, batch_shardings(mesh, batch)))
            sums = part if sums is None else jax.tree.map(np.add, sums, part)
            rewards.append(np.asarray(r)[0][: len(valid)][valid])
        return eval_summary(sums), np.concatenate(rewards)

    metrics_log = MetricsLog(out)
    try:
        state, position, last_eval = train_loop(
            state=state, train_step=train_step, batches=batches, steps_per_epoch=steps_per_epoch,
            config=cfg.train, start=start, checkpointer=checkpointer,
            evaluate=(lambda s: evaluate_with_rewards(s)[0]) if eval_ is not None else None,
            metrics_log=metrics_log, desc="rm")
    finally:
        metrics_log.close()

    # reward normalisation: rewards on the eval set (or train set) get mean 0 and std 1
    if eval_ is not None:
        _, rewards = evaluate_with_rewards(state)
    else:
        rewards = np.asarray([0.0, 1.0])
        log.warning("no eval data: reward normalisation left at gain 1, bias 0")
    std = float(np.std(rewards)) or 1.0
    gain, bias = 1.0 / std, -float(np.mean(rewards)) / std
    final = nnx.merge(graphdef, state.params, state.buffers)
    final.normalization.set_value(jax.numpy.asarray([gain, bias], jax.numpy.float32))
    save_pretrained(final, out / "final", tokenizer=tokenizer)

    results = {"steps": position.steps, "eval": last_eval,
               "reward_normalization": {"gain": gain, "bias": bias},
               "data": {split: r.as_dict() for split, r in reports.items()},
               "final_model": str(out / "final")}
    if jax.process_index() == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    checkpointer.close()
    return results
