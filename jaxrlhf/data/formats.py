"""trl's dataset formats, named per row, and the one no stage trains on yet (unpaired preference).

trl (https://huggingface.co/docs/trl/dataset_formats) names a row by its columns, each
either "standard" (strings) or "conversational" (lists of ``{"role", "content"}`` messages):

=====================  ===========================================  ==========================
format                 columns                                      loaded by
=====================  ===========================================  ==========================
language modeling      ``text`` / ``messages``                      ``load_sft_data``
prompt-only            ``prompt``                                   ``load_prompts``
prompt-completion      ``prompt`` + ``completion``                  ``load_sft_data``, ``load_prompts``
preference             [``prompt``] + ``chosen`` + ``rejected``      ``load_preference_data``
unpaired preference    ``prompt`` + ``completion`` + ``label``       :func:`load_unpaired_preference`
=====================  ===========================================  ==========================

A preference row without ``prompt`` has an implicit prompt: the common start of chosen and
rejected. Unpaired preference rows (KTO's data) carry one completion and a bool label; no
stage here trains on them, so the stage loaders stop at the first one with
:func:`unpaired_error` instead of silently reading them as something else (an SFT stage
would otherwise train on the rejected completions too).
"""

from __future__ import annotations

from typing import Any

UNPAIRED_PREFERENCE = "unpaired preference"


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def row_format(row: Any) -> str:
    """trl's name for one row's format, e.g. ``"conversational prompt-completion"``; ``"unknown"``
    when its columns fit none (the stage loaders then give the precise reason)."""
    if not isinstance(row, dict):
        return "unknown"
    present = {k for k, v in row.items() if v is not None}
    if {"chosen", "rejected"} <= present:
        name, columns = "preference", ("prompt", "chosen", "rejected")
    elif {"completion", "label"} <= present:
        name, columns = UNPAIRED_PREFERENCE, ("prompt", "completion")
    elif {"prompt", "completion"} <= present:
        name, columns = "prompt-completion", ("prompt", "completion")
    elif "messages" in present:
        name, columns = "language modeling", ("messages",)
    elif "text" in present:
        name, columns = "language modeling", ("text",)
    elif "prompt" in present:
        name, columns = "prompt-only", ("prompt",)
    else:
        return "unknown"
    kind = "conversational" if any(_is_messages(row.get(c)) for c in columns) else "standard"
    return f"{kind} {name}"


def is_unpaired_preference(row: Any) -> bool:
    return row_format(row).endswith(UNPAIRED_PREFERENCE)


def unpaired_message(where: str, stage: str, needs: str) -> str:
    """The one-line error a stage loader gives at an unpaired preference row."""
    return (f"{where}: unpaired preference row (trl's prompt/completion/label format, as KTO "
            f"uses): {stage} cannot train on it; it needs {needs}. "
            "Load it with jaxrlhf.data.unpaired.load_unpaired_preference")
