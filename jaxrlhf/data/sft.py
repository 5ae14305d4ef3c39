"""SFT data: read local files, clean with a report, tokenise with a loss mask, pack.

``load_sft_data(["a.jsonl"])`` returns ``(examples, report)`` like
:func:`~jaxrlhf.data.preference.load_preference_data`, from the same file types (.jsonl,
.json, .parquet, a ``save_to_disk`` folder) and with the same strict mode and
``FILE:LINE: reason (field 'x'): detail`` messages. Row formats, detected per row from the
keys whose values are not null:

* prompt/response: ``{"prompt": str, "response": str | [str]}`` (``completion`` is an alias
  of ``response``); only the response is trained;
* conversation: ``{"messages": [{"role", "content"}, ...]}``, rendered with the tokenizer's
  chat template; only the LAST assistant message is trained (see :func:`_conversation`);
* plain text: ``{"text": str}``: an empty prompt, the whole text is trained.

:func:`tokenize_sft` makes ``[N, T]`` arrays with the truncation policy of
:func:`~jaxrlhf.data.tokenize.tokenize_ranked`; :func:`pack_sft` packs them into fewer rows.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxrlhf.data.chat import check_messages, is_messages, render_turns
from jaxrlhf.data.rows import (BadRow, CleanReport, DataError, clean_rows, first_present, prompt_text,
                               response_text, type_name)
from jaxrlhf.data.formats import is_unpaired_preference, unpaired_message
from jaxrlhf.data.tokenize import layout_sequences

# Every reason an SFT row can be skipped for; the preference reasons that fit, plus one.
SFT_SKIP_REASONS = (
    "invalid JSON", "not an object", "unknown format", "missing prompt", "empty prompt",
    "bad prompt type", "empty response", "bad response type", "chat template mismatch", "bad messages",
    "duplicate key", "invalid text", "unreadable row",  # found by clean_rows for every kind of data
)

_RESPONSE_KEYS = ("response", "completion")


@dataclasses.dataclass(frozen=True)
class SFTExample:
    prompt: str  # text given to the tokenizer as the prompt; "" for plain-text rows
    response: str  # the trained part
    source: str  # file path
    line: int  # 1-based line (JSONL) or 1-based element / row index (array, parquet, dataset)


class _Skip(BadRow):
    """A skipped row, as ``BadRow`` (same message format), with the SFT reasons allowed."""

    def __init__(self, reason: str, field: str | None = None, detail: str = ""):
        assert reason in SFT_SKIP_REASONS, reason
        Exception.__init__(self, reason)  # BadRow.__init__ only admits the preference reasons
        self.reason, self.field, self.detail = reason, field, detail


# --------------------------------------------------------------------------- rows


def _prompt_response(row: dict) -> tuple[str, str]:
    prompt = prompt_text(row)
    key = first_present(row, _RESPONSE_KEYS)
    if row.get(key) is None:
        raise _Skip("empty response", key, "no 'response' or 'completion' field")
    return prompt, response_text(row[key], key)


def _text(row: dict) -> tuple[str, str]:
    return "", response_text(row["text"], "text")


def _conversation(row: dict, tokenizer, where: str) -> tuple[str, str]:
    """Render a ``messages`` row as ``(prompt, response)`` text around its last assistant turn.

    With ``i`` the index of the last assistant message, the prompt is ``messages[:i]``
    rendered with ``add_generation_prompt=True`` and the response is the rendering of
    ``messages[:i + 1]`` minus that prompt. Earlier assistant turns are context, not
    trained (one row trains one answer; split a dialogue into rows to train every turn);
    messages after the last assistant turn are dropped.
    """
    if tokenizer is None:
        raise DataError(f"{where}: conversational rows (lists of messages) need a tokenizer with a chat "
                        "template; pass tokenizer= to load_sft_data")
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"{where}: conversational rows need a chat template, and the tokenizer has none")
    try:
        messages = check_messages(row["messages"], "messages", "bad prompt type")
    except BadRow as bad:  # same checks and detail, counted under the SFT reason
        raise _Skip("bad messages", bad.field, bad.detail) from None
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
    if last is None:
        raise _Skip("bad messages", "messages", "no assistant message")
    if not "".join(m["content"] for m in messages[:last]).strip():
        raise _Skip("empty prompt", "messages", "no message before the answer")
    if not messages[last]["content"].strip():
        raise _Skip("empty response", f"messages[{last}]")
    rendered_prompt, (response,) = render_turns(tokenizer, messages[:last], {"messages": messages[:last + 1]})
    return rendered_prompt, response


def _prompt_completion_conversation(row: dict, tokenizer, where: str) -> tuple[str, str]:
    """trl's conversational prompt-completion row: ``prompt`` messages (the context) and
    ``completion`` messages (the trained answer), rendered as :func:`_conversation` renders
    ``prompt + completion`` with the answer starting after the prompt."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"{where}: conversational rows (lists of messages) need a tokenizer with a chat "
                        "template; pass tokenizer= to load_sft_data")
    key = first_present(row, _RESPONSE_KEYS)
    prompt = check_messages(row.get("prompt"), "prompt", "bad prompt type")
    completion = check_messages(row.get(key), key, "bad response type")
    if not "".join(m["content"] for m in prompt).strip():
        raise _Skip("empty prompt", "prompt")
    if not "".join(m["content"] for m in completion).strip():
        raise _Skip("empty response", key)
    rendered_prompt, (response,) = render_turns(tokenizer, prompt, {key: prompt + completion})
    return rendered_prompt, response


