"""Preference data: read local files, detect each row's format, clean with a report.

``load_preference_data(["a.jsonl", "b.parquet"])`` returns ``(examples, report)``: every
usable row as a :class:`RankedExample` (one prompt, K >= 2 responses, K scores, higher =
better) and a :class:`CleanReport` counting what was dropped and why. With
``strict=True`` the first unusable row raises :class:`DataError` instead, naming the file,
the line and the field. Nothing is fetched from the network.

Files: ``.jsonl`` (one object per line, blank lines ignored), ``.json`` (a JSON array of
objects, or JSONL content), ``.parquet``, or a folder written by
``datasets.Dataset.save_to_disk``. JSON is parsed here line by line so that a bad line is
reported with its number; for arrays, parquet and saved datasets the "line" is the
1-based element / row index.

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

import collections
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from jaxrlhf.data.formats import is_unpaired_preference, unpaired_message

T = TypeVar("T")

# Every reason a row can be skipped for; CleanReport.skipped counts these strings.
SKIP_REASONS = (
    "invalid JSON", "not an object", "unknown format", "missing prompt", "empty prompt",
    "bad prompt type", "fewer than 2 responses", "score count mismatch", "non-numeric score",
    "empty response", "all scores tied", "bad response type", "chat template mismatch",
    # what json.loads and the parsers would otherwise let through or crash on
    "duplicate key", "invalid text", "unreadable row", "chosen equals rejected", "conflicting scores",
    "pair and ranked fields",
)

_RESPONSE_KEYS = ("response", "responses")
_SCORE_KEYS = ("score", "scores")
Parsed = tuple[str, tuple[str, ...], tuple[float, ...]]  # (prompt, responses, scores) of one row


class DataError(ValueError):
    """Data that cannot be used; one line: ``FILE:LINE: reason (field 'x'): detail``."""


@dataclasses.dataclass(frozen=True)
class RankedExample:
    prompt: str  # text given to the tokenizer as the prompt
    responses: tuple[str, ...]  # K >= 2 responses
    scores: tuple[float, ...]  # same length, higher = better; ties allowed
    source: str  # file path
    line: int  # 1-based line (JSONL) or 1-based element / row index (array, parquet, dataset)


@dataclasses.dataclass
class CleanReport:
    """What loading (and tokenising) did to the data; ``summary()`` is one log line."""

    total: int = 0
    kept: int = 0
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    # filled by tokenize_ranked: 'prompt_truncated' (per prompt), 'response_truncated' (per response)
    truncated: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> str:
        text = f"kept {self.kept} of {self.total} rows"
        for title, counter in (("skipped", self.skipped), ("truncated", self.truncated)):
            items = sorted((item for item in counter.items() if item[1]), key=lambda kv: (-kv[1], kv[0]))
            if items:
                text += f"; {title}: " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in items)
        return text

    def as_dict(self) -> dict:
        return {"total": self.total, "kept": self.kept, "skipped": dict(self.skipped),
                "truncated": dict(self.truncated)}

    def merge(self, other: CleanReport) -> None:
        self.total += other.total
        self.kept += other.kept
        self.skipped.update(other.skipped)
        self.truncated.update(other.truncated)


class _Bad(Exception):
    """One unusable row: a fixed reason (counted), the field at fault and a detail (shown)."""

    def __init__(self, reason: str, field: str | None = None, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(reason)
        self.reason, self.field, self.detail = reason, field, detail

    def message(self, where: str) -> str:
        text = f"{where}: {self.reason}"
        if self.field is not None:
            text += f" (field {self.field!r})"
        return text + (f": {self.detail}" if self.detail else "")


# --------------------------------------------------------------------------- reading files


class _KeysTwice(dict):
    """A JSON object that names a key twice (json.loads would silently keep the last value)."""

    duplicate: str = ""


def _object(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: a dict, or a ``_KeysTwice`` that clean_rows skips."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = _KeysTwice(obj)
    marked.duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
    return marked


class _HugeInt(str):
    """An integer literal of more digits than ``int()`` converts (sys.get_int_max_str_digits)."""


def _int(text: str) -> int | _HugeInt:
    try:
        return int(text)
    except ValueError:  # kept as a marker so that only its row is skipped, even inside an array
        return _HugeInt(text)


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_object, parse_int=_int)


def _check_values(value: Any, field: str = "") -> None:
    """Raise ``_Bad`` for what json.loads lets through but no row may hold: a key named twice,
    a huge integer, a string with a lone surrogate (the tokenizer raises TypeError on it)."""
    if isinstance(value, dict):
        if isinstance(value, _KeysTwice):
            key = f"{field}.{value.duplicate}" if field else value.duplicate
            raise _Bad("duplicate key", key, "named twice in one object; the last value would silently win")
        for k, v in value.items():
            _check_values(k, field)
            _check_values(v, f"{field}.{k}" if field else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_values(v, f"{field}[{i}]")
    elif isinstance(value, _HugeInt):
        raise _Bad("invalid JSON", field or None, f"an integer of {len(value)} digits")
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Bad("invalid text", field or None, f"{e.reason} at character {e.start}") from None


def _json_lines(lines: Iterator[bytes]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, object)`` per non-blank line, or ``(line, _Bad)`` for a line that isn't JSON."""
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield number, _Bad("invalid JSON", None, f"not UTF-8 ({e.reason} at byte {e.start})")
            continue
        if not text.strip():
            continue
        try:
            yield number, _loads(text)
        except json.JSONDecodeError as e:
            yield number, _Bad("invalid JSON", None, f"{e.msg} at column {e.colno}")
        except RecursionError:
            yield number, _Bad("invalid JSON", None, "nested too deeply")
        except ValueError as e:  # e.g. an integer of more than sys.get_int_max_str_digits() digits
            yield number, _Bad("invalid JSON", None, str(e).split(";")[0])


