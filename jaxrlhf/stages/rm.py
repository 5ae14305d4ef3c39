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

import jax
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, ModelConfig
from jaxrlhf.loop import MetricsLog, TrainConfig, train_loop
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


def run_rm(cfg: RMConfig, *, resume: bool = False) -> dict:
    from jaxrlhf.models import load_tokenizer, reward_model_from_pretrained, save_pretrained
    from jaxrlhf.sharding import make_mesh, to_host
    from jaxrlhf.stages.common import (build_train_state, eval_batch_size, eval_batches,
                                       jit_train_step, prepare_run_dir, restore_or_start,
                                       stack_micro_batches, steps_per_epoch_for, train_batches,
                                       with_mesh)
    from jaxrlhf.steps.rm import eval_summary, rm_eval_step, rm_train_step

    out, checkpointer = prepare_run_dir(cfg, resume=resume, stage="rm")
    mesh = make_mesh(cfg.mesh)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    train, eval_, reports = load_data(cfg, tokenizer)
    for split, report in reports.items():
        log.info("%s data: %s", split, report.summary())
    steps_per_epoch = steps_per_epoch_for(cfg.train, mesh, len(train))

    model = reward_model_from_pretrained(cfg.model.path, dtype=cfg.model.dtype,
                                         param_dtype=cfg.model.param_dtype, remat=cfg.model.remat,
                                         mesh=mesh, seed=cfg.seed)
    graphdef, state, shardings, tx = build_train_state(
        model, cfg.train, cfg.train.total_steps(steps_per_epoch), cfg.seed, mesh)
    state, start = restore_or_start(checkpointer, state, resume=resume)

    example = stack_micro_batches(train.take(np.arange(cfg.train.batch_size)).as_dict(),
                                  cfg.train.accumulation_steps)
    step, batch_sh = jit_train_step(
        functools.partial(rm_train_step, graphdef=graphdef, tx=tx, margin=cfg.loss.margin,
                          center_coef=cfg.loss.center_coef),
        state_shardings=shardings, example_batch=example, mesh=mesh)
    eval_fn = with_mesh(jax.jit(functools.partial(rm_eval_step, graphdef=graphdef,
                                                  margin=cfg.loss.margin)), mesh)

    def evaluate_with_rewards(state):
        sums, rewards = None, []
        for rows, batch in eval_batches(eval_, eval_batch_size(cfg.train), mesh):
            part, r = eval_fn(state, batch)
            part = jax.tree.map(to_host, part)
            sums = part if sums is None else jax.tree.map(np.add, sums, part)
            valid = to_host(batch["slot_mask"])[0][:rows]
            rewards.append(to_host(r)[0][:rows][valid])
        return eval_summary(sums), np.concatenate(rewards)

    metrics_log = MetricsLog(out)
    try:
        state, position, last_eval = train_loop(
            state=state, train_step=step,
            batches=train_batches(train, cfg.train, seed=cfg.seed, batch_sh=batch_sh),
            steps_per_epoch=steps_per_epoch, config=cfg.train, start=start,
            checkpointer=checkpointer,
            evaluate=(lambda s: evaluate_with_rewards(s)[0]) if eval_ is not None else None,
            metrics_log=metrics_log, desc="rm")
    finally:
        metrics_log.close()

    # reward normalisation: rewards on the eval set get mean 0 and std 1
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
