"""``jaxrlhf rm``: train a reward model on ranked answers.

data -> tokenise (fixed [N, K, T]) -> RM = backbone + scalar head -> jitted sharded
``rm_train_step`` driven by the shared loop -> reward normalisation on the eval set ->
export as a transformers ``*ForSequenceClassification`` folder in ``output_dir/final``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import numpy as np


from jaxrlhf.config import ModelConfig
from jaxrlhf.loop import TrainConfig
from jaxrlhf.sharding import MeshConfig
from jaxrlhf.tracking import LoggingConfig
from jaxrlhf.stages.common import StageDataConfig, SupervisedStage, load_train_eval

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RMDataConfig(StageDataConfig):
    num_slots: int = 0  # responses per prompt K (padded); 0: the most any row has

    def __post_init__(self):
        super().__post_init__()
        if self.num_slots < 0 or self.num_slots == 1:
            raise ValueError(f"num_slots must be 0 (the most any row has) or >= 2, got {self.num_slots}")


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
    logging: LoggingConfig = LoggingConfig()  # TensorBoard (default) and W&B
    loss: RMLossConfig = RMLossConfig()

    def __post_init__(self):
        if not self.model.path:
            raise ValueError("model.path is required: a Hugging Face folder (base LM, SFT export "
                             "or reward model) to start from")


MIN_NORMALIZATION_ANSWERS = 32


def normalization_warning(eval_answers: int, gain: float) -> str | None:
    """The warning for a normalisation measured on too few eval answers (None when enough).

    Warned, not refused: a small example or smoke run should still finish; the gain is then a
    noisy estimate (an eval split of 1 row gave a gain of 75) and PPO's rewards scale with it."""
    if eval_answers >= MIN_NORMALIZATION_ANSWERS:
        return None
    return (f"reward normalisation (gain {gain:.4g}) measured on {eval_answers} eval answers, fewer than "
            f"{MIN_NORMALIZATION_ANSWERS}: PPO's normalised rewards will be noisy in scale; give the RM more "
            f"eval rows (data.eval_files or a larger data.eval_fraction)")


def load_data(cfg: RMConfig, tokenizer):
    """Tokenised train and eval arrays, and the cleaning report of each file set."""
    from jaxrlhf.config import ConfigError
    from jaxrlhf.data import load_preference_data, tokenize_ranked

    num_slots = cfg.data.num_slots

    def load(files):
        nonlocal num_slots  # eval rows are padded to the K of the training rows
        examples, report = load_preference_data(list(files), tokenizer=tokenizer, strict=cfg.data.strict)
        widest = max(examples, key=lambda e: len(e.responses), default=None)
        if num_slots and widest is not None and len(widest.responses) > num_slots:
            inferred = "" if cfg.data.num_slots else " (the most a training row has)"
            raise ConfigError(f"data.num_slots={num_slots}{inferred} is below the {len(widest.responses)} "
                              f"responses of {widest.source}:{widest.line}: raise data.num_slots")
        num_slots = num_slots or max(len(e.responses) for e in examples)
        arrays = tokenize_ranked(examples, tokenizer, max_length=cfg.data.max_length,
                                 min_prompt_tokens=cfg.data.min_prompt_tokens or None,
                                 append_eos=cfg.data.append_eos, num_slots=num_slots, report=report)
        return arrays, report

    return load_train_eval(cfg.data, cfg.seed, load)


def load_model(cfg: RMConfig, mesh):
    from jaxrlhf.models import reward_model_from_pretrained
    from jaxrlhf.stages.common import with_attention, with_lora
    model = reward_model_from_pretrained(cfg.model.path, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
                                         remat=cfg.model.remat, mesh=mesh, seed=cfg.seed)
    model = with_attention(model, cfg.model)
    return with_lora(model, cfg.model, mesh=mesh, seed=cfg.seed)  # with LoRA: adapters + the score head train


def build(cfg: RMConfig, *, graphdef, tx, mesh, train, eval_data, start_adapters=None):
    del start_adapters  # no reference policy in this stage
    from jaxrlhf.sharding import to_host
    from jaxrlhf.stages.common import (SupervisedParts, add_sums, eval_batch_size, eval_batches, merged_model,
                                       with_mesh)
    from jaxrlhf.steps.rm import eval_summary, rm_eval_step, rm_train_step

    eval_fn = with_mesh(jax.jit(functools.partial(rm_eval_step, graphdef=graphdef, margin=cfg.loss.margin)), mesh)

    def evaluate_with_rewards(state):
        sums, rewards = None, []
        for rows, batch in eval_batches(eval_data, eval_batch_size(cfg.train), mesh,
                                        pad_to_multiple=cfg.train.pad_to_multiple):
            part, r = eval_fn(state, batch)
            sums = add_sums(sums, part)
            valid = to_host(batch["slot_mask"])[0][:rows]
            rewards.append(to_host(r)[0][:rows][valid])
        return eval_summary(sums), np.concatenate(rewards)

    def finalize(state):
        # reward normalisation: rewards on the eval set get mean 0 and std 1
        if eval_data is not None:
            _, rewards = evaluate_with_rewards(state)
        else:
            rewards = np.asarray([0.0, 1.0])
            log.warning("no eval data: reward normalisation left at gain 1, bias 0")
        std = float(np.std(rewards)) or 1.0
        gain, bias = 1.0 / std, -float(np.mean(rewards)) / std
        final = merged_model(graphdef, state)
        final.normalization.set_value(jax.numpy.asarray([gain, bias], jax.numpy.float32))
        final.append_eos = cfg.data.append_eos
        norm = {"gain": gain, "bias": bias, "eval_answers": int(rewards.size) if eval_data is not None else 0}
        warning = normalization_warning(norm["eval_answers"], gain) if eval_data is not None else None
        if warning:
            log.warning(warning)
            norm["warning"] = warning
        return final, {"reward_normalization": norm}

    step = functools.partial(rm_train_step, graphdef=graphdef, tx=tx, margin=cfg.loss.margin,
                             center_coef=cfg.loss.center_coef)
    return SupervisedParts(step=step, train=train, eval_data=eval_data,
                           evaluate=lambda state: evaluate_with_rewards(state)[0], finalize=finalize)


def run_rm(cfg: RMConfig, *, resume: bool = False) -> dict:
    from jaxrlhf.stages.common import run_supervised
    return run_supervised(cfg, STAGE, resume=resume)


STAGE = SupervisedStage("rm", load_data, load_model, build, postfix=("loss", "pair_accuracy"))