def _parse_sft_row(row: Any, tokenizer, where: str) -> tuple[str, str]:
    """``(prompt, response)`` of one row; raises ``BadRow`` (a skip reason) or DataError."""
    if not isinstance(row, dict):
        raise _Skip("not an object", None, f"got {type_name(row)}")
    present = {k for k, v in row.items() if v is not None}
    if is_unpaired_preference(row):
        raise DataError(unpaired_message(where, "SFT", "prompt + completion, messages or text rows"))
    if "messages" in present:
        return _conversation(row, tokenizer, where)
    if any(is_messages(row.get(k)) for k in ("prompt", *_RESPONSE_KEYS)):
        return _prompt_completion_conversation(row, tokenizer, where)
    if present & {"prompt", *_RESPONSE_KEYS}:
        return _prompt_response(row)
    if "text" in present:
        return _text(row)
    raise _Skip("unknown format", None, f"keys {sorted(map(str, row))[:8]}; expected prompt + response, "
                "messages, or text")


def load_sft_data(paths: str | os.PathLike | list, *, tokenizer=None,
                  strict: bool = False) -> tuple[list[SFTExample], CleanReport]:
    """Load and clean every file in ``paths`` (in order) into SFT examples.

    Unusable rows are skipped and counted in ``report.skipped`` by reason (the strings in
    ``SFT_SKIP_REASONS``), or with ``strict=True`` the first one raises :class:`DataError`.
    A missing path, an unreadable file, a ``messages`` row without a tokenizer (or chat
    template), or a file with no usable row raises :class:`DataError` in both modes.
    """
    def parse(row, path, line):
        return SFTExample(*_parse_sft_row(row, tokenizer, f"{path}:{line}"), path, line)

    return clean_rows(paths, parse, strict=strict, what="SFT data")


# --------------------------------------------------------------------------- tokenisation


