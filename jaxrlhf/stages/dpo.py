"""``jaxrlhf dpo``: direct preference optimisation against a frozen reference policy.

Pairs come from pair data or from ranked lists (best vs worst, or all ordered pairs).
The reference (default: the starting policy) is a separate, never-differentiated
parameter tree; its log-probs are computed in the step, or once for the whole dataset
with ``loss.precompute_reference`` (then the reference is not kept in memory).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import numpy as np
from flax import nnx

from jaxrlhf.config import ModelConfig
from jaxrlhf.loop import TrainConfig
from jaxrlhf.sharding import MeshConfig
from jaxrlhf.tracking import LoggingConfig
from jaxrlhf.stages.common import StageDataConfig, SupervisedStage, load_train_eval

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DPODataConfig(StageDataConfig):
    pairs: str = "best_vs_worst"  # how ranked lists become pairs: best_vs_worst | all_pairs

    def __post_init__(self):
        super().__post_init__()
        if self.pairs not in ("best_vs_worst", "all_pairs"):
            raise ValueError(f"pairs must be best_vs_worst or all_pairs, got {self.pairs!r}")


@dataclasses.dataclass(frozen=True)
class DPOLossConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid (DPO) | ipo | hinge
    label_smoothing: float = 0.0  # sigmoid only: robust DPO / cDPO
    precompute_reference: bool = False

    def __post_init__(self):
        from jaxrlhf.losses import DPO_LOSS_TYPES
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {self.loss_type!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    seed: int = 0
    output_dir: str = "runs/dpo"
    tokenizer: str | None = None  # default: model.path
    reference_path: str | None = None  # default: model.path (the starting policy)
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    data: DPODataConfig = DPODataConfig()
    train: TrainConfig = TrainConfig()
    logging: LoggingConfig = LoggingConfig()  # TensorBoard (default) and W&B
    loss: DPOLossConfig = DPOLossConfig()

    def __post_init__(self):
        if not self.model.path:
            raise ValueError("model.path is required: the policy to start from (an SFT export)")
        if self.model.lora is not None and self.reference_path not in (None, self.model.path):
            raise ValueError("with model.lora the reference is model.path with the starting adapters: "
                             "leave reference_path unset")
        if self.model.lora is not None and self.loss.precompute_reference:
            raise ValueError("loss.precompute_reference: with model.lora the reference holds no memory of its "
                             "own (it is the policy's base); leave it false")


def load_data(cfg: DPOConfig, tokenizer):
    from jaxrlhf.data import load_preference_data, ranked_to_pairs, tokenize_pairs

    def load(files):
        examples, report = load_preference_data(list(files), tokenizer=tokenizer, strict=cfg.data.strict)
        pairs = ranked_to_pairs(examples, cfg.data.pairs)
        arrays = tokenize_pairs(pairs, tokenizer, max_length=cfg.data.max_length,
                                min_prompt_tokens=cfg.data.min_prompt_tokens or None,
                                append_eos=cfg.data.append_eos, report=report)
        return arrays, report

    return load_train_eval(cfg.data, cfg.seed, load)


def precompute_reference(data, reference, graphdef, *, average: bool, batch_size: int, mesh,
                         pad_to_multiple: int = 0):
    """The reference's pair log-probs for every row, as a Table with a ref_logps column."""
    from jaxrlhf.stages.common import Table, eval_batches
    from jaxrlhf.steps.dpo import reference_log_probs

    fn = jax.jit(lambda ref, batch: jax.lax.map(
        lambda mb: reference_log_probs(*ref, graphdef, mb, average=average), batch))
    parts = []
    for rows, batch in eval_batches(data, batch_size, mesh, pad_to_multiple=pad_to_multiple):
        with jax.set_mesh(mesh):
            parts.append(np.asarray(fn(reference, batch))[0][:rows])
    return Table({**data.as_dict(), "ref_logps": np.concatenate(parts).astype(np.float32)})


def load_model(cfg: DPOConfig, mesh):
    from jaxrlhf.stages.common import load_policy
    return load_policy(cfg.model, mesh=mesh, seed=cfg.seed)


