"""The length-control score of the seed case study, the limit parser and the rule reward.

Score (DESIGN.md "Length-control score"): count the response's characters (punctuation
included, whitespace excluded), let d = |count / limit - 1|, and map d to a level through
right-closed bins of width 0.05. The comparison is done in integers (``|count - limit| * 100
<= k * limit``) because in floats 21/20 - 1 = 0.050000000000000044 lands in the wrong bin.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxrlhf.rewards import TextBatch

SCORE_LEVELS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.0)
# (bin upper edge in percent of the limit, score); a d above the last edge scores 0.
_BINS = ((5, 1.0), (10, 0.9), (15, 0.8), (20, 0.7), (25, 0.6))


def count_chars(text: str) -> int:
    """Characters as the seed counts them: every one except whitespace (so a model cannot pad
    or shrink its count with spaces and newlines)."""
    return sum(1 for c in text if not c.isspace())


def score_count(count: int, limit: int) -> float:
    """The score of a ``count``-character answer to a ``limit``-character request."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    off = abs(count - limit) * 100  # d <= k/100  <=>  |count - limit| * 100 <= k * limit
    for edge, value in _BINS:
        if off <= edge * limit:
            return value
    return 0.0


def score(text: str, limit: int) -> float:
    """The seed's length-control score of ``text`` for a request of ``limit`` characters."""
    return score_count(count_chars(text), limit)


# --------------------------------------------------------------------------- limit parsing

_CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
              "七": 7, "八": 8, "九": 9}
_CN_UNITS = {"十": 10, "百": 100}
_ARABIC = "[0-9０-９]+"
_CHINESE = "[零〇一二两三四五六七八九十百]+"
_NUMBER = f"(?P<num>{_ARABIC}|{_CHINESE})"
# "N字", "N个字", "N个汉字", "N字符"; not the idioms where a numeral precedes 字 ("十字路口").
_COUNT = re.compile(_NUMBER + r"\s*(?:个)?\s*(?:汉字|中文字|字符|字)(?![路架形街军绣经])")
# "字数限制为N", "字数：N", "字数不超过N" (the number is not followed by 字).
_WORD_COUNT = re.compile(r"字数[^0-9０-９零〇一二两三四五六七八九十百。\n]{0,8}?" + _NUMBER + r"(?![0-9０-９])")
_PREFIXES = ("浓缩成", "浓缩为", "浓缩到", "压缩成", "压缩为", "压缩到", "缩减到", "缩减为", "缩短到", "缩写成",
             "精简到", "精简为", "精简成", "概括成", "概括为", "总结成", "总结为", "改写成", "限制在", "控制在",
             "保持在", "限定在", "不超过", "不多于", "不少于", "少于", "多于", "不足", "大约", "大概", "约",
             "用", "以", "为", "成", "到", "限", "在", "写", "共")
_SUFFIXES = ("以内", "之内", "以下", "内", "左右", "上下", "的", "上限", "封顶")


