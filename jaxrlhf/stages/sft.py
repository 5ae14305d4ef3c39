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

from jaxrlhf.config import ModelConfig
from jaxrlhf.loop import TrainConfig
from jaxrlhf.sharding import MeshConfig
from jaxrlhf.tracking import LoggingConfig
from jaxrlhf.stages.common import StageDataConfig, SupervisedStage, load_train_eval

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
    logging: LoggingConfig = LoggingConfig()  # TensorBoard (default) and W&B

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


def load_model(cfg: SFTConfig, mesh):
    from jaxrlhf.stages.common import load_policy
    return load_policy(cfg.model, mesh=mesh, seed=cfg.seed)


def build(cfg: SFTConfig, *, graphdef, tx, mesh, train, eval_data, start_adapters=None):
    del start_adapters  # no reference policy in this stage
    from jaxrlhf.stages.common import (SupervisedParts, add_sums, eval_batch_size, eval_batches, merged_model,
                                       with_mesh)
    from jaxrlhf.steps.sft import sft_eval_step, sft_train_step

    eval_fn = with_mesh(jax.jit(functools.partial(sft_eval_step, graphdef=graphdef)), mesh)

    def evaluate(state) -> dict[str, float]:
        sums = None
        for _, batch in eval_batches(eval_data, eval_batch_size(cfg.train), mesh,
                                    pad_to_multiple=cfg.train.pad_to_multiple):
            sums = add_sums(sums, eval_fn(state, batch))
        tokens = float(sums["token_count"])
        loss = float(sums["nll_sum"]) / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}

    return SupervisedParts(step=functools.partial(sft_train_step, graphdef=graphdef, tx=tx), train=train,
                           eval_data=eval_data, evaluate=evaluate,
                           finalize=lambda state: (merged_model(graphdef, state), {}))


def run_sft(cfg: SFTConfig, *, resume: bool = False) -> dict:
    from jaxrlhf.stages.common import run_supervised
    return run_supervised(cfg, STAGE, resume=resume)


STAGE = SupervisedStage("sft", load_data, load_model, build, postfix=("loss",))
