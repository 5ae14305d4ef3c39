"""Reward sources for RL: a learned reward model, user rule functions, or a weighted sum.

A rule is a Python function ``rule(batch: TextBatch, **kwargs) -> array [B]`` named in the
config as ``package.module:function`` (``{kind: rule, function: mypkg.rewards:brevity}``); it
sees the decoded prompts and responses, the response tokens and the rows' metadata (e.g. a
length limit). It is imported only because the user named it in their own config. A learned
reward model scores the very token ids the policy produced (no decode/re-tokenise round
trip), so it must share the policy's vocabulary.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxrlhf.config import ConfigError


def load_rule(spec: str) -> Callable[..., np.ndarray]:
    """The function ``package.module:function`` names; a one-line ConfigError if it is missing."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"rule reward {spec!r}: write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"rule reward {spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"rule reward {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(f"rule reward {spec!r}: {attr!r} is not a function")
    return fn


def resolve_rules(sources) -> dict[str, Callable[..., np.ndarray]]:
    """Import every rule the sources name (before any model loads, so a typo costs nothing)."""
    return {s.function: load_rule(s.function) for s in sources if s.kind == "rule"}


def check_rule_scores(spec: str, scores, batch_size: int) -> np.ndarray:
    """A rule's return value as float32 [B]; a wrong type or shape is a one-line ConfigError.
    Non-finite values are passed on: the learner skips that update and counts it."""
    try:
        array = np.asarray(scores, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rule reward {spec}: returned {type(scores).__name__}, not numbers ({e})") from None
    if array.shape != (batch_size,):
        raise ConfigError(f"rule reward {spec}: returned shape {list(array.shape)}, expected [{batch_size}] "
                          "(one score per answer)")
    return array


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
    kind: str = "model"  # model (a learned reward model folder) | rule (a Python function)
    path: str | None = None  # kind=model: a *ForSequenceClassification folder (our rm export)
    function: str | None = None  # kind=rule: package.module:function
    weight: float = 1.0
    normalize: bool = True  # kind=model: apply the RM's stored gain/bias (eval mean 0, std 1)
    include_eos: bool = True  # kind=model: score with the EOS token, as an RM trained with data.append_eos
    # kind=model: per-token rewards, the change in this RM's score of the answer prefix at each
    # token (potential-based shaping, see jaxrlhf.steps.rl.prefix_shaping); needs include_eos false
    dense: bool = False
    kwargs: dict = dataclasses.field(default_factory=dict)  # kind=rule: extra arguments

    def __post_init__(self):
        if self.kind not in ("model", "rule"):
            raise ValueError(f"kind must be model or rule, got {self.kind!r}")
        if self.kind == "model" and not self.path:
            raise ValueError("a model reward needs path: a reward-model folder")
        if self.kind == "rule" and not self.function:
            raise ValueError("a rule reward needs function: package.module:function")
        if self.dense and self.kind != "model":
            raise ValueError("dense: true scores every answer prefix with a reward model: it needs kind: model")
        if self.dense and self.include_eos:
            raise ValueError("dense: true reads the reward model at every answer token, without EOS: it needs "
                             "include_eos: false (a reward model trained with data.append_eos: false)")

    def __hash__(self):
        return hash((self.kind, self.path, self.function, self.weight, self.normalize, self.include_eos, self.dense,
                     tuple(sorted(self.kwargs.items()))))


def combine(parts: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted sum of the per-source scores ([B] each)."""
    return sum(weights[k] * np.asarray(v, np.float32) for k, v in parts.items())


def target_length_tokens(batch: TextBatch, target: int = 8) -> np.ndarray:
    """1 when the response is exactly ``target`` tokens then EOS, falling linearly with the
    distance in tokens (a toy task for testing that RL learns): ``jaxrlhf.rewards:target_length_tokens``."""
    lengths = batch.response_mask.sum(axis=1) - batch.finished.astype(np.int64)  # tokens before EOS
    return 1.0 - np.abs(lengths - target) / target
