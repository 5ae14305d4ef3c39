"""``jaxrlhf sft``: supervised fine-tuning on prompt/response, chat or plain-text data.

The loss covers response tokens only (prompt tokens are context), averaged exactly over
the batch's trained tokens; short examples may be packed into full rows with attention
isolated per example.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import numpy as np
from flax import nnx

from jaxrlhf.config import ModelConfig
from jaxrlhf.loop import TrainConfig
from jaxrlhf.sharding import MeshConfig
from jaxrlhf.stages.common import StageDataConfig, load_train_eval

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SFTDataConfig(StageDataConfig):
    eval_fraction: float = 0.05
    packing: bool = False  # pack short examples into full rows (attention stays per example)
    train_on_prompt: bool = False  # loss on the prompt tokens too (whole-sequence LM); default: response only


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
    from jaxrlhf.data import load_sft_data, pack_sft, tokenize_sft

    def load(files):
        examples, report = load_sft_data(list(files), tokenizer=tokenizer, strict=cfg.data.strict)
        arrays = tokenize_sft(examples, tokenizer, max_length=cfg.data.max_length,
                              min_prompt_tokens=cfg.data.min_prompt_tokens or None,
                              append_eos=cfg.data.append_eos, train_on_prompt=cfg.data.train_on_prompt,
                              report=report)
        return arrays, report

    train, eval_, reports = load_train_eval(cfg.data, cfg.seed, load)
    if cfg.data.packing:
        before = len(train)
        train = pack_sft(train)
        log.info("packed %d training examples into %d rows", before, len(train))
    return train, eval_, reports


def run_sft(cfg: SFTConfig, *, resume: bool = False) -> dict:
    from jaxrlhf.models import load_tokenizer
    from jaxrlhf.sharding import make_mesh
    from jaxrlhf.stages.common import (add_sums, build_train_state, eval_batch_size, eval_batches,
                                       finish_run, fit, jit_train_step, load_policy, prepare_run_dir,
                                       restore_or_start, stack_micro_batches, steps_per_epoch_for,
                                       with_mesh)
    from jaxrlhf.steps.sft import sft_eval_step, sft_train_step

    out, checkpointer = prepare_run_dir(cfg, resume=resume, stage="sft")
    mesh = make_mesh(cfg.mesh)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    train, eval_, reports = load_data(cfg, tokenizer)
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
        sums = None
        for _, batch in eval_batches(eval_, eval_batch_size(cfg.train), mesh,
                                    pad_to_multiple=cfg.train.pad_to_multiple):
            sums = add_sums(sums, eval_fn(state, batch))
        tokens = float(sums["token_count"])
        loss = float(sums["nll_sum"]) / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}

    state, position, last_eval = fit(
        state=state, step=step, train=train, train_cfg=cfg.train, seed=cfg.seed, batch_sh=batch_sh,
        steps_per_epoch=steps_per_epoch, start=start, checkpointer=checkpointer,
        evaluate=evaluate if eval_ is not None else None, out=out, desc="sft")
    final = nnx.merge(graphdef, state.params, state.buffers)
    return finish_run(out, final, tokenizer, position=position, last_eval=last_eval, reports=reports,
                      checkpointer=checkpointer)
