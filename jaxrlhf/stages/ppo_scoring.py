"""Scoring PPO rollouts: reward models on the same token ids (on device), rules on the
decoded text (on the host), combined by weight; a ``dense`` reward model also pays each answer
token its change in score (prefix shaping)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError


def _reward_model_scores(graphdef, state, input_ids, attention_mask, *, normalize: bool):
    rm = nnx.merge(graphdef, state)
    rewards = rm(input_ids, attention_mask)
    return rm.normalized(rewards) if normalize else rewards


def _reward_model_prefix_scores(graphdef, state, input_ids, attention_mask, *, prompt_len: int,
                                normalize: bool):
    """[B, N + 1]: the RM's score of prompt + the first j response tokens, j = 0..N. Causal
    attention makes the value at a position the score of the sequence ending there, so one
    forward scores every prefix."""
    rm = nnx.merge(graphdef, state)
    values = rm.token_values(input_ids, attention_mask)[:, prompt_len - 1:]
    return rm.normalized(values) if normalize else values


@dataclasses.dataclass
class ScoredBatch:
    """total: [B] the weighted sequence score (what is logged as ``score``); terminal: [B] the
    part paid at the last token; dense: [B, N] per-token rewards of ``dense`` reward models
    (prefix shaping) or None. total = terminal + the dense rows' sums + each dense model's
    score of the empty answer."""

    total: np.ndarray
    terminal: np.ndarray
    dense: jax.Array | None
    metrics: dict[str, float]

    def take(self, rows) -> "ScoredBatch":
        """The scores of ``rows`` only (the metrics stay those of the whole batch)."""
        return ScoredBatch(self.total[rows], self.terminal[rows], None if self.dense is None else self.dense[rows],
                           self.metrics)


def source_key(source, position: int) -> str:
    """A reward source's metric name: short and relative (no folder paths in TensorBoard tags):
    ``model0`` / ``rule1_length_control_reward`` (its position in the rewards list, and a rule's
    function name)."""
    if source.kind == "model":
        return f"model{position}"
    return f"rule{position}_{source.function.rpartition(':')[2]}"


class Scorer:
    """Scores rollouts: reward models on device (same token ids), rules on the host."""

    def __init__(self, sources, *, tokenizer, policy_vocab: int, mesh, dtype: str):
        from jaxrlhf.models import reward_model_from_pretrained
        from jaxrlhf.rewards import load_rule

        self.sources, self.tokenizer, self.models, self.rules = list(sources), tokenizer, {}, {}
        self.eos_ids = [tokenizer.eos_token_id]
        self.dense_keys = set()
        for i, source in enumerate(self.sources):
            key = source_key(source, i)
            if source.kind == "model":
                rm = reward_model_from_pretrained(source.path, dtype=dtype, mesh=mesh)
                if rm.config.vocab_size != policy_vocab:
                    raise ConfigError(f"reward model {source.path} has vocab {rm.config.vocab_size}, the "
                                      f"policy {policy_vocab}: it must score the policy's token ids")
                graphdef, state = nnx.split(rm)
                if source.dense:
                    self.dense_keys.add(key)
                    forward = jax.jit(functools.partial(_reward_model_prefix_scores, graphdef,
                                                        normalize=source.normalize), static_argnames="prompt_len")
                else:
                    forward = jax.jit(functools.partial(_reward_model_scores, graphdef,
                                                        normalize=source.normalize))
                self.models[key] = (forward, state, source.include_eos)
            else:
                self.rules[key] = (source.function, functools.partial(load_rule(source.function), **source.kwargs))
        self.weights = {source_key(s, i): s.weight for i, s in enumerate(self.sources)}
        self.keys = list(self.weights)

    def __call__(self, input_ids, attention_mask, prompt_len, response_mask, finished, prompts,
                 meta) -> ScoredBatch:
        from jaxrlhf.rewards import TextBatch, check_rule_scores, combine
        from jaxrlhf.sharding import to_host
        from jaxrlhf.steps.rl import prefix_shaping

        parts, dense = {}, None
        eos = jnp.isin(input_ids[:, prompt_len:], jnp.asarray(self.eos_ids))
        answer_mask = jnp.asarray(response_mask) * (~eos).astype(jnp.int32)  # [B, N] response tokens but EOS
        for key, (forward, state, include_eos) in self.models.items():
            if key in self.dense_keys:
                potentials = forward(state, input_ids, attention_mask, prompt_len=prompt_len)  # [B, N + 1]
                answer_len = answer_mask.sum(axis=1)
                parts[key] = to_host(jnp.take_along_axis(potentials, answer_len[:, None], axis=1)[:, 0])
                shaped = self.weights[key] * prefix_shaping(potentials, answer_mask)
                dense = shaped if dense is None else dense + shaped
                continue
            mask = attention_mask
            if not include_eos:  # the RM was trained on answers without EOS: read at the last answer token
                mask = mask.at[:, prompt_len:].set(mask[:, prompt_len:] * (~eos).astype(mask.dtype))
            parts[key] = to_host(forward(state, input_ids, mask))
        if self.rules:
            tokens = to_host(input_ids)[:, prompt_len:]
            mask = np.asarray(response_mask)
            done = np.asarray(finished)
            texts = [self.tokenizer.decode(t[: int(m.sum()) - int(d)], skip_special_tokens=True)
                     for t, m, d in zip(tokens, mask, done)]
            batch = TextBatch(prompts, texts, tokens, mask, done, meta)
            for key, (spec, rule) in self.rules.items():
                parts[key] = check_rule_scores(spec, rule(batch), len(texts))
        metrics = {f"reward_{k}": float(np.mean(v)) for k, v in parts.items()}
        total = combine(parts, self.weights).astype(np.float32)
        terminal_parts = {k: v for k, v in parts.items() if k not in self.dense_keys}
        terminal = (combine(terminal_parts, self.weights).astype(np.float32) if terminal_parts
                    else np.zeros_like(total))
        return ScoredBatch(total, terminal, dense, metrics)
