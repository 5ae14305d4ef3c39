"""Reading data files row by row and cleaning them with a report: the part every kind of
data (preference, SFT, prompts, unpaired) shares.

``clean_rows(paths, parse, strict=...)`` reads ``.jsonl`` / ``.json`` / ``.parquet`` files or
``datasets.save_to_disk`` folders and turns each row into an example with ``parse``; a row
``parse`` rejects (:class:`BadRow`, or any exception it raises) is skipped and counted by
reason in a :class:`CleanReport`, or with ``strict=True`` is a one-line :class:`DataError`
naming the file, the line and the field. JSON is parsed here line by line so that a bad line
is reported with its number; for arrays, parquet and saved datasets the "line" is the 1-based
element / row index.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

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


class DataError(ValueError):
    """Data that cannot be used; one line: ``FILE:LINE: reason (field 'x'): detail``."""



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



class BadRow(Exception):
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
    """Raise ``BadRow`` for what json.loads lets through but no row may hold: a key named twice,
    a huge integer, a string with a lone surrogate (the tokenizer raises TypeError on it)."""
    if isinstance(value, dict):
        if isinstance(value, _KeysTwice):
            key = f"{field}.{value.duplicate}" if field else value.duplicate
            raise BadRow("duplicate key", key, "named twice in one object; the last value would silently win")
        for k, v in value.items():
            _check_values(k, field)
            _check_values(v, f"{field}.{k}" if field else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_values(v, f"{field}[{i}]")
    elif isinstance(value, _HugeInt):
        raise BadRow("invalid JSON", field or None, f"an integer of {len(value)} digits")
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadRow("invalid text", field or None, f"{e.reason} at character {e.start}") from None



def _json_lines(lines: Iterator[bytes]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, object)`` per non-blank line, or ``(line, BadRow)`` for a line that isn't JSON."""
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield number, BadRow("invalid JSON", None, f"not UTF-8 ({e.reason} at byte {e.start})")
            continue
        if not text.strip():
            continue
        try:
            yield number, _loads(text)
        except json.JSONDecodeError as e:
            yield number, BadRow("invalid JSON", None, f"{e.msg} at column {e.colno}")
        except RecursionError:
            yield number, BadRow("invalid JSON", None, "nested too deeply")
        except ValueError as e:  # e.g. an integer of more than sys.get_int_max_str_digits() digits
            yield number, BadRow("invalid JSON", None, str(e).split(";")[0])



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



def read_rows(path: str) -> Iterator[tuple[int, Any]]:
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



# --------------------------------------------------------------------------- fields every format shares


def type_name(value: Any) -> str:
    return type(value).__name__



def prompt_text(row: dict) -> str:
    prompt = row.get("prompt")
    if prompt is None:
        raise BadRow("missing prompt", "prompt")
    if not isinstance(prompt, str):
        raise BadRow("bad prompt type", "prompt", f"expected a string, got {type_name(prompt)}")
    if not prompt.strip():
        raise BadRow("empty prompt", "prompt")
    return prompt



def response_text(value: Any, field: str) -> str:
    # The seed wraps each response in a one-element list; anything longer is ambiguous.
    if isinstance(value, (list, tuple)):
        if len(value) != 1 or not isinstance(value[0], str):
            raise BadRow("bad response type", field,
                       f"expected a string or a one-element list of a string, got a list of {len(value)}")
        value = value[0]
    if not isinstance(value, str):
        raise BadRow("bad response type", field, f"expected a string, got {type_name(value)}")
    if not value.strip():
        raise BadRow("empty response", field)
    return value



def first_present(row: dict, keys: tuple[str, ...]) -> str:
    return next((k for k in keys if row.get(k) is not None), keys[0])



# --------------------------------------------------------------------------- the cleaning loop


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__



def clean_rows(paths: str | os.PathLike | list, parse: Callable[[Any, str, int], T], *, strict: bool,
               what: str) -> tuple[list[T], CleanReport]:
    """The cleaning loop every kind of data shares.

    Reads each file's rows in order and turns each into an example with
    ``parse(row, path, line)``; a row it rejects (``BadRow``, or the reader's "invalid JSON")
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
        for line, row in read_rows(path):
            part.total += 1
            try:
                if isinstance(row, BadRow):
                    raise row  # the reader's "invalid JSON"
                _check_values(row)
                example = parse(row, path, line)
            except DataError:
                raise  # not about this row alone (e.g. no tokenizer for conversational rows)
            except Exception as e:  # whatever one row raises (RecursionError, a tokenizer's TypeError...)
                bad = e if isinstance(e, BadRow) else BadRow("unreadable row", None, one_line(e))
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
