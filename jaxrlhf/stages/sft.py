"""``jaxrlhf sft``: supervised fine-tuning on prompt/response, chat or plain-text data.

The loss covers response tokens only (prompt tokens are context), averaged exactly over
the batch's trained tokens; short examples may be packed into full rows with attention
isolated per example.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math

import jax
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, ModelConfig
from jaxrlhf.loop import MetricsLog, TrainConfig, train_loop
from jaxrlhf.sharding import MeshConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()  # empty: hold out eval_fraction of the training rows
    eval_fraction: float = 0.05
    max_length: int = 512
    min_prompt_tokens: int = 0  # prompt tokens kept when truncating; 0: max_length // 4
    append_eos: bool = True
    packing: bool = False  # pack short examples into full rows (attention stays per example)
    strict: bool = False

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    seed: int = 0
    output_dir: str = "runs/sft"
    tokenizer: str | None = None  # default: model.path
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    data: SFTDataConfig = SFTDataConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        if not self.model.path and not self.model.arch:
            raise ValueError("set model.path (a Hugging Face folder) or model.arch (an architecture "
                             "YAML, to train from scratch)")
        if not self.model.path and not self.tokenizer:
            raise ValueError("training from model.arch needs tokenizer: a folder with a tokenizer")


def load_data(cfg: SFTConfig, tokenizer):
    from jaxrlhf.data import load_sft_data, pack_sft, split_train_eval, tokenize_sft

    if not cfg.data.train_files:
        raise ConfigError("data.train_files is empty: give at least one JSONL/JSON/parquet file")
    tokenize = functools.partial(tokenize_sft, tokenizer=tokenizer, max_length=cfg.data.max_length,
                                 min_prompt_tokens=cfg.data.min_prompt_tokens or None,
                                 append_eos=cfg.data.append_eos)
    examples, report = load_sft_data(list(cfg.data.train_files), tokenizer=tokenizer, strict=cfg.data.strict)
    train = tokenize(examples, report=report)
    reports = {"train": report}
    if cfg.data.eval_files:
        eval_examples, eval_report = load_sft_data(list(cfg.data.eval_files), tokenizer=tokenizer,
                                                   strict=cfg.data.strict)
        eval_ = tokenize(eval_examples, report=eval_report)
        reports["eval"] = eval_report
    elif cfg.data.eval_fraction > 0:
        train, eval_ = split_train_eval(train, cfg.data.eval_fraction, cfg.seed)
    else:
        eval_ = None
    if cfg.data.packing:
        before = len(train)
        train = pack_sft(train)
        log.info("packed %d training examples into %d rows", before, len(train))
    return train, eval_, reports


def run_sft(cfg: SFTConfig, *, resume: bool = False) -> dict:
    from jaxrlhf.models import load_tokenizer, save_pretrained
    from jaxrlhf.sharding import make_mesh
    from jaxrlhf.stages.common import (build_train_state, eval_batch_size, eval_batches,
                                       jit_train_step, load_policy, prepare_run_dir,
                                       restore_or_start, stack_micro_batches, steps_per_epoch_for,
                                       train_batches, with_mesh)
    from jaxrlhf.steps.sft import sft_eval_step, sft_train_step

    out, checkpointer = prepare_run_dir(cfg, resume=resume, stage="sft")
    mesh = make_mesh(cfg.mesh)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    train, eval_, reports = load_data(cfg, tokenizer)
    for split, report in reports.items():
        log.info("%s data: %s", split, report.summary())
    steps_per_epoch = steps_per_epoch_for(cfg.train, mesh, len(train))

    model = load_policy(cfg.model, mesh=mesh, seed=cfg.seed)
    graphdef, state, shardings, tx = build_train_state(
        model, cfg.train, cfg.train.total_steps(steps_per_epoch), cfg.seed, mesh)
    state, start = restore_or_start(checkpointer, state, resume=resume)

    example = stack_micro_batches(train.take(np.arange(cfg.train.batch_size)).as_dict(),
                                  cfg.train.accumulation_steps)
    step, batch_sh = jit_train_step(functools.partial(sft_train_step, graphdef=graphdef, tx=tx),
                                    state_shardings=shardings, example_batch=example, mesh=mesh)
    eval_fn = with_mesh(jax.jit(functools.partial(sft_eval_step, graphdef=graphdef)), mesh)

    def evaluate(state) -> dict[str, float]:
        nll, tokens = 0.0, 0.0
        for _, batch in eval_batches(eval_, eval_batch_size(cfg.train), mesh):
            sums = eval_fn(state, batch)
            nll, tokens = nll + float(sums["nll_sum"]), tokens + float(sums["token_count"])
        loss = nll / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}

    metrics_log = MetricsLog(out)
    try:
        state, position, last_eval = train_loop(
            state=state, train_step=step,
            batches=train_batches(train, cfg.train, seed=cfg.seed, batch_sh=batch_sh),
            steps_per_epoch=steps_per_epoch, config=cfg.train, start=start,
            checkpointer=checkpointer, evaluate=evaluate if eval_ is not None else None,
            metrics_log=metrics_log, desc="sft")
    finally:
        metrics_log.close()
    final = nnx.merge(graphdef, state.params, state.buffers)
    save_pretrained(final, out / "final", tokenizer=tokenizer)
    results = {"steps": position.steps, "eval": last_eval,
               "data": {split: r.as_dict() for split, r in reports.items()},
               "final_model": str(out / "final")}
    if jax.process_index() == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    checkpointer.close()
    return results