def build(cfg: DPOConfig, *, graphdef, tx, mesh, train, eval_data, start_adapters=None):
    from jaxrlhf.models import from_pretrained
    from jaxrlhf.sharding import state_shardings
    from jaxrlhf.stages.common import (SupervisedParts, add_sums, eval_batch_size, eval_batches, merged_model,
                                       with_mesh)
    from jaxrlhf.steps.dpo import dpo_eval_step, dpo_train_step, summarize

    if cfg.model.lora is not None:
        return build_lora(cfg, graphdef=graphdef, tx=tx, mesh=mesh, train=train, eval_data=eval_data,
                          start_adapters=start_adapters)
    ref_model = from_pretrained(cfg.reference_path or cfg.model.path, dtype=cfg.model.dtype,
                                param_dtype=cfg.model.param_dtype, mesh=mesh)
    _, ref_params, ref_buffers = nnx.split(ref_model, nnx.Param, ...)
    reference = (ref_params, ref_buffers)
    reference_sh = (state_shardings(ref_params, mesh), state_shardings(ref_buffers, mesh))
    loss_kwargs = dict(beta=cfg.loss.beta, loss_type=cfg.loss.loss_type, label_smoothing=cfg.loss.label_smoothing)
    if cfg.loss.precompute_reference:
        precompute = functools.partial(precompute_reference, reference=reference, graphdef=graphdef,
                                       average=cfg.loss.loss_type == "ipo", batch_size=eval_batch_size(cfg.train),
                                       mesh=mesh, pad_to_multiple=cfg.train.pad_to_multiple)
        train = precompute(train)
        eval_data = precompute(eval_data) if eval_data is not None else None
        del ref_model, reference  # the reference is no longer needed in memory
        reference, reference_sh = ((), ()), ((), ())
    eval_fn = with_mesh(jax.jit(functools.partial(dpo_eval_step, graphdef=graphdef, **loss_kwargs)), mesh)

    def evaluate(state) -> dict[str, float]:
        sums = None
        for _, batch in eval_batches(eval_data, eval_batch_size(cfg.train), mesh,
                                     pad_to_multiple=cfg.train.pad_to_multiple):
            sums = add_sums(sums, eval_fn(state, reference, batch))
        return {k: float(v) for k, v in summarize(sums).items()}

    return SupervisedParts(step=functools.partial(dpo_train_step, graphdef=graphdef, tx=tx, **loss_kwargs),
                           train=train, eval_data=eval_data, evaluate=evaluate,
                           finalize=lambda state: (merged_model(graphdef, state), {}),
                           frozen=reference, frozen_shardings=reference_sh)


def build_lora(cfg: DPOConfig, *, graphdef, tx, mesh, train, eval_data, start_adapters):
    """DPO with LoRA: the reference is the policy's own frozen base with the adapters at their
    starting values (``start_adapters``: the only extra arrays), so no second base exists."""
    from jaxrlhf.sharding import state_shardings
    from jaxrlhf.stages.common import (SupervisedParts, add_sums, eval_batch_size, eval_batches, merged_model,
                                       with_mesh)
    from jaxrlhf.steps.dpo import dpo_eval_step, dpo_train_step, summarize

    # DPOConfig refuses reference_path and precompute_reference with LoRA
    loss_kwargs = dict(beta=cfg.loss.beta, loss_type=cfg.loss.loss_type, label_smoothing=cfg.loss.label_smoothing)

    def step(state, adapters, batch):
        # the base comes from the state's buffers: the same arrays the policy uses
        return dpo_train_step(state, (adapters, state.buffers), batch, graphdef=graphdef, tx=tx, **loss_kwargs)

    eval_fn = with_mesh(jax.jit(lambda state, adapters, batch: dpo_eval_step(
        state, (adapters, state.buffers), batch, graphdef=graphdef, **loss_kwargs)), mesh)

    def evaluate(state) -> dict[str, float]:
        sums = None
        for _, batch in eval_batches(eval_data, eval_batch_size(cfg.train), mesh,
                                     pad_to_multiple=cfg.train.pad_to_multiple):
            sums = add_sums(sums, eval_fn(state, start_adapters, batch))
        return {k: float(v) for k, v in summarize(sums).items()}

    return SupervisedParts(step=step, train=train, eval_data=eval_data, evaluate=evaluate,
                           finalize=lambda state: (merged_model(graphdef, state), {}),
                           frozen=start_adapters, frozen_shardings=state_shardings(start_adapters, mesh))


def run_dpo(cfg: DPOConfig, *, resume: bool = False) -> dict:
    from jaxrlhf.stages.common import run_supervised
    return run_supervised(cfg, STAGE, resume=resume)


STAGE = SupervisedStage("dpo", load_data, load_model, build, postfix=("loss", "reward_accuracy"))
