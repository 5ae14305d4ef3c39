"""The length-control task: the seed's score, limit parsing, the rule, the char tokenizer,
the data builder and the evaluation."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from jaxrlhf.rewards import TextBatch, load_rule
from jaxrlhf.tasks.length_control import (SCORE_LEVELS, TEMPLATES, build_char_tokenizer, build_length_control_data,
                                          chinese_number, chinese_numeral, count_chars, evaluate_predictions,
                                          format_distribution, make_compression, parse_limit, score, split_clauses)
from jaxrlhf.tasks.length_control.corpus import generate_paragraph
from jaxrlhf.tasks.length_control.data import RM_BEST_ERROR, closeness, rm_row, sft_row
from jaxrlhf.tasks.length_control.extracts import _whole
from jaxrlhf.tasks.length_control.data import main as data_main

SMALL = dict(n_sft=60, n_rm=30, n_test=20, n_ppo_prompts=15)


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


# --------------------------------------------------------------------------- score


def test_seed_worked_examples():
    assert score("春" * 36, 30) == 0.7  # the DPO answer of the case study
    assert score("春" * 32, 30) == 0.9  # ERNIE 4.0's
    assert score("春" * 30, 30) == 1.0  # the RLHF answer
    rlhf = "春节游选我们！温馨家庭房，亲子活动多，年味十足，度美好时光！"
    assert count_chars(rlhf) == 30 and score(rlhf, 30) == 1.0
    dpo = "春节家庭游，选我们！雪景、海滩任你挑，亲子活动多，住宿温馨，留美好回忆。"
    assert count_chars(dpo) == 36 and score(dpo, 30) == 0.7


@pytest.mark.parametrize("count,expected", [(19, 1.0), (20, 1.0), (21, 1.0), (22, 0.9), (23, 0.8), (24, 0.7),
                                            (25, 0.6), (26, 0.0), (18, 0.9), (17, 0.8), (16, 0.7), (15, 0.6),
                                            (14, 0.0), (0, 0.0), (100, 0.0)])
def test_bin_edges_are_right_closed(count, expected):
    assert score("字" * count, 20) == expected


def test_every_level_and_bad_limit():
    assert {score("a" * n, 100) for n in range(0, 200)} == set(SCORE_LEVELS)
    assert score("a" * 105, 100) == 1.0 and score("a" * 106, 100) == 0.9 and score("a" * 125, 100) == 0.6
    assert score("a" * 126, 100) == 0.0 and score("a" * 75, 100) == 0.6 and score("a" * 74, 100) == 0.0
    with pytest.raises(ValueError):
        score("abc", 0)
    with pytest.raises(ValueError):
        score("abc", -3)


def test_whitespace_excluded_punctuation_counted():
    assert count_chars("你 好\n世\t界　") == 4  # ideographic space too
    assert count_chars("你好，世界！") == 6
    assert count_chars("a.b,c!?") == 7
    assert score("一二 三四\n五六七八九十 " * 2, 20) == 1.0  # 20 counted characters


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("prompt,limit", [
    ("请将这段描述浓缩成30字的要义。春节家庭游，温馨又有趣！", 30),
    ("请简化下面这句话,保证限制在5字以内。\n行业精英必备", 5),
    ("请用不超过50字总结：今天天气很好。", 50),
    ("把下文压缩到40字左右：……", 40),
    ("用12个字概括下面的内容：……", 12),
    ("请把字数控制在80字。……", 80),
    ("写一段60字以内的摘要。", 60),
    ("请约25字说明。", 25),
    ("请将以下内容浓缩成三十字的要义。", 30),
    ("用十二个字概括：……", 12),
    ("限制在二十字以内", 20),
    ("不超过三十五字", 35),
    ("八十字左右", 80),
    ("请写一百字以内的简介", 100),
    ("两百字左右的总结", 200),
    ("用一百零五个字", 105),
    ("控制在十字内", 10),
    ("请用不超过３０字总结", 30),
    ("浓缩成１２字", 12),
    ("字数限制为45，请概括。", 45),
    ("字数要求：15字。请概括下文。", 15),
    ("他站在十字路口。请用20字概括。", 20),
])
def test_parse_limit_phrasings(prompt, limit):
    assert parse_limit(prompt) == limit


@pytest.mark.parametrize("prompt", ["请总结下文：今天天气很好。", "", "他站在十字路口等车。", "三字经是一本书。",
                                    "请概括这段话，越短越好。"])
def test_parse_limit_none(prompt):
    assert parse_limit(prompt) is None


def test_chinese_numerals_round_trip():
    for n in range(1, 1000):
        assert chinese_number(chinese_numeral(n)) == n
    assert chinese_number("一百五") == 150 and chinese_number("二五") == 25 and chinese_number("十百") is None
    assert chinese_numeral(12) == "十二" and chinese_numeral(200) == "两百" and chinese_numeral(105) == "一百零五"


def test_every_template_parses_in_every_numeral_style():
    rng = np.random.default_rng(0)
    paragraph = generate_paragraph(rng)
    fullwidth = str.maketrans("0123456789", "０１２３４５６７８９")
    for template in TEMPLATES:
        for n in (5, 9, 10, 12, 20, 35, 66, 80, 100, 120):
            for written in (str(n), chinese_numeral(n), str(n).translate(fullwidth)):
                assert parse_limit(template.format(N=written, text=paragraph)) == n, (template, written)
    assert len(TEMPLATES) >= 6


# --------------------------------------------------------------------------- rule


def _batch(prompts, responses, meta):
    n = len(prompts)
    return TextBatch(prompts=prompts, responses=responses, response_tokens=np.zeros((n, 4), np.int32),
                     response_mask=np.ones((n, 4), np.int32), finished=np.ones(n, bool), meta=meta)


def test_rule_reward_meta_and_parsed_limits():
    rule = load_rule("jaxrlhf.tasks.length_control.score:length_control_reward")
    batch = _batch(["请用20字概括：……", "请用20字概括：……", "请概括：……", "no limit here"],
                   ["字" * 20, "字" * 24, "字" * 11, "字" * 5],
                   [{}, {"limit": 30}, {"limit": 10}, {}])
    np.testing.assert_allclose(rule(batch), [1.0, 0.7, 0.9, 0.0])
    assert rule(batch).dtype == np.float32
    # meta wins over the prompt: 24/30 -> d = 0.2 -> 0.7
    np.testing.assert_allclose(rule(_batch(["请用20字概括"], ["字" * 24], [{"limit": 30}])), [0.7])


# --------------------------------------------------------------------------- tokenizer


def _random_text(rng: random.Random, n: int) -> str:
    pools = [(0x20, 0x7E), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x00A0, 0x024F), (0x3000, 0x303F),
             (0x0400, 0x04FF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.1:
            out.append(rng.choice([" ", "\n", "\t", "\r", "\u3000", "\u00a0", "<s>", "</s>", "<pad>", "<0x41>"]))
        else:
            lo, hi = rng.choice(pools)
            c = rng.randint(lo, hi)
            out.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "x")
    return "".join(out)


def test_char_tokenizer_round_trips_any_unicode(tmp_path):
    tok = build_char_tokenizer(["你好，世界！", "abc  def\n"], tmp_path / "tok")
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ("<pad>", "<s>", "</s>", "<unk>", "<answer>", "<0x00>", "<0xFF>")] == [
        0, 1, 2, 3, 4, 5, 260]
    seen = sorted(set("你好，世界！abc  def\n"))
    assert [vocab[c] for c in seen] == list(range(261, 261 + len(seen)))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "right"
    ids = tok("你好 世界")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 4 and len(ids) == 7  # <s> + one token per character + <answer>
    assert tok("你好 世界", add_special_tokens=False)["input_ids"] == ids[1:-1]
    assert tok.convert_ids_to_tokens(tok("😀")["input_ids"]) == ["<s>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>",
                                                               "<answer>"]
    rng = random.Random(0)
    texts = [_random_text(rng, rng.randint(0, 40)) for _ in range(300)] + ["", " ", "  a  ", "\n\n", "😀👍🏽é"]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert 3 not in ids, text  # never <unk>: unseen characters go through bytes
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_char_tokenizer_saved_loads_with_auto_tokenizer(tmp_path):
    import transformers
    build_char_tokenizer(["春节家庭游", "春"], tmp_path / "tok", min_count=2)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    vocab = tok.get_vocab()
    assert "春" in vocab and "节" not in vocab  # min_count
    for text in ("春节家庭游，温馨又有趣！", "mixed 文本 with emoji 🎉 and\ttabs", "<s>literal</s>"):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == vocab["<answer>"] and tok.eos_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("<answer>")["input_ids"].count(vocab["<answer>"]) == 1  # written text cannot forge the marker
    batch = tok(["春", "春春春"], padding=True)["input_ids"]
    assert batch[0] == [1, vocab["春"], vocab["<answer>"], 0, 0]


# --------------------------------------------------------------------------- compressions


def test_make_compression_is_extractive_and_hits_the_target():
    rng = np.random.default_rng(0)
    for _ in range(200):
        paragraph = generate_paragraph(rng)
        clauses = split_clauses(paragraph)
        target = int(rng.integers(4, int(0.8 * count_chars(paragraph)) + 1))
        answer = make_compression(paragraph, target, rng)
        assert answer.endswith("。")
        assert abs(count_chars(answer) - target) <= 1, (paragraph, target, answer)
        pieces = split_clauses(answer)
        assert all(p in paragraph for p in pieces)
        assert sum(p in clauses for p in pieces) >= len(pieces) - 1  # at most one cut clause
    assert make_compression("短短一句话。", 40, rng) == "短短一句话。"
    assert make_compression("没有句号", 40, rng) == "没有句号。"


def test_rm_rows_are_compressions_cut_on_both_sides_of_the_limit():
    rng = np.random.default_rng(2)
    sides, near_misses, mixed = {"short": 0, "long": 0}, {"in band": 0}, 0
    for _ in range(200):
        paragraph = generate_paragraph(rng)
        limit = 5 * int(rng.integers(1, int(0.8 * count_chars(paragraph)) // 5 + 1))
        row = rm_row(paragraph, limit, rng)
        answers = [r[0] for r in row["response"]]
        assert len(answers) == len(set(answers)) == 4
        # ranked by closeness to the limit, unbinned: 1 - |count / limit - 1|
        counts = [count_chars(a) for a in answers]
        assert row["score"] == [round(1 - abs(c / limit - 1), 4) for c in counts]
        assert row["score"] == sorted(row["score"], reverse=True)
        assert [score(a, limit) for a in answers] == sorted((score(a, limit) for a in answers), reverse=True)
        if max(counts) == count_chars(_whole(paragraph)):
            continue  # the long draft hit the whole paragraph: no cut clause to compare
        # one near the limit (up to one character of rounding), one under it, one over it
        assert abs(counts[0] - limit) <= max(1, round(RM_BEST_ERROR * limit) + 1), (limit, answers)
        sides["short"] += min(counts) < limit
        sides["long"] += max(counts) > limit
        # and a near miss inside the rule's scoring band (the rounding of short limits aside)
        near_misses["in band"] += any(0 < abs(c - limit) <= 0.25 * limit + 1 for c in counts[1:])
        # each draft its own clause selection: extractive (all but the cut last clause are the
        # paragraph's), and the content differs across drafts in most rows
        for a in answers:
            assert all(c in paragraph for c in split_clauses(a)[:-1]), (paragraph, a)
        by_length = sorted(answers, key=count_chars)
        mixed += not all(all(c in longer for c in split_clauses(shorter)[:-1])
                         for shorter, longer in zip(by_length, by_length[1:]))
    assert min(sides.values()) >= 150 and near_misses["in band"] >= 150
    assert mixed >= 90  # rows whose drafts differ in content as well as in length (111 of 171)


def test_closeness_ranks_what_the_rule_ties():
    from jaxrlhf.tasks.length_control.data import closeness

    assert closeness("十个字十个字十个字十", 10) == 1.0
    assert score("十" * 14, 10) == score("十" * 25, 10) == 0.0  # the rule ties them
    assert closeness("十" * 14, 10) == 0.6 > closeness("十" * 25, 10) == -0.5
    assert closeness("十 个", 4) == 0.5  # whitespace is not counted, as in the rule


def test_sft_answers_miss_the_limit_and_run_long_on_average():
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(400):
        paragraph = generate_paragraph(rng)
        limit = 5 * int(rng.integers(2, int(0.8 * count_chars(paragraph)) // 5 + 1))
        row = sft_row(paragraph, limit, rng)
        assert parse_limit(row["prompt"]) == limit and paragraph in row["prompt"]
        assert all(piece in paragraph for piece in split_clauses(row["response"]))
        ratios.append(count_chars(row["response"]) / limit)
    ratios = np.asarray(ratios)
    assert 1.0 < np.median(ratios) < 1.12  # SFT_BIAS: summaries run long
    assert 0.07 < np.std(ratios) < 0.15  # SFT_NOISE (10%): and miss by a spread of lengths
    assert 0.15 < np.mean(np.abs(ratios - 1) <= 0.05) < 0.4  # on target about a third of the time (P(|e| <= 0.05) = 0.34 for N(5%, 10%))


# --------------------------------------------------------------------------- data builder


@pytest.fixture(scope="module")
def full_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("lc_full")
    return build_length_control_data(out, seed=0)


def test_builder_is_deterministic(tmp_path):
    a = build_length_control_data(tmp_path / "a", seed=3, **SMALL)
    b = build_length_control_data(tmp_path / "b", seed=3, **SMALL)
    c = build_length_control_data(tmp_path / "c", seed=4, **SMALL)
    for name in ("sft", "rm", "dpo", "ppo_prompts", "test", "source", "meta"):
        assert a[name].read_bytes() == b[name].read_bytes(), name
    assert a["sft"].read_bytes() != c["sft"].read_bytes()
    # the test split depends on the seed and n_test only
    d = build_length_control_data(tmp_path / "d", seed=3, **{**SMALL, "n_sft": 10})
    assert a["test"].read_bytes() == d["test"].read_bytes()


def test_paragraph_length_range_is_a_setting(tmp_path):
    files = build_length_control_data(tmp_path, seed=0, **SMALL, paragraph_chars=(30, 120))
    lengths = [count_chars(r["text"]) for r in read(files["source"])]
    assert min(lengths) >= 30 and max(lengths) <= 120 and min(lengths) < 60  # shorter ones than the default
    assert json.loads(files["meta"].read_text(encoding="utf-8"))["paragraph_chars"] == [30, 120]
    with pytest.raises(ValueError, match="min_chars"):
        build_length_control_data(tmp_path / "bad", seed=0, **SMALL, paragraph_chars=(130, 120))


def test_files_load_with_the_trainers_loaders(full_data):
    from jaxrlhf.data import load_preference_data, load_sft_data
    rm, report = load_preference_data(str(full_data["rm"]))
    assert len(rm) == 1500 and report.kept == 1500 and sum(report.skipped.values()) == 0
    dpo, report = load_preference_data(str(full_data["dpo"]))
    assert len(dpo) == 1500 and sum(report.skipped.values()) == 0
    sft, report = load_sft_data(str(full_data["sft"]))
    assert len(sft) == 3000 and sum(report.skipped.values()) == 0
    for row in read(full_data["rm"]):
        assert set(row) == {"prompt", "response", "score"} and len(row["response"]) == 4
        limit = parse_limit(row["prompt"])
        assert row["score"] == [closeness(r[0], limit) for r in row["response"]]
        assert row["score"] == sorted(row["score"], reverse=True) and len(set(row["score"])) > 1
        assert len({r[0] for r in row["response"]}) == 4
    for row in read(full_data["dpo"]):
        limit = parse_limit(row["prompt"])
        assert score(row["chosen"], limit) > score(row["rejected"], limit)
    for name, fields in (("test", {"prompt", "limit", "source", "part"}), ("ppo_prompts", {"prompt", "limit", "source"})):
        rows = read(full_data[name])
        assert all(set(r) == fields and parse_limit(r["prompt"]) == r["limit"] for r in rows)
        assert all(r["source"] in r["prompt"] for r in rows)  # the paragraph fidelity is measured against
    assert all(parse_limit(r["prompt"]) is not None for r in read(full_data["sft"]))


def test_answers_are_made_of_the_paragraphs_clauses(full_data):
    sources = [r["text"] for r in read(full_data["source"])]
    rows = read(full_data["sft"])[:150] + read(full_data["rm"])[:100]
    for row in rows:
        paragraph = next(p for p in sources if p in row["prompt"])
        answers = [row["response"]] if isinstance(row["response"], str) else [r[0] for r in row["response"]]
        for answer in answers:
            assert all(piece in paragraph for piece in split_clauses(answer)), (paragraph, answer)


def test_test_split_is_disjoint_and_spread(full_data):
    sources = read(full_data["source"])
    test_pars = {r["text"] for r in sources if r["split"] == "test"}
    train_pars = {r["text"] for r in sources if r["split"] == "train"}
    assert len(test_pars) == 260 and not test_pars & train_pars
    for name in ("sft", "rm", "dpo", "ppo_prompts"):
        for row in read(full_data[name]):
            assert not any(p in row["prompt"] for p in test_pars)
    test = read(full_data["test"])
    limits = [r["limit"] for r in test]
    assert len(test) == 260 and min(limits) <= 6 and max(limits) >= 78
    assert np.histogram(limits, bins=5, range=(5, 80))[0].min() >= 40  # spread, not clustered
    instructions = [max(re.split(r"\{\w+\}", t), key=len) for t in TEMPLATES]
    used = {i for r in test for i, text in enumerate(instructions) if text in r["prompt"]}
    assert len(used) >= 6  # varied phrasings
    numerals = {"chinese": 0, "full-width": 0}
    for r in test:
        numerals["chinese"] += chinese_numeral(r["limit"]) in r["prompt"] and str(r["limit"]) not in r["prompt"]
        numerals["full-width"] += any("０" <= c <= "９" for c in r["prompt"])
    assert min(numerals.values()) >= 10
    assert all(count_chars(p) >= 60 and count_chars(p) <= 200 for p in test_pars | train_pars)


def test_sft_answers_are_imperfect_like_human_data(full_data):
    meta = json.loads(full_data["meta"].read_text(encoding="utf-8"))
    scores = [score(r["response"], parse_limit(r["prompt"])) for r in read(full_data["sft"])]
    assert meta["sft_mean_score"] == pytest.approx(np.mean(scores), abs=1e-4)
    assert 0.82 <= meta["sft_mean_score"] <= 0.92  # right on average, off by +5% +- 10%
    errors = np.asarray([count_chars(r["response"]) / parse_limit(r["prompt"]) - 1 for r in read(full_data["sft"])])
    assert np.mean(errors > 0.05) > 1.5 * np.mean(errors < -0.05)  # misses run long more often than short
    assert min(meta["sft_score_distribution"].values()) >= 30  # every level occurs (0.0 the rarest)
    assert meta["counts"]["test"] == 260 and meta["sources"] == ["embedded"] and "licence" in meta
    ranks = meta["rm_mean_score_by_rank"]
    assert len(ranks) == 4 and ranks[0] > 0.9 and ranks[0] > ranks[1] > ranks[2] > ranks[3]


def test_source_txt_file(tmp_path):
    rng = np.random.default_rng(7)
    paragraphs = [generate_paragraph(rng) for _ in range(40)]
    txt = tmp_path / "my.txt"
    txt.write_text("\n\n".join(paragraphs[:20]) + "\n\n\n" + "\n\n".join(paragraphs[20:]) + "\n\n短。\n",
                   encoding="utf-8")
    paths = data_main(["--out", str(tmp_path / "out"), "--source", str(txt), "--seed", "1", "--n-sft", "50",
                       "--n-rm", "20", "--n-test", "10", "--n-ppo-prompts", "10"])
    meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    assert meta["sources"] == [str(txt)] and meta["counts"]["sft"] == 50
    sources = read(paths["source"])
    test_pars = {r["text"] for r in sources if r["split"] == "test"}
    train_pars = {r["text"] for r in sources if r["split"] == "train"}
    assert test_pars and train_pars and not test_pars & train_pars
    assert test_pars | train_pars <= set(paragraphs)  # the too-short paragraph is left out
    for row in read(paths["sft"]):
        assert any(p in row["prompt"] for p in train_pars)
    assert all(any(p in r["prompt"] for p in test_pars) for r in read(paths["test"]))


# --------------------------------------------------------------------------- evaluation


def test_evaluate_predictions(tmp_path):
    rows = [{"prompt": "请用20字概括：……", "response": "字" * 20},  # parsed limit, 1.0
            {"prompt": "概括：……", "limit": 30, "response": "字" * 36},  # field limit, 0.7
            {"prompt": "用十个字概括", "response": "字 " * 11},  # whitespace ignored: 11/10 -> 0.9
            {"prompt": "请概括。", "response": "whatever"},  # no limit: kept, not scored
            {"prompt": "浓缩成8字", "response": ""}]  # 0.0
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = evaluate_predictions(path, tmp_path / "scored.jsonl")
    assert result["rows"] == 5 and result["scored_rows"] == 4 and result["no_limit_rows"] == 1
    assert result["mean_score"] == pytest.approx((1.0 + 0.7 + 0.9 + 0.0) / 4)
    assert result["distribution"] == {"1.0": 1, "0.9": 1, "0.8": 0, "0.7": 1, "0.6": 0, "0.0": 1}
    scored = read(tmp_path / "scored.jsonl")
    assert [r["score"] for r in scored] == [1.0, 0.7, 0.9, None, 0.0]
    assert [r["chars"] for r in scored] == [20, 36, 11, 8, 0] and scored[3]["limit"] is None
    table = format_distribution(result)
    assert all(level in table for level in ("1.0", "0.9", "0.8", "0.7", "0.6", "0.0"))
    assert "0.650" in table and "1 rows without a limit" in table


def test_evaluate_length_control_with_a_tiny_model(tmp_path):
    from hf_models import build_hf_model, tiny_llama_config

    from jaxrlhf.tasks.length_control import evaluate_length_control
    rng = np.random.default_rng(0)
    paragraphs = [generate_paragraph(rng) for _ in range(3)]
    rows = [{"prompt": TEMPLATES[0].format(N=12, text=paragraphs[0]), "limit": 12},
            {"prompt": TEMPLATES[1].format(N="八", text=paragraphs[1])},
            {"prompt": "请概括：" + paragraphs[2]}]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    model_dir = tmp_path / "model"
    tok = build_char_tokenizer([r["prompt"] for r in rows], model_dir)
    config = tiny_llama_config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    build_hf_model(config, model_dir, seed=0)
    out = tmp_path / "pred.jsonl"
    result = evaluate_length_control(model_dir, data, out, batch_size=2, max_new_tokens=6)
    assert result["rows"] == 3 and result["scored_rows"] == 2 and result["no_limit_rows"] == 1
    scored = read(out)
    assert [r["limit"] for r in scored] == [12, 8, None]
    for r in scored:
        assert {"prompt", "response", "chars", "score", "limit"} <= set(r)
        assert r["chars"] == count_chars(r["response"]) and r["response_tokens"] <= 6
    assert scored[2]["score"] is None and all(s["score"] in SCORE_LEVELS for s in scored[:2])
    assert sum(result["distribution"].values()) == 2


def test_char_tokenizer_keeps_a_count_before_zi_as_one_token(tmp_path):
    tok = build_char_tokenizer(["请将这段描述浓缩成30字的要义。8月18日，二十摄氏度"], tmp_path / "tok")
    pieces = lambda text: tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert pieces("浓缩成30字")[-2:] == ["30", "字"]
    assert "三十五" in pieces("用三十五个字") and "十五" in pieces("十五字")
    assert pieces("压缩到１２字")[-2:] == ["１２", "字"]
    assert pieces("8月18日")[:4] == ["8", "月", "1", "8"]  # other numbers stay one token per character
    assert pieces("二十摄氏度")[:2] == ["二", "十"]
    for text in ("浓缩成30字的要义。8月18日", "用三十五个字", "130字", "30 字"):
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_demo_stage_overrides_refine_the_defaults(tmp_path):
    from jaxrlhf.tasks.length_control.pipeline import load_demo_config, stage_configs
    cfg = load_demo_config(None, ["ppo.algorithm.kl.coef=0.2", f"output_dir={tmp_path}"])
    data = {name: tmp_path / f"{name}.jsonl" for name in ("sft", "rm", "dpo", "ppo_prompts", "test")}
    ppo = stage_configs(cfg, tmp_path, data)["ppo"]
    assert ppo.algorithm.kl.coef == 0.2
    defaults = load_demo_config()
    assert ppo.train.iterations == defaults.ppo["train"]["iterations"]  # not the stage's own default
    assert ppo.rollout.max_new_tokens == defaults.ppo["rollout"]["max_new_tokens"]
    assert ppo.algorithm.advantage == defaults.ppo["algorithm"]["advantage"]


def test_demo_reward_model_reads_where_ppo_scores(tmp_path):
    """The demo's RM is trained without EOS (read at the last answer token) and PPO's reward
    source scores rollouts the same way; turning append_eos back on turns include_eos on."""
    from jaxrlhf.tasks.length_control.pipeline import load_demo_config, stage_configs
    data = {name: tmp_path / f"{name}.jsonl" for name in ("sft", "rm", "dpo", "ppo_prompts", "test")}
    for overrides, expected in (([], False), (["rm.data.append_eos=true"], True)):
        configs = stage_configs(load_demo_config(None, [f"output_dir={tmp_path}", *overrides]),
                                tmp_path, data)
        assert configs["rm"].data.append_eos is expected
        assert [r.include_eos for r in configs["ppo"].rewards if r.kind == "model"] == [expected]


def test_data_command_takes_the_sft_noise(tmp_path, capsys):
    from jaxrlhf.cli import main

    args = ["data", "length-control", "--n-sft", "200", "--n-rm", "10", "--n-test", "10", "--n-ppo-prompts", "10"]
    assert main([*args, "--out", str(tmp_path / "exact"), "--sft-noise", "0"]) == 0
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    exact = json.loads((tmp_path / "exact" / "meta.json").read_text(encoding="utf-8"))
    default = json.loads((tmp_path / "default" / "meta.json").read_text(encoding="utf-8"))
    assert exact["sft_noise"] == 0.0 and default["sft_noise"] == 0.10
    assert exact["sft_mean_score"] > default["sft_mean_score"]
    with pytest.raises(ValueError, match="sft_noise"):
        build_length_control_data(tmp_path / "bad", seed=0, **SMALL, sft_noise=-0.1)


def test_data_command_builds_the_demos_data_by_default(tmp_path, monkeypatch):
    """`jaxrlhf data length-control --out DIR` passes the builder exactly what the demo does."""
    import jaxrlhf.tasks.length_control as lc
    from jaxrlhf.cli import main
    from jaxrlhf.tasks.length_control.pipeline import load_demo_config

    seen = {}
    monkeypatch.setattr(lc, "build_length_control_data", lambda out, **kwargs: seen.update(kwargs) or {})
    assert main(["data", "length-control", "--out", str(tmp_path)]) == 0
    demo = load_demo_config()
    d = demo.data
    assert seen == {"seed": demo.seed, "source": None, "n_sft": d.n_sft, "n_rm": d.n_rm, "n_test": d.n_test,
                    "n_ppo_prompts": d.n_ppo_prompts, "n_rm_policy": d.n_rm_policy,
                    "paragraph_chars": tuple(d.paragraph_chars), "sft_noise": d.sft_noise,
                    "real_share": d.real_share, "n_test_held_out": d.n_test_held_out,
                    "rm_unfaithful": d.rm_unfaithful, "dpo_unfaithful_share": d.dpo_unfaithful_share}