def _read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        yield from _json_lines(f)


def _read_json(path: str) -> Iterator[tuple[int, Any]]:
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
        whole = _loads(text)
    except UnicodeDecodeError:
        whole = None  # the line-by-line reader reports which line is not UTF-8
    except json.JSONDecodeError as e:
        # A broken array has no trustworthy element boundaries, so it cannot be partly
        # skipped; anything else ("Extra data" after the first value) is JSONL content.
        if text.lstrip().startswith("[") and not e.msg.startswith("Extra data"):
            raise DataError(f"{path}:{e.lineno}: invalid JSON array: {e.msg} at column {e.colno}") from None
        whole = None
    except (RecursionError, ValueError) as e:  # nesting or an integer past Python's limits
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        if text.lstrip().startswith("["):  # an array's elements cannot be told apart: no partial skip
            raise DataError(f"{path}: unreadable JSON array: {detail}") from None
        whole = None  # JSONL content: the line reader skips the offending line
    if whole is None:
        yield from _json_lines(iter(data.split(b"\n")))
    elif isinstance(whole, list):
        yield from enumerate(whole, start=1)
    else:
        yield 1, whole  # one object (possibly pretty-printed) is one row


def _read_dataset(path: str, kind: str) -> Iterator[tuple[int, Any]]:
    import datasets  # heavy; only files that need it pay for the import

    if kind == "parquet":
        try:
            ds = datasets.load_dataset("parquet", data_files=path, split="train")
        except Exception as e:  # pyarrow and datasets raise many types for an unreadable file
            raise DataError(f"{path}: cannot read parquet: {e}") from e
    else:
        try:
            ds = datasets.load_from_disk(path)
        except FileNotFoundError as e:
            raise DataError(f"{path}: not a folder written by datasets' save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            splits = list(ds)
            if "train" not in ds and len(splits) != 1:
                raise DataError(f"{path}: saved DatasetDict has splits {splits}; "
                                "expected 'train' or a single split")
            ds = ds["train" if "train" in ds else splits[0]]
    yield from enumerate(ds, start=1)


def _read_rows(path: str) -> Iterator[tuple[int, Any]]:
    """``(line, row)`` pairs of one file or saved-dataset folder; rows are usually dicts."""
    p = Path(path)
    if p.is_dir():
        return _read_dataset(path, "saved")
    if not p.exists():
        raise DataError(f"{path}: no such file or folder")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        return _read_dataset(path, "parquet")
    raise DataError(f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json, .parquet "
                    "or a save_to_disk folder")


# --------------------------------------------------------------------------- rows


def _type(value: Any) -> str:
    return type(value).__name__


def _prompt_text(row: dict) -> str:
    prompt = row.get("prompt")
    if prompt is None:
        raise _Bad("missing prompt", "prompt")
    if not isinstance(prompt, str):
        raise _Bad("bad prompt type", "prompt", f"expected a string, got {_type(prompt)}")
    if not prompt.strip():
        raise _Bad("empty prompt", "prompt")
    return prompt


def _response_text(value: Any, field: str) -> str:
    # The seed wraps each response in a one-element list; anything longer is ambiguous.
    if isinstance(value, (list, tuple)):
        if len(value) != 1 or not isinstance(value[0], str):
            raise _Bad("bad response type", field,
                       f"expected a string or a one-element list of a string, got a list of {len(value)}")
        value = value[0]
    if not isinstance(value, str):
        raise _Bad("bad response type", field, f"expected a string, got {_type(value)}")
    if not value.strip():
        raise _Bad("empty response", field)
    return value


def _scores(value: Any, count: int, field: str) -> tuple[float, ...]:
    if value is None:
        raise _Bad("score count mismatch", field, f"{count} responses but no scores")
    if not isinstance(value, (list, tuple)):
        raise _Bad("score count mismatch", field, f"expected a list of {count} scores, got {_type(value)}")
    if len(value) != count:
        raise _Bad("score count mismatch", field, f"{count} responses but {len(value)} scores")
    for i, s in enumerate(value):
        # bool is an int subclass, but true/false in a score list is a data bug, not a rank.
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise _Bad("non-numeric score", f"{field}[{i}]", f"got {s!r}")
    if len(set(value)) == 1:
        raise _Bad("all scores tied", field, "no pair to learn from")
    return tuple(float(s) for s in value)


def _no_conflicting_scores(parsed: Parsed, field: str) -> Parsed:
    """A ranked row that gives the same answer two different scores contradicts itself."""
    _, responses, scores = parsed
    first: dict[str, int] = {}
    for i, (text, score) in enumerate(zip(responses, scores)):
        j = first.setdefault(text, i)
        if scores[j] != score:
            raise _Bad("conflicting scores", f"{field}[{i}]",
                       f"the same answer as {field}[{j}] with score {score:g} instead of {scores[j]:g}")
    return parsed


def _first_present(row: dict, keys: tuple[str, ...]) -> str:
    return next((k for k in keys if row.get(k) is not None), keys[0])


def _ranked(row: dict) -> Parsed:
    prompt = _prompt_text(row)
    key = _first_present(row, _RESPONSE_KEYS)
    raw = row.get(key)
    if raw is None:
        raise _Bad("fewer than 2 responses", key, "no responses")
    if not isinstance(raw, (list, tuple)):
        raise _Bad("bad response type", key, f"expected a list of responses, got {_type(raw)}")
    if len(raw) < 2:
        raise _Bad("fewer than 2 responses", key, f"got {len(raw)}")
    responses = tuple(_response_text(r, f"{key}[{i}]") for i, r in enumerate(raw))
    score_key = _first_present(row, _SCORE_KEYS)
    return prompt, responses, _scores(row.get(score_key), len(responses), score_key)


def _implicit_prompt(chosen: str, rejected: str) -> int:
    """Where the prompt ends in a standard preference row without ``prompt``: after the
    common start of chosen and rejected, minus the space before the answers (as trl's
    ``extract_prompt`` cuts it, so both sides train on the same text)."""
    n = _common_prefix(chosen, rejected)
    if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return n


def _pair(row: dict) -> Parsed:
    if row.get("prompt") is None and all(isinstance(row.get(k), str) for k in ("chosen", "rejected")):
        n = _implicit_prompt(row["chosen"], row["rejected"])
        if not row["chosen"][:n].strip():
            raise _Bad("missing prompt", "prompt", "no prompt column, and chosen and rejected start differently")
        row = {"prompt": row["chosen"][:n], "chosen": row["chosen"][n:], "rejected": row["rejected"][n:]}
    prompt = _prompt_text(row)
    responses = []
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise _Bad("fewer than 2 responses", key, "missing")
        responses.append(_response_text(row[key], key))
    return prompt, tuple(responses), (1.0, 0.0)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _messages(value: Any, field: str, reason: str) -> list[dict]:
    if not _is_messages(value):
        raise _Bad(reason, field, f"expected a list of {{'role', 'content'}} messages, got {_type(value)}")
    for i, m in enumerate(value):
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _Bad(reason, f"{field}[{i}]", "a message needs string 'role' and 'content'")
    return value


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _last_assistant(messages: list[dict], field: str) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return i
    raise _Bad("bad response type", field, "no assistant message")


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


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
            raise _Bad("fewer than 2 responses", key, "missing")
        pair.append(_messages(row[key], key, "bad response type"))
    chosen, rejected = pair
    if row.get("prompt") == []:
        raise _Bad("empty prompt", "prompt")
    if row.get("prompt") is not None:
        prompt = _messages(row["prompt"], "prompt", "bad prompt type")
        # trl keeps only the completion in chosen/rejected; some datasets repeat the prompt.
        chosen, rejected = [m if m[:len(prompt)] == prompt else prompt + m for m in (chosen, rejected)]
        field = "prompt"
    else:
        n = min(_common_prefix(chosen, rejected), _last_assistant(chosen, "chosen"),
                _last_assistant(rejected, "rejected"))
        prompt, field = chosen[:n], "chosen"
    if not "".join(m["content"] for m in prompt).strip():
        raise _Bad("empty prompt", field, "no message before the answer")
    for key, full in (("chosen", chosen), ("rejected", rejected)):
        if not "".join(m["content"] for m in full[len(prompt):]).strip():
            raise _Bad("empty response", key)

    prompt_text, responses = _render_turns(tokenizer, prompt, {"chosen": chosen, "rejected": rejected})
    return prompt_text, tuple(responses), (1.0, 0.0)


def _render_turns(tokenizer, prompt: list[dict], fulls: dict[str, list[dict]]) -> tuple[str, list[str]]:
    """``(prompt_text, response_texts)``: each conversation in ``fulls`` (field -> messages)
    rendered minus ``prompt`` rendered with the generation prompt.

    The texts follow the plain-row convention the tokenisers rely on: a leading BOS string
    is dropped when the tokenizer adds BOS itself, and a trailing EOS string is dropped
    because EOS is appended as a token (otherwise both would appear twice).
    """
    import jinja2

    try:
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in fulls.values()]
    except (jinja2.TemplateError, ValueError) as e:  # templates raise on roles they reject
        raise _Bad("chat template mismatch", None, f"the chat template failed: {e}") from None
    responses = []
    for key, text in zip(fulls, full_texts):
        if not text.startswith(prompt_text):
            raise _Bad("chat template mismatch", key, "the rendered conversation does not start with the "
                       "rendered prompt (add_generation_prompt=True)")
        text = text[len(prompt_text):]
        eos = getattr(tokenizer, "eos_token", None)
        if eos and text.rstrip().endswith(eos):
            text = text.rstrip()[:-len(eos)]
        if not text.strip():
            raise _Bad("empty response", key)
        responses.append(text)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and prompt_text.startswith(bos) and _adds_bos(tokenizer):
        prompt_text = prompt_text[len(bos):]
    return prompt_text, responses


