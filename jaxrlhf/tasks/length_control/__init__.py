"""Length control (the seed case study): compress a paragraph to N characters.

Its rule reward (the seed's score) is ``jaxrlhf.tasks.length_control.score:length_control_reward``;
the data builder, tokenizer and evaluation are re-exported lazily, so importing the score does
not import transformers (and ``python -m ...length_control.data`` runs cleanly).
"""

from __future__ import annotations

import importlib

from jaxrlhf.tasks.length_control.score import (SCORE_LEVELS, chinese_number, count_chars,
                                                 length_control_reward, parse_limit, row_limit, score,
                                                 score_count)

_LAZY = {
    "tokenizer": ("build_char_tokenizer", "char_vocab"),
    "data": ("TEMPLATES", "build_length_control_data", "chinese_numeral", "make_prompt"),
    "extracts": ("make_compression", "split_clauses"),
    "evaluate": ("evaluate_length_control", "evaluate_predictions", "format_distribution", "score_rows",
                 "summarize"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["SCORE_LEVELS", "chinese_number", "count_chars", "length_control_reward", "parse_limit",
           "row_limit", "score", "score_count", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        module = importlib.import_module(f"{__name__}.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
