"""Extractive compressions: a paragraph's clauses, and a compression of it to a target length
made of whole (and one cut) clauses of the paragraph itself. The SFT answers, the RM's drafts
and the unfaithful drafts (drafts.py) are all built from these."""

from __future__ import annotations

import re

import numpy as np

from jaxrlhf.tasks.length_control.score import count_chars

_SPLIT = re.compile(r"[，,。．；;！!？?、：:\n…]+")
_EDGE = "“”‘’\"'《》〈〉()（）[]【】「」『』—-～~ \t"


def split_clauses(paragraph: str) -> list[str]:
    """The paragraph's clauses (split at ，。；！？、： and newlines, edge quotes stripped)."""
    parts = (part.strip(_EDGE) for part in _SPLIT.split(paragraph))
    return [p for p in parts if count_chars(p)]


def _cut(clause: str, n: int) -> str:
    """The prefix of ``clause`` holding ``n`` counted (non-whitespace) characters."""
    seen = 0
    for i, c in enumerate(clause):
        seen += not c.isspace()
        if seen == n:
            return clause[:i + 1]
    return clause


def _whole(paragraph: str) -> str:
    text = paragraph.strip()
    return text if text.endswith(("。", "！", "？", "!", "?", ".")) else text + "。"


def _clauses_and_sizes(paragraph: str) -> tuple[list[str], list[int]]:
    """The paragraph's clauses and their counted lengths; a paragraph without text is an error."""
    clauses = split_clauses(paragraph)
    if not clauses:
        raise ValueError("the paragraph has no text to compress")
    return clauses, [count_chars(c) for c in clauses]


def _clause_order(sizes: list[int], rng: np.random.Generator) -> list[int]:
    """The order clauses are picked in: from the start ("lead"), or by a noisy content
    weight (longer clauses, the first one favoured)."""
    if rng.random() < 0.5:
        return list(range(len(sizes)))
    weight = np.asarray(sizes, float) * rng.uniform(0.6, 1.4, len(sizes))
    weight[0] *= 1.5
    return [int(i) for i in np.argsort(-weight, kind="stable")]


def make_compression(paragraph: str, target_chars: int, rng: np.random.Generator) -> str:
    """An extractive compression of about ``target_chars`` characters (count_chars), ending "。".

    Clauses are taken either from the start ("lead") or by a noisy content weight (longer
    clauses, the first one favoured), kept in paragraph order and joined with "，"; the gap
    to the target is filled with the start of one more clause. A paragraph no longer than
    the target is returned whole.
    """
    clauses, sizes = _clauses_and_sizes(paragraph)
    if count_chars(paragraph) <= target_chars or sum(sizes) + len(clauses) <= target_chars:
        return _whole(paragraph)
    budget = max(target_chars, 2) - 1  # the closing "。" counts
    order = _clause_order(sizes, rng)
    chosen: dict[int, str] = {}
    used = 0
    for i in order:
        cost = sizes[i] + (1 if chosen else 0)  # a "，" before every clause but the first
        if used + cost > budget:
            room = budget - used - (1 if chosen else 0)
            if room >= 1:
                chosen[i] = _cut(clauses[i], room)
            break
        chosen[i] = clauses[i]
        used += cost
    return "，".join(chosen[i] for i in sorted(chosen)) + "。"
