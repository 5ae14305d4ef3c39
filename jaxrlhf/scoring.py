"""Score (prompt, answer) pairs with a reward model exactly as RM training and PPO do.

A sequence is laid out by the RM stage's own code (:func:`jaxrlhf.data.tokenize.layout_sequences`):
``tokenizer(prompt)`` with its special tokens (BOS...) + ``tokenizer(answer)`` without them
+ EOS when the RM was trained with ``append_eos`` (recorded in the export's config.json), and
the reward is read at the last real token (the EOS). ``tokenizer(prompt + answer)`` differs in
three ways: no EOS (the reward is read one token early, where training never read it), tokens
merged across the prompt/answer boundary by a BPE tokenizer, and transformers' sequence
classifier reading at the last token that is not ``pad_token_id`` (an EOS that is also the pad
token is skipped). The normalised reward is ``gain * raw + bias``, what PPO with
``normalize: true`` pays.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

PAD_TO = 32  # batches are cut to a multiple of this many tokens: few compilations, little padding


@dataclasses.dataclass(frozen=True)
class PairScores:
    reward: np.ndarray  # [N] float32: gain * raw + bias (PPO's normalised reward)
    raw: np.ndarray  # [N] float32: the score head's output


def layout_pairs(prompts: Sequence[str], answers: Sequence[str], tokenizer, *,
                 append_eos: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` [N, T], right-padded, T the longest pair (nothing cut): the
    RM stage's layout of one answer per prompt."""
    from jaxrlhf.data.tokenize import layout_sequences

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    eos = 1 if append_eos and tokenizer.eos_token_id is not None else 0
    prompt_lens = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    answer_lens = [len(ids) for ids in tokenizer(list(answers), add_special_tokens=False)["input_ids"]]
    longest = max(p + a + eos for p, a in zip(prompt_lens, answer_lens))
    input_ids, attention_mask, _, _ = layout_sequences(
        prompts, [[a] for a in answers], tokenizer, max_length=max(longest, 2), min_prompt_tokens=0,
        append_eos=append_eos, num_slots=1, report=None)
    return input_ids[:, 0], attention_mask[:, 0]


def _forward(graphdef, state, input_ids, attention_mask):
    return nnx.merge(graphdef, state)(input_ids, attention_mask)


def score_tokens(model, input_ids: np.ndarray, attention_mask: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
    """Raw rewards [N] of right-padded rows, ``batch_size`` rows at a time, each batch cut to a
    multiple of ``PAD_TO`` tokens past its longest row (the last batch padded with copies)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(functools.partial(_forward, graphdef))
    out = []
    for start in range(0, len(input_ids), batch_size):
        rows = np.arange(start, min(start + batch_size, len(input_ids)))
        padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
        width = int(attention_mask[rows].sum(axis=1).max())
        width = min(-(-width // PAD_TO) * PAD_TO, input_ids.shape[1])
        rewards = forward(state, input_ids[padded, :width], attention_mask[padded, :width])
        out.append(np.asarray(rewards, np.float32)[:len(rows)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def score_pairs(model_dir: str | Path, prompts: Sequence[str], answers: Sequence[str], *,
                append_eos: bool | None = None, batch_size: int = 16, dtype: str = "float32",
                mesh=None) -> PairScores:
    """The reward model's normalised and raw rewards of each (prompt, answer) pair.

    ``prompts`` are the text the model continues (a chat prompt already rendered, as PPO's prompt
    files are); ``append_eos`` defaults to the RM's own (config.json ``reward_layout``), else True
    (the RM stage's default)."""
    from jaxrlhf.models import CheckpointError, load_tokenizer, reward_model_from_pretrained
    from jaxrlhf.models.io import SEQ_CLS_SUFFIX, read_hf_config
    from jaxrlhf.tokenizer_check import check_tokenizer_fits, model_vocab_size

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    architectures = read_hf_config(model_dir).get("architectures") or []
    if not any(str(a).endswith(SEQ_CLS_SUFFIX) for a in architectures):  # a causal LM would get a random head
        raise CheckpointError(f"{model_dir}: not a reward model (architectures {architectures}; expected "
                              f"*{SEQ_CLS_SUFFIX}, e.g. jaxrlhf rm's final/ or its export)")
    tokenizer = load_tokenizer(model_dir)
    check_tokenizer_fits(tokenizer, model_vocab_size(model_dir), tokenizer_at=str(model_dir), model_at=str(model_dir))
    model = reward_model_from_pretrained(model_dir, dtype=dtype, mesh=mesh)
    if append_eos is None:
        append_eos = True if model.append_eos is None else model.append_eos
    if not len(prompts):
        empty = np.zeros(0, np.float32)
        return PairScores(empty, empty)
    input_ids, attention_mask = layout_pairs(prompts, answers, tokenizer, append_eos=append_eos)
    raw = score_tokens(model, input_ids, attention_mask, batch_size=batch_size)
    gain, bias = np.asarray(model.normalization.get_value(), np.float32)
    return PairScores((raw * gain + bias).astype(np.float32), raw)


def _answer(example) -> str:
    """A row's answer: trl's ``completion``, or ``response`` / ``answer``, as one string (or the
    seed's one-element list of one). An empty answer is scored: PPO scores an immediate EOS too."""
    from jaxrlhf.data import DataError

    where = f"{example.source}:{example.line}"
    field = next((f for f in ("completion", "response", "answer") if example.meta.get(f) is not None), None)
    if field is None:
        raise DataError(f"{where}: missing answer (field 'completion', 'response' or 'answer')")
    value = example.meta[field]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise DataError(f"{where}: bad answer type (field '{field}'): expected a string, got {type(value).__name__}")
    return value


def score_file(model_dir: str | Path, data_file: str | Path, out_file: str | Path, *, append_eos: bool | None = None,
               batch_size: int = 16, dtype: str = "float32", mesh=None) -> dict:
    """One JSON line per input row: its fields plus ``reward`` (normalised) and ``raw_reward``.

    Rows: ``prompt`` (a string, or trl's conversational prompt / ``messages`` rendered with the
    chat template as PPO renders prompts) and the answer as ``completion``, ``response`` or
    ``answer``. A row that cannot be read stops the command with ``FILE:LINE: reason``, so the
    output lines up with the input."""
    from jaxrlhf.data.prompts import load_prompts
    from jaxrlhf.models import load_tokenizer

    examples, _ = load_prompts(str(data_file), tokenizer=load_tokenizer(model_dir), strict=True)
    answers = [_answer(e) for e in examples]
    scores = score_pairs(model_dir, [e.prompt for e in examples], answers, append_eos=append_eos,
                         batch_size=batch_size, dtype=dtype, mesh=mesh)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for example, reward, raw in zip(examples, scores.reward, scores.raw):
            record = {"prompt": example.prompt, **example.meta, "reward": float(reward), "raw_reward": float(raw)}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"rows": len(examples), "mean_reward": float(np.mean(scores.reward)) if len(examples) else 0.0}