def _parse_row(row: Any, tokenizer, where: str) -> Parsed:
    """``(prompt, responses, scores)`` of one row; raises ``_Bad`` (a skip reason) or DataError."""
    if not isinstance(row, dict):
        raise _Bad("not an object", None, f"got {_type(row)}")
    present = {k for k, v in row.items() if v is not None}
    if is_unpaired_preference(row):
        raise DataError(unpaired_message(where, "a preference stage (reward model, DPO)",
                             "chosen + rejected or ranked response + score rows"))
    ranked_fields = sorted(present & {*_RESPONSE_KEYS, *_SCORE_KEYS})
    if present & {"chosen", "rejected"}:
        if ranked_fields:  # which one the author meant is unknowable; reading one drops the other
            raise _Bad("pair and ranked fields", ranked_fields[0],
                       f"chosen/rejected and {'/'.join(ranked_fields)} in one row")
        if any(_is_messages(row.get(k)) for k in ("chosen", "rejected", "prompt")):
            parsed = _conversation(row, tokenizer, where)
        else:
            parsed = _pair(row)
        if parsed[1][0] == parsed[1][1]:
            raise _Bad("chosen equals rejected", "rejected", "no preference to learn from")
        return parsed
    if ranked_fields:
        return _no_conflicting_scores(_ranked(row), _first_present(row, _RESPONSE_KEYS))
    if "prompt" in present:
        raise _Bad("fewer than 2 responses", "response", "no 'response', 'chosen' or 'rejected' field")
    raise _Bad("unknown format", None, f"keys {sorted(map(str, row))[:8]}; expected prompt + response + "
               "score, or prompt + chosen + rejected")