@dataclasses.dataclass
class SFTArrays:
    input_ids: np.ndarray  # [N, T] int32, right-padded with the pad id
    attention_mask: np.ndarray  # [N, T] int32, 1 = real token
    loss_mask: np.ndarray  # [N, T] int32, 1 where token t is a target (predicted from t - 1)
    segment_ids: np.ndarray  # [N, T] int32, 1..n = packed example in the row, 0 = padding

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def take(self, index: np.ndarray) -> SFTArrays:
        """The rows at ``index`` (a copy), e.g. one batch or one split."""
        index = np.asarray(index, dtype=np.int64)
        return SFTArrays(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    def as_dict(self) -> dict[str, np.ndarray]:
        # not dataclasses.asdict: that deep-copies every array
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def tokenize_prompt_responses(prompts: Sequence[str], responses: Sequence[Sequence[str]], tokenizer, *,
                              max_length: int, min_prompt_tokens: int | None, append_eos: bool,
                              report: CleanReport | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask, loss_mask)``, each ``[N, K, max_length]`` int32, for N
    prompts with K responses each, laid out and truncated exactly as ``tokenize_ranked``.

    ``loss_mask`` is 1 on the response tokens and the appended EOS (what survives
    truncation), 0 on the prompt, padding and always position 0, which nothing predicts (it
    matters for an empty prompt with a tokenizer that adds no BOS).
    """
    if len(prompts) == 0:
        raise ValueError("no examples to tokenise")
    k = len(responses[0])
    assert all(len(r) == k for r in responses), "every prompt needs the same number of responses"
    input_ids, attention_mask, loss_mask, _ = layout_sequences(
        prompts, responses, tokenizer, max_length=max_length, min_prompt_tokens=min_prompt_tokens,
        append_eos=append_eos, num_slots=k, report=report)
    return input_ids, attention_mask, loss_mask


def tokenize_sft(examples: Sequence[SFTExample], tokenizer, *, max_length: int,
                 min_prompt_tokens: int | None = None, append_eos: bool = True,
                 train_on_prompt: bool = False, report: CleanReport | None = None) -> SFTArrays:
    """Tokenise SFT examples into ``[N, max_length]`` arrays, one example per row.

    A sequence is ``tokenizer(prompt)`` (with special tokens, so BOS when the tokenizer adds
    one) + ``tokenizer(response, add_special_tokens=False)`` + ``[eos_token_id]`` (if
    ``append_eos``), truncated as ``tokenize_ranked`` does: the prompt is cut from the left
    down to ``min_prompt_tokens`` (default ``max_length // 4``) keeping its special tokens,
    then the response from the right (losing its EOS). ``report.truncated`` counts
    ``'prompt_truncated'`` and ``'response_truncated'`` per example.

    ``loss_mask`` marks the response tokens and the EOS: a plain-text row (empty prompt)
    trains everything after the special prefix. With ``train_on_prompt`` it marks every real
    token but the first (language modelling of the whole sequence, as transformers' loss
    with ``labels=input_ids``): the prompt's tokens are computed anyway, and small models
    trained from scratch can learn its text from them.
    """
    # input_ids, attention_mask, loss_mask, segment_ids: [N, T]
    examples = list(examples)
    if not examples:
        raise ValueError("tokenize_sft: no examples")
    input_ids, attention_mask, loss_mask = tokenize_prompt_responses(
        [ex.prompt for ex in examples], [[ex.response] for ex in examples], tokenizer,
        max_length=max_length, min_prompt_tokens=min_prompt_tokens, append_eos=append_eos, report=report)
    attention_mask = attention_mask[:, 0]
    loss_mask = loss_mask[:, 0]
    if train_on_prompt:
        loss_mask = attention_mask.copy()
        loss_mask[:, 0] = 0  # nothing predicts the first token
    return SFTArrays(input_ids[:, 0], attention_mask, loss_mask, attention_mask.copy())


def pack_sft(arrays: SFTArrays, *, pad_id: int | None = None) -> SFTArrays:
    """Pack the real tokens of right-padded rows into as few rows of the same length T.

    Best-fit decreasing (trl's default "bfd" strategy): longest example first, each into the
    open row whose free space fits it most tightly, else a new row. No example is split; the
    result depends only on the input. Next-fit in input order leaves a third of the tokens
    as padding when examples run past T/2 (the length-control demo's do), best fit a few
    percent. ``segment_ids`` number the examples of a row 1..n (0 = padding). The first
    token of every example keeps ``loss_mask`` 0 (nothing in its own segment predicts it),
    so with a model that isolates segments the loss over packed rows equals the loss
    unpacked. ``pad_id`` defaults to the value at a padded position of the input (else 0).
    """
    # input_ids, attention_mask, loss_mask, segment_ids: [N', T], N' <= N
    n, t = arrays.input_ids.shape
    lengths = arrays.attention_mask.sum(-1).tolist()
    if pad_id is None:
        padded = arrays.input_ids[arrays.attention_mask == 0]
        pad_id = int(padded[0]) if padded.size else 0
    starts: list[tuple[int, int] | None] = [None] * n  # (packed row, column); None: empty example
    free: list[tuple[int, int]] = []  # (free columns, row), sorted: the tightest fit is a bisect away
    rows = -1
    for i in sorted(range(n), key=lambda j: -lengths[j]):  # stable: equal lengths keep input order
        length = lengths[i]
        if length == 0:
            continue
        k = bisect.bisect_left(free, (length, -1))
        if k < len(free):
            room, row = free.pop(k)
        else:
            rows += 1
            room, row = t, rows
        starts[i] = (row, t - room)
        if room > length:
            bisect.insort(free, (room - length, row))
    m = rows + 1
    out = SFTArrays(np.full((m, t), pad_id, np.int32), np.zeros((m, t), np.int32),
                    np.zeros((m, t), np.int32), np.zeros((m, t), np.int32))
    segment = np.zeros(max(m, 1), np.int32)
    for i in sorted((i for i in range(n) if starts[i]), key=lambda j: starts[j]):
        (r, c), length = starts[i], lengths[i]
        segment[r] += 1
        out.input_ids[r, c:c + length] = arrays.input_ids[i, :length]
        out.attention_mask[r, c:c + length] = 1
        out.loss_mask[r, c:c + length] = arrays.loss_mask[i, :length]
        out.loss_mask[r, c] = 0  # predicted from the previous example's last token otherwise
        out.segment_ids[r, c:c + length] = segment[r]
    return out
