"""The RL algorithm as data: one frozen, hashable config passed into jit as a static argument.

Every variant is a named, registered choice (an advantage estimator, a KL placement, a loss
aggregation, a sample selection, a weight averaging), never a combination of booleans that
must agree with each other.
"""

from __future__ import annotations

import dataclasses

KL_PLACEMENTS = ("reward", "loss", "none")
KL_ESTIMATORS = ("k1", "k3")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "sequence_sum")
SELECTIONS = ("all", "max_variance")
AVERAGINGS = ("none", "ema")


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """Where the leash to the reference policy acts.

    reward: -coef * KL_t added to each token's reward (InstructGPT / trl PPO), fixed or adaptive;
    loss: + coef * KL_t in the policy loss (GRPO), not part of the advantages; none: no leash.
    """

    placement: str = "reward"  # reward | loss | none
    estimator: str = "k1"  # k1 (log p - log q) | k3 ((q/p - 1) - log(q/p), >= 0)
    coef: float = 0.05  # beta, the initial coefficient
    target: float | None = None  # placement reward: adaptive beta aiming at this per-answer KL; None: fixed
    horizon: float = 10000.0  # adaptive beta's horizon (Ziegler et al. 2019)

    def __post_init__(self):
        if self.placement not in KL_PLACEMENTS:
            raise ValueError(f"kl.placement must be one of {', '.join(KL_PLACEMENTS)}, got {self.placement!r}")
        if self.estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl.estimator must be k1 or k3, got {self.estimator!r}")
        if self.coef < 0:
            raise ValueError(f"kl.coef must be >= 0, got {self.coef}")
        if self.target is not None and (self.target <= 0 or self.placement != "reward"):
            raise ValueError("kl.target (adaptive beta) must be > 0 and needs kl.placement: reward")
        if self.horizon <= 0:
            raise ValueError(f"kl.horizon must be > 0, got {self.horizon}")


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Which sampled answers are trained on. all: every one; max_variance: of each prompt's
    samples, the keep/2 best and keep/2 worst by score (PODS, Xu et al. 2025)."""

    kind: str = "all"  # all | max_variance
    keep: int = 0  # max_variance: answers kept per prompt (even, below samples_per_prompt)

    def __post_init__(self):
        if self.kind not in SELECTIONS:
            raise ValueError(f"selection.kind must be one of {', '.join(SELECTIONS)}, got {self.kind!r}")
        if self.kind == "max_variance" and (self.keep < 2 or self.keep % 2):
            raise ValueError(f"selection.keep must be even and >= 2 for max_variance, got {self.keep}")
        if self.kind == "all" and self.keep:
            raise ValueError("selection.keep is only used with selection.kind: max_variance")

    def trained_per_prompt(self, samples_per_prompt: int) -> int:
        return self.keep if self.kind == "max_variance" else samples_per_prompt


@dataclasses.dataclass(frozen=True)
class AveragingConfig:
    """The exported weights. none: the last iterate; ema: ema <- decay * ema + (1 - decay) * actor
    after every iteration (Polyak averaging, float32, part of the checkpointed state)."""

    kind: str = "none"  # none | ema
    decay: float = 0.9

    def __post_init__(self):
        if self.kind not in AVERAGINGS:
            raise ValueError(f"averaging.kind must be one of {', '.join(AVERAGINGS)}, got {self.kind!r}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"averaging.decay must be in (0, 1), got {self.decay}")


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """Everything the jitted RL functions need to know about the algorithm."""

    advantage: str = "gae"  # gae | grpo | dr_grpo | rloo | reinforce_pp (jaxrlhf.algorithms.ADVANTAGES)
    kl: KLConfig = KLConfig()
    loss_aggregation: str = "token_mean"  # token_mean | sequence_mean | sequence_sum (/ max_new_tokens)
    selection: SelectionConfig = SelectionConfig()
    averaging: AveragingConfig = AveragingConfig()
    whiten_advantages: bool = True  # zero mean, unit variance over the batch's valid tokens
    epochs: int = 4  # passes over each rollout
    minibatches: int = 4  # per pass
    clip_ratio: float = 0.2
    clip_value: float = 0.2  # critic (gae) only
    vf_coef: float = 0.1  # critic (gae) only
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95  # gae only
    missing_eos_penalty: float | None = -1.0  # added to the score of answers that never emit EOS
    score_clip: float = 0.0  # > 0: scores clipped to [-score_clip, score_clip]

    def __post_init__(self):
        from jaxrlhf.algorithms.advantages import ADVANTAGES

        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {', '.join(ADVANTAGES)}, got {self.advantage!r}")
        if self.loss_aggregation not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_aggregation must be one of {', '.join(LOSS_AGGREGATIONS)}, "
                             f"got {self.loss_aggregation!r}")
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError("epochs and minibatches must be >= 1")
        if not 0.0 < self.clip_ratio < 1.0:
            raise ValueError(f"clip_ratio must be in (0, 1), got {self.clip_ratio}")
        if self.clip_value <= 0 or self.vf_coef < 0 or self.entropy_coef < 0:
            raise ValueError("clip_value must be > 0, vf_coef and entropy_coef >= 0")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.score_clip < 0:
            raise ValueError(f"score_clip must be >= 0 (0: off), got {self.score_clip}")

    @property
    def estimator(self):
        from jaxrlhf.algorithms.advantages import ADVANTAGES
        return ADVANTAGES[self.advantage]

    @property
    def uses_critic(self) -> bool:
        return self.estimator.needs_critic

    def check_group(self, samples_per_prompt: int) -> None:
        """The estimator's and the selection's needs against the number of samples per prompt."""
        if self.estimator.needs_group and samples_per_prompt < 2:
            raise ValueError(f"advantage {self.advantage} compares a prompt's answers: it needs "
                             f"train.samples_per_prompt >= 2, got {samples_per_prompt}")
        if self.selection.kind == "max_variance" and self.selection.keep >= samples_per_prompt:
            raise ValueError(f"selection.keep ({self.selection.keep}) must be below train.samples_per_prompt "
                             f"({samples_per_prompt})")
