"""The one list of training stages. The CLI (a subcommand each), ``export`` and the
length-control pipeline read it; nothing else names the stages.

Entries are light (module names, help text) so that building the CLI parser imports no stage.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

RL_DESCRIPTION = (
    "Train a policy (from an SFT model) with on-policy RL: KV-cache rollouts, scores from a learned reward "
    "model and/or rule functions (package.module:function), a KL leash to the frozen reference (in the reward "
    "or in the loss), advantages from the estimator named in algorithm.advantage (gae with a critic, grpo, "
    "dr_grpo, rloo, reinforce_pp), clipped policy (and value) updates over epochs x minibatches, optional "
    "held-out greedy eval. Writes checkpoints, TensorBoard scalars, PNG curves, results.json, final/ (the "
    "policy) and, with a critic, critic/.")


class StageInfo(NamedTuple):
    module: str  # defines the config class and run function
    config_name: str
    run_name: str
    help: str
    description: str
    summary: tuple[str, ...]  # metrics printed when the run ends
    preset: str | None = None  # RL presets: default keys under jaxrlhf.stages.rl.PRESETS

    def config_type(self):
        return getattr(importlib.import_module(self.module), self.config_name)

    def defaults(self) -> dict:
        """The preset's default keys (the YAML and --set refine them)."""
        if self.preset is None:
            return {}
        return importlib.import_module(self.module).PRESETS[self.preset]

    def run(self, cfg, *, resume: bool = False) -> dict:
        fn = getattr(importlib.import_module(self.module), self.run_name)
        return fn(cfg, resume=resume, **({"stage": self.preset} if self.preset else {}))


def _rl(preset: str, help_: str) -> StageInfo:
    return StageInfo("jaxrlhf.stages.rl", "RLConfig", "run_rl", help_, RL_DESCRIPTION,
                     ("score", "response_length"), preset)


STAGES: dict[str, StageInfo] = {
    "sft": StageInfo("jaxrlhf.stages.sft", "SFTConfig", "run_sft",
                     "supervised fine-tuning (loss on response tokens only)",
                     "Fine-tune a causal LM on prompt/response, chat (messages) or plain-text data; the loss "
                     "covers response tokens only, averaged exactly over the batch. Optional packing. Writes "
                     "checkpoints, TensorBoard scalars, results.json and final/ (a transformers folder).",
                     ("loss", "perplexity")),
    "rm": StageInfo("jaxrlhf.stages.rm", "RMConfig", "run_rm",
                    "train a reward model on ranked answers (K-wise ranking loss)",
                    "Train a reward model (the LM with a scalar head) on prompts with K ranked answers: one "
                    "forward per answer, all C(K,2) ordered pairs from the [B, K] reward matrix. Writes "
                    "checkpoints, TensorBoard scalars, results.json and final/ (a transformers "
                    "*ForSequenceClassification folder).",
                    ("loss", "pair_accuracy", "top1_accuracy")),
    "dpo": StageInfo("jaxrlhf.stages.dpo", "DPOConfig", "run_dpo",
                     "direct preference optimisation against a frozen reference",
                     "Train a policy with DPO (sigmoid, ipo or hinge loss) on pairs or ranked lists turned "
                     "into pairs, against a frozen reference (default: the starting policy). Writes "
                     "checkpoints, TensorBoard scalars, results.json and final/ (a transformers folder).",
                     ("loss", "reward_accuracy", "margin")),
    "ppo": _rl("ppo", "RLHF with PPO (GAE and a critic by default) against a reward model and/or rules"),
    "grpo": _rl("grpo", "GRPO: group-normalised advantages, no critic, KL (k3) in the loss"),
    "dr_grpo": _rl("dr_grpo", "Dr. GRPO: group-centred advantages, sequence-sum loss, no critic"),
    "rloo": _rl("rloo", "RLOO: leave-one-out baseline over each prompt's samples, no critic"),
    "reinforce_pp": _rl("reinforce_pp", "REINFORCE++: KL-shaped returns whitened over the batch, no critic"),
}


def stage_info(name: str) -> StageInfo:
    from jaxrlhf.config import ConfigError

    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r} (stages: {', '.join(STAGES)})")
    return STAGES[name]
