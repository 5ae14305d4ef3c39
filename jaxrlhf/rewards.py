"""Reward sources for RL: a learned reward model, registered rule functions, or a weighted sum.

A rule is a Python function ``rule(batch: TextBatch, **kwargs) -> np.ndarray [B]`` registered
by name; it sees the decoded prompts and responses, the response tokens and the rows'
metadata (e.g. a length limit). A learned reward model scores the very token ids the
policy produced (no decode/re-tokenise round trip), so it must share the policy's vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

RULES: dict[str, Callable[..., np.ndarray]] = {}


def register_rule(name: str):
    """Decorator: make a rule reward available as ``{kind: rule, name: NAME}`` in configs."""
    def register(fn):
        if name in RULES and RULES[name] is not fn:
            raise ValueError(f"rule reward {name!r} is already registered")
        RULES[name] = fn
        return fn
    return register


def get_rule(name: str) -> Callable[..., np.ndarray]:
    if name not in RULES:
        import jaxrlhf.tasks  # noqa: F401  (tasks register their rules on import)
    if name not in RULES:
        raise KeyError(f"unknown rule reward {name!r} (registered: {', '.join(sorted(RULES)) or 'none'})")
    return RULES[name]


@dataclasses.dataclass
class TextBatch:
    prompts: list[str]
    responses: list[str]  # decoded up to (not including) EOS
    response_tokens: np.ndarray  # [B, N]
    response_mask: np.ndarray  # [B, N]
    finished: np.ndarray  # [B] bool: the response ended with EOS
    meta: list[dict[str, Any]]  # per-row metadata from the prompt file


@dataclasses.dataclass(frozen=True)
class RewardSource:
    kind: str = "model"  # model (a learned reward model folder) | rule (a registered function)
    path: str | None = None  # kind=model: a *ForSequenceClassification folder (our rm export)
    name: str | None = None  # kind=rule: the registered name
    weight: float = 1.0
    normalize: bool = True  # kind=model: apply the RM's stored gain/bias (eval mean 0, std 1)
    include_eos: bool = True  # kind=model: score with the EOS token, as an RM trained with data.append_eos
    # kind=model: per-token rewards, the change in this RM's score of the answer prefix at each
    # token (potential-based shaping, see jaxrlhf.steps.ppo.prefix_shaping); needs include_eos false
    dense: bool = False
    kwargs: dict = dataclasses.field(default_factory=dict)  # kind=rule: extra arguments

    def __post_init__(self):
        if self.kind not in ("model", "rule"):
            raise ValueError(f"kind must be model or rule, got {self.kind!r}")
        if self.kind == "model" and not self.path:
            raise ValueError("a model reward needs path: a reward-model folder")
        if self.kind == "rule" and not self.name:
            raise ValueError("a rule reward needs name: a registered rule")
        if self.dense and self.kind != "model":
            raise ValueError("dense: true scores every answer prefix with a reward model: it needs kind: model")
        if self.dense and self.include_eos:
            raise ValueError("dense: true reads the reward model at every answer token, without EOS: it needs "
                             "include_eos: false (a reward model trained with data.append_eos: false)")

    def __hash__(self):
        return hash((self.kind, self.path, self.name, self.weight, self.normalize, self.include_eos, self.dense,
                     tuple(sorted(self.kwargs.items()))))


def combine(parts: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted sum of the per-source scores ([B] each)."""
    return sum(weights[k] * np.asarray(v, np.float32) for k, v in parts.items())


@register_rule("target_length_tokens")
def target_length_tokens(batch: TextBatch, target: int = 8) -> np.ndarray:
    """1 when the response is exactly ``target`` tokens then EOS, falling linearly with the
    distance in tokens (a toy task for testing that PPO learns)."""
    lengths = batch.response_mask.sum(axis=1) - batch.finished.astype(np.int64)  # tokens before EOS
    return 1.0 - np.abs(lengths - target) / target
