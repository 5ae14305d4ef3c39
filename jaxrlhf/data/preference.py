"""Preference data: read local files, detect each row's format, clean with a report.

``load_preference_data(["a.jsonl", "b.parquet"])`` returns ``(examples, report)``: every
usable row as a :class:`RankedExample` (one prompt, K >= 2 responses, K scores, higher =
better) and a :class:`CleanReport` counting what was dropped and why. With
``strict=True`` the first unusable row raises :class:`DataError` instead, naming the file,
the line and the field. Nothing is fetched from the network.

Files: ``.jsonl`` (one object per line, blank lines ignored), ``.json`` (a JSON array of
objects, or JSONL content), ``.parquet``, or a folder written by
``datasets.Dataset.save_to_disk``; reading and the skip-and-count loop live in
:mod:`jaxrlhf.data.rows`.

Row formats, detected per row from the keys whose values are not null (a parquet file
mixing formats has every column on every row):

* ranked (the seed format): ``{"prompt": str, "response": [["a"], "b", ...], "score": [3, 2, ...]}``
  (``responses`` / ``scores`` are accepted as aliases; a response is a string or a
  one-element list of one string);
* pairs: ``{"prompt": str, "chosen": str, "rejected": str}`` -> scores (1.0, 0.0);
* conversational pairs: ``{"chosen": [messages], "rejected": [messages]}``, optionally with
  ``"prompt": [messages]``; rendered with the tokenizer's chat template (see
  :func:`_conversation`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from jaxrlhf.data.chat import check_messages, common_prefix, is_messages, last_assistant, render_turns
from jaxrlhf.data.formats import is_unpaired_preference, unpaired_message
from jaxrlhf.data.rows import (SKIP_REASONS, BadRow, CleanReport, DataError, clean_rows, first_present,
                               prompt_text, response_text, type_name)

__all__ = ["SKIP_REASONS", "CleanReport", "DataError", "RankedExample", "load_preference_data"]

_RESPONSE_KEYS = ("response", "responses")
_SCORE_KEYS = ("score", "scores")
Parsed = tuple[str, tuple[str, ...], tuple[float, ...]]  # (prompt, responses, scores) of one row


@dataclasses.dataclass(frozen=True)
class RankedExample:
    prompt: str  # text given to the tokenizer as the prompt
    responses: tuple[str, ...]  # K >= 2 responses
    scores: tuple[float, ...]  # same length, higher = better; ties allowed
    source: str  # file path
    line: int  # 1-based line (JSONL) or 1-based element / row index (array, parquet, dataset)


# --------------------------------------------------------------------------- rows


def _scores(value: Any, count: int, field: str) -> tuple[float, ...]:
    if value is None:
        raise BadRow("score count mismatch", field, f"{count} responses but no scores")
    if not isinstance(value, (list, tuple)):
        raise BadRow("score count mismatch", field, f"expected a list of {count} scores, got {type_name(value)}")
    if len(value) != count:
        raise BadRow("score count mismatch", field, f"{count} responses but {len(value)} scores")
    for i, s in enumerate(value):
        # bool is an int subclass, but true/false in a score list is a data bug, not a rank.
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise BadRow("non-numeric score", f"{field}[{i}]", f"got {s!r}")
    if len(set(value)) == 1:
        raise BadRow("all scores tied", field, "no pair to learn from")
    return tuple(float(s) for s in value)


def _no_conflicting_scores(parsed: Parsed, field: str) -> Parsed:
    """A ranked row that gives the same answer two different scores contradicts itself."""
    _, responses, scores = parsed
    first: dict[str, int] = {}
    for i, (text, score) in enumerate(zip(responses, scores)):
        j = first.setdefault(text, i)
        if scores[j] != score:
            raise BadRow("conflicting scores", f"{field}[{i}]",
                       f"the same answer as {field}[{j}] with score {score:g} instead of {scores[j]:g}")
    return parsed


def _ranked(row: dict) -> Parsed:
    prompt = prompt_text(row)
    key = first_present(row, _RESPONSE_KEYS)
    raw = row.get(key)
    if raw is None:
        raise BadRow("fewer than 2 responses", key, "no responses")
    if not isinstance(raw, (list, tuple)):
        raise BadRow("bad response type", key, f"expected a list of responses, got {type_name(raw)}")
    if len(raw) < 2:
        raise BadRow("fewer than 2 responses", key, f"got {len(raw)}")
    responses = tuple(response_text(r, f"{key}[{i}]") for i, r in enumerate(raw))
    score_key = first_present(row, _SCORE_KEYS)
    return prompt, responses, _scores(row.get(score_key), len(responses), score_key)


def _implicit_prompt(chosen: str, rejected: str) -> int:
    """Where the prompt ends in a standard preference row without ``prompt``: after the
    common start of chosen and rejected, minus the space before the answers (as trl's
    ``extract_prompt`` cuts it, so both sides train on the same text)."""
    n = common_prefix(chosen, rejected)
    if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return n


def _pair(row: dict) -> Parsed:
    if row.get("prompt") is None and all(isinstance(row.get(k), str) for k in ("chosen", "rejected")):
        n = _implicit_prompt(row["chosen"], row["rejected"])
        if not row["chosen"][:n].strip():
            raise BadRow("missing prompt", "prompt", "no prompt column, and chosen and rejected start differently")
        row = {"prompt": row["chosen"][:n], "chosen": row["chosen"][n:], "rejected": row["rejected"][n:]}
    prompt = prompt_text(row)
    responses = []
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise BadRow("fewer than 2 responses", key, "missing")
        responses.append(response_text(row[key], key))
    return prompt, tuple(responses), (1.0, 0.0)


def _conversation(row: dict, tokenizer, where: str) -> Parsed:
    """Render a conversational pair as prompt text + two response texts.

    The prompt is the explicit ``prompt`` messages, else the longest common prefix of
    chosen and rejected, cut before the last assistant turn. It is rendered with
    ``add_generation_prompt=True``; each response is the rendering of the whole
    conversation minus that prompt text. The texts are brought to the plain-row
    convention that tokenize_ranked relies on: a leading BOS string is dropped when the
    tokenizer adds BOS itself, and a trailing EOS string is dropped because EOS is
    appended as a token (otherwise both would appear twice).
    """
    if tokenizer is None:
        raise DataError(f"{where}: conversational rows (lists of messages) need a tokenizer with a chat "
                        "template; pass tokenizer= to load_preference_data")
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"{where}: conversational rows need a chat template, and the tokenizer has none")
    pair = []
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise BadRow("fewer than 2 responses", key, "missing")
        pair.append(check_messages(row[key], key, "bad response type"))
    chosen, rejected = pair
    if row.get("prompt") == []:
        raise BadRow("empty prompt", "prompt")
    if row.get("prompt") is not None:
        prompt = check_messages(row["prompt"], "prompt", "bad prompt type")
        # trl keeps only the completion in chosen/rejected; some datasets repeat the prompt.
        chosen, rejected = [m if m[:len(prompt)] == prompt else prompt + m for m in (chosen, rejected)]
        field = "prompt"
    else:
        n = min(common_prefix(chosen, rejected), last_assistant(chosen, "chosen"),
                last_assistant(rejected, "rejected"))
        prompt, field = chosen[:n], "chosen"
    if not "".join(m["content"] for m in prompt).strip():
        raise BadRow("empty prompt", field, "no message before the answer")
    for key, full in (("chosen", chosen), ("rejected", rejected)):
        if not "".join(m["content"] for m in full[len(prompt):]).strip():
            raise BadRow("empty response", key)

    rendered_prompt, responses = render_turns(tokenizer, prompt, {"chosen": chosen, "rejected": rejected})
    return rendered_prompt, tuple(responses), (1.0, 0.0)


def _parse_row(row: Any, tokenizer, where: str) -> Parsed:
    """``(prompt, responses, scores)`` of one row; raises ``BadRow`` (a skip reason) or DataError."""
    if not isinstance(row, dict):
        raise BadRow("not an object", None, f"got {type_name(row)}")
    present = {k for k, v in row.items() if v is not None}
    if is_unpaired_preference(row):
        raise DataError(unpaired_message(where, "a preference stage (reward model, DPO)",
                             "chosen + rejected or ranked response + score rows"))
    ranked_fields = sorted(present & {*_RESPONSE_KEYS, *_SCORE_KEYS})
    if present & {"chosen", "rejected"}:
        if ranked_fields:  # which one the author meant is unknowable; reading one drops the other
            raise BadRow("pair and ranked fields", ranked_fields[0],
                       f"chosen/rejected and {'/'.join(ranked_fields)} in one row")
        if any(is_messages(row.get(k)) for k in ("chosen", "rejected", "prompt")):
            parsed = _conversation(row, tokenizer, where)
        else:
            parsed = _pair(row)
        if parsed[1][0] == parsed[1][1]:
            raise BadRow("chosen equals rejected", "rejected", "no preference to learn from")
        return parsed
    if ranked_fields:
        return _no_conflicting_scores(_ranked(row), first_present(row, _RESPONSE_KEYS))
    if "prompt" in present:
        raise BadRow("fewer than 2 responses", "response", "no 'response', 'chosen' or 'rejected' field")
    raise BadRow("unknown format", None, f"keys {sorted(map(str, row))[:8]}; expected prompt + response + "
               "score, or prompt + chosen + rejected")


# --------------------------------------------------------------------------- entry point


def load_preference_data(paths: str | os.PathLike | list, *, tokenizer=None,
                         strict: bool = False) -> tuple[list[RankedExample], CleanReport]:
    """Load and clean every file in ``paths`` (in order) into ranked examples.

    Unusable rows are skipped and counted in ``report.skipped`` by reason (the strings in
    ``SKIP_REASONS``), or with ``strict=True`` the first one raises :class:`DataError`.
    A missing path, an unreadable file, a conversational row without a tokenizer, or a
    file with no usable row raises :class:`DataError` in both modes.
    """
    def parse(row, path, line):
        return RankedExample(*_parse_row(row, tokenizer, f"{path}:{line}"), path, line)

    return clean_rows(paths, parse, strict=strict, what="preference data")