def chinese_number(text: str) -> int | None:
    """The value of a Chinese numeral below 1000 ("十二" 12, "三十五" 35, "两百" 200, "一百零五"
    105, colloquial "一百五" 150, digit strings "二五" 25), or None if it is not one."""
    if not text or any(c not in _CN_DIGITS and c not in _CN_UNITS for c in text):
        return None
    if not any(c in _CN_UNITS for c in text):
        return int("".join(str(_CN_DIGITS[c]) for c in text))
    total, current, last_unit, zero = 0, None, None, False
    for c in text:
        if c in "零〇":
            zero = True  # a placeholder: "一百零五" is 105
        elif c in _CN_DIGITS:
            if current is not None:
                return None  # two digits in a row around units ("三四十") is not one number
            current = _CN_DIGITS[c]
        else:
            unit = _CN_UNITS[c]
            if last_unit is not None and unit >= last_unit:
                return None  # "十百", "百百"
            total += (1 if current is None else current) * unit
            current, last_unit = None, unit
    if current is not None:
        # "一百五" means 150 (the digit fills the next lower unit) unless a 零 says otherwise.
        total += current * (last_unit // 10 if last_unit and last_unit > 10 and not zero else 1)
    return total


def _number(text: str) -> int | None:
    if text[0] in "0123456789０１２３４５６７８９":
        return int(text)  # int() reads full-width digits too
    return chinese_number(text)


def _qualified(prompt: str, start: int, end: int) -> bool:
    """Whether a "N字" match at [start, end) reads as a length request (a keyword before the
    number or after 字), so that stray numbers in the paragraph are preferred less."""
    before, after = prompt[max(0, start - 3):start].rstrip(), prompt[end:end + 2].lstrip()
    return before.endswith(_PREFIXES) or after.startswith(_SUFFIXES)


def parse_limit(prompt: str) -> int | None:
    """The character limit a prompt asks for (浓缩成N字, 限制在N字以内, 不超过N个字, N字左右,
    约N字, 字数：N ...; arabic, full-width or Chinese numerals), or None when there is none.

    Preference: the first "N字" with a request keyword next to it, then a "字数...N" phrase,
    then the first bare arabic "N字" or Chinese "N个字". Instructions usually come before the
    text, so the first match is the instruction's.
    """
    bare = None
    for m in _COUNT.finditer(prompt):
        value = _number(m.group("num"))
        if not value or value > 999:
            continue
        if _qualified(prompt, m.start(), m.end()):
            return value
        is_arabic = m.group("num")[0] in "0123456789０１２３４５６７８９"
        if bare is None and (is_arabic or "个" in m.group(0)):
            bare = value
    for m in _WORD_COUNT.finditer(prompt):
        value = _number(m.group("num"))
        if value and value <= 999:
            return value
    return bare


def row_limit(prompt: str, meta: Mapping[str, Any] | None = None) -> int | None:
    """A row's limit: its ``limit`` field when present and positive, else parsed from the prompt."""
    value = (meta or {}).get("limit")
    if value is not None:
        try:
            value = int(value)
        except (TypeError, ValueError):
            value = None
        return value if value is not None and value > 0 else None
    return parse_limit(prompt)


# --------------------------------------------------------------------------- fidelity


def _bigrams(text: str) -> Counter:
    chars = [c for c in text if not c.isspace()]
    return Counter(a + b for a, b in zip(chars, chars[1:]))


def fidelity(answer: str, source: str) -> float:
    """The share of the answer's character bigrams (whitespace removed from both) that occur in
    the source paragraph: 1 for a verbatim extract, near 0 for text from elsewhere.

    A bigram is matched at most as often as the source has it (BLEU's clipped counts), so
    repeating a source clause does not count twice: padding an answer with repeats is not a
    faithful summary. Without a bigram (one character) the answer's character must occur in the
    source; an empty answer says nothing from the source and scores 0."""
    chars = [c for c in answer if not c.isspace()]
    if len(chars) < 2:
        return float(bool(chars) and chars[0] in source)
    wanted, have = _bigrams(answer), _bigrams(source)
    matched = sum(min(n, have[b]) for b, n in wanted.items())
    return matched / (len(chars) - 1)


def row_source(prompt: str, meta: Mapping[str, Any] | None = None) -> str:
    """The paragraph an answer is checked against: the row's ``source`` field, else the whole
    prompt (it holds the paragraph; the instruction adds a few bigrams an answer rarely uses)."""
    value = (meta or {}).get("source")
    return value if isinstance(value, str) and value else prompt


# how the rule reward combines the length score L and the fidelity F of an answer
COMBINE = ("length", "fidelity", "product", "weighted_sum")


def combine_length_fidelity(length: float, faithful: float, combine: str = "product",
                            fidelity_weight: float = 0.5) -> float:
    """length: L; fidelity: F; product: L * F (right length AND from the source); weighted_sum:
    (1 - w) * L + w * F."""
    if combine == "length":
        return length
    if combine == "fidelity":
        return faithful
    if combine == "product":
        return length * faithful
    if combine == "weighted_sum":
        return (1.0 - fidelity_weight) * length + fidelity_weight * faithful
    raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")


def length_fidelity_reward(batch: TextBatch, combine: str = "product", fidelity_weight: float = 0.5) -> np.ndarray:
    """The rule reward with fidelity (``jaxrlhf.tasks.length_control.score:length_fidelity_reward``,
    ``kwargs: {combine: product|weighted_sum|length|fidelity, fidelity_weight: w}``): each answer's
    length score and :func:`fidelity` to its row's ``source`` (else its prompt), combined by
    :func:`combine_length_fidelity`. A row whose limit is unknown scores 0, as in
    :func:`length_control_reward` (its fidelity alone when ``combine`` is fidelity)."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    if not 0.0 <= fidelity_weight <= 1.0:
        raise ValueError(f"fidelity_weight must be in [0, 1], got {fidelity_weight}")
    out = np.zeros(len(batch.responses), np.float32)
    for i, (prompt, response) in enumerate(zip(batch.prompts, batch.responses)):
        meta = batch.meta[i] if i < len(batch.meta) else {}
        faithful = fidelity(response, row_source(prompt, meta))
        limit = row_limit(prompt, meta)
        if limit is not None:
            out[i] = combine_length_fidelity(score(response, limit), faithful, combine, fidelity_weight)
        elif combine == "fidelity":
            out[i] = faithful
    return out


def length_control_reward(batch: TextBatch) -> np.ndarray:
    """The seed's score of each decoded response, as a rule reward
    (``jaxrlhf.tasks.length_control.score:length_control_reward``; 0 for rows whose limit is unknown, so PPO
    gains nothing there rather than failing a whole batch)."""
    out = np.zeros(len(batch.responses), np.float32)
    for i, (prompt, response) in enumerate(zip(batch.prompts, batch.responses)):
        meta = batch.meta[i] if i < len(batch.meta) else {}
        limit = row_limit(prompt, meta)
        if limit is not None:
            out[i] = score(response, limit)
    return out