# --------------------------------------------------------------------------- entry point


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def clean_rows(paths: str | os.PathLike | list, parse: Callable[[Any, str, int], T], *, strict: bool,
               what: str) -> tuple[list[T], CleanReport]:
    """The cleaning loop every kind of data shares.

    Reads each file's rows in order and turns each into an example with
    ``parse(row, path, line)``; a row it rejects (``_Bad``, or the reader's "invalid JSON")
    is skipped and counted by reason, or with ``strict=True`` raises :class:`DataError` at
    the first one. A missing or unreadable path, or a file with no usable row, raises
    :class:`DataError` in both modes.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise DataError(f"no {what} files given")
    report, examples = CleanReport(), []
    for path in map(str, paths):
        part = CleanReport()
        for line, row in _read_rows(path):
            part.total += 1
            try:
                if isinstance(row, _Bad):
                    raise row  # the reader's "invalid JSON"
                _check_values(row)
                example = parse(row, path, line)
            except DataError:
                raise  # not about this row alone (e.g. no tokenizer for conversational rows)
            except Exception as e:  # whatever one row raises (RecursionError, a tokenizer's TypeError...)
                bad = e if isinstance(e, _Bad) else _Bad("unreadable row", None, _one_line(e))
                if strict:
                    raise DataError(bad.message(f"{path}:{line}")) from None
                part.skipped[bad.reason] += 1
                continue
            examples.append(example)
            part.kept += 1
        if part.kept == 0:
            raise DataError(f"{path}: no usable rows ({part.summary()})")
        report.merge(part)
    return examples, report


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
