"""trl's unpaired preference rows (prompt / completion / label, as KTO uses): loaded and cleaned
like the other formats; no stage trains on them yet."""

from __future__ import annotations

import dataclasses
import os

from jaxrlhf.data.rows import BadRow, clean_rows, type_name
from jaxrlhf.data.sft import _parse_sft_row


@dataclasses.dataclass(frozen=True)
class UnpairedExample:
    prompt: str  # text given to the tokenizer as the prompt (chat template applied if conversational)
    completion: str
    label: bool  # True: a desirable completion
    source: str
    line: int


def load_unpaired_preference(paths: str | os.PathLike | list, *, tokenizer=None, strict: bool = False):
    """``(examples, report)`` of trl's unpaired preference rows, standard or conversational,
    cleaned like the other loaders (conversational rows render as SFT's prompt-completion rows)."""
    def parse(row, path, line):
        if not isinstance(row, dict):
            raise BadRow("not an object", None, f"got {type_name(row)}")
        label = row.get("label")
        if not isinstance(label, bool):
            raise BadRow("non-numeric score", "label", f"expected true or false, got {label!r}")
        pair = {"prompt": row.get("prompt"), "completion": row.get("completion")}
        prompt, completion = _parse_sft_row(pair, tokenizer, f"{path}:{line}")
        return UnpairedExample(prompt, completion, label, path, line)

    return clean_rows(paths, parse, strict=strict, what="unpaired preference data")
