"""Unfaithful drafts of the right length, for the reward model to rank below faithful ones.

A length rule alone rewards any string of the right length; a reward model trained only on
extractive drafts that differ in length never sees an answer that is the right length but
not a summary of its paragraph. These drafts are exactly that, each of the length asked for:

* ``other``: clauses of ANOTHER paragraph (fluent, well cut, about something else);
* ``repeat``: a faithful extract padded by repeating itself (what PPO learned to do on the
  phrase-bank corpus: "…纪念礼盒，老用户凭购买记录可额外获。");
* ``swap``: a faithful extract whose names and numbers are swapped for others (a city, brand
  or dish from the phrase banks, or another number): right length, right shape, wrong facts.

Each returns None when its kind cannot apply (no number or name to swap, a target too short
to hold a repeat); :func:`unfaithful_draft` then tries the next kind.
"""

from __future__ import annotations

import re

import numpy as np

from jaxrlhf.tasks.length_control.extracts import _cut, make_compression
from jaxrlhf.tasks.length_control.score import count_chars

KINDS = ("other", "repeat", "swap")
_NUMBER = re.compile(r"[0-9]+|[零一二两三四五六七八九十百]{2,}")


def _compress(paragraph: str, target: int, rng: np.random.Generator) -> str:
    return make_compression(paragraph, target, rng)


def _fit(text: str, target: int) -> str:
    """``text`` cut to ``target - 1`` counted characters plus the closing "。"."""
    body = text.rstrip("。，")
    return _cut(body, max(target - 1, 1)).rstrip("，") + "。"


def from_other(other: str, target: int, rng: np.random.Generator) -> str | None:
    """A compression of ``other`` (another paragraph) to the target; None when ``other`` is too
    short to reach it (within 10%)."""
    if not other.strip():
        return None
    draft = _compress(other, target, rng)
    return draft if abs(count_chars(draft) - target) <= max(1, 0.1 * target) else None


def repeated(paragraph: str, target: int, rng: np.random.Generator) -> str | None:
    """A faithful extract of about half the target, repeated to fill it."""
    if target < 8:
        return None
    half = _compress(paragraph, max(2, target // 2), rng).rstrip("。")
    if count_chars(half) < 3:
        return None
    text = half
    while count_chars(text) < target:
        text += "，" + half
    return _fit(text, target)


def _name_banks() -> list[list[str]]:
    from jaxrlhf.tasks.length_control.corpus import SLOTS
    return [bank for bank in SLOTS.values() if isinstance(bank, list) and len(bank) > 2]


def swapped(paragraph: str, target: int, rng: np.random.Generator) -> str | None:
    """A faithful extract with every number changed and every phrase-bank name (city, brand,
    product, dish ...) replaced by another of its bank; None when nothing could be swapped."""
    base = _compress(paragraph, target, rng)
    text = _NUMBER.sub(lambda m: _other_number(m.group(0), rng), base)
    for bank in _name_banks():
        for name in sorted((n for n in bank if n in text), key=len, reverse=True):
            choices = [n for n in bank if n != name and count_chars(n) == count_chars(name)] or \
                      [n for n in bank if n != name]
            text = text.replace(name, choices[int(rng.integers(len(choices)))])
    return _fit(text, target) if text != base else None


def _other_number(number: str, rng: np.random.Generator) -> str:
    if number.isdigit():
        while True:
            value = "".join(str(int(d)) for d in rng.integers(0, 10, len(number)))
            if value != number and (len(value) == 1 or value[0] != "0"):
                return value
    digits = "一二三四五六七八九"
    out = list(number)
    positions = [i for i, c in enumerate(out) if c in digits]
    if not positions:
        return number + "五" if number[-1] == "十" else number
    i = positions[int(rng.integers(len(positions)))]
    out[i] = digits[(digits.index(out[i]) + int(rng.integers(1, 9))) % 9]
    return "".join(out)


def unfaithful_draft(paragraph: str, other: str, target: int, rng: np.random.Generator,
                     exclude: set[str] = frozenset()) -> tuple[str, str]:
    """(kind, draft): an unfaithful draft of about ``target`` characters (within 10%), of a
    random kind first, else the next that applies, else the start of ``other`` cut to the target."""
    start = int(rng.integers(len(KINDS)))
    for kind in KINDS[start:] + KINDS[:start]:
        make = {"other": lambda: from_other(other, target, rng), "repeat": lambda: repeated(paragraph, target, rng),
                "swap": lambda: swapped(paragraph, target, rng)}[kind]
        draft = make()
        if draft is not None and _usable(draft, paragraph, target, exclude):
            return kind, draft
    for start in range(len(other)):  # the start of another paragraph, cut to the target
        draft = _fit(other[start:] + "，" + paragraph, target)
        if _usable(draft, paragraph, target, exclude):
            return "other", draft
    return "other", _fit(other + "，" + paragraph, target)


def _usable(draft: str, paragraph: str, target: int, exclude: set[str]) -> bool:
    """Within 10% of the target (one character for short ones), new, and not the paragraph's own text."""
    return (abs(count_chars(draft) - target) <= max(1, 0.1 * target) and draft not in exclude
            and draft.rstrip("。") not in paragraph)
