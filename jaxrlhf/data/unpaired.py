"""trl's unpaired preference rows (prompt / completion / label, as KTO uses): loaded and cleaned
like the other formats; no stage trains on them yet."""

from __future__ import annotations

import dataclasses
import os

from jaxrlhf.data.preference import _Bad, _type, clean_rows
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
            raise _Bad("not an object", None, f"got {_type(row)}")
        label = row.get("label")
        if not isinstance(label, bool):
            raise _Bad("non-numeric score", "label", f"expected true or false, got {label!r}")
        pair = {"prompt": row.get("prompt"), "completion": row.get("completion")}
        prompt, completion = _parse_sft_row(pair, tokenizer, f"{path}:{line}")
        return UnpairedExample(prompt, completion, label, path, line)

    return clean_rows(paths, parse, strict=strict, what="unpaired preference data")
