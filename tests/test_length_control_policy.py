"""RM rows from the SFT model's own answers: the builder's policy prompts, the prompt file
for the sampler, the ranking of the samples, and where the demo's RM stage reads them."""

from __future__ import annotations

import json

import pytest

from jaxrlhf.data import DataError
from jaxrlhf.tasks.length_control import build_length_control_data
from jaxrlhf.tasks.length_control.data import closeness
from jaxrlhf.tasks.length_control.policy_answers import policy_prompts_file, rank_policy_answers

SMALL = dict(n_sft=60, n_rm=30, n_test=20, n_ppo_prompts=15)


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def test_policy_prompts_are_fresh_and_leave_the_other_files_unchanged(tmp_path):
    plain = build_length_control_data(tmp_path / "plain", seed=2, **SMALL)
    more = build_length_control_data(tmp_path / "more", seed=2, **SMALL, n_rm_policy=25)
    assert "rm_policy_prompts" not in plain and not (tmp_path / "plain" / "rm_policy_prompts.jsonl").exists()
    for name in ("sft", "rm", "dpo", "ppo_prompts", "test"):
        assert plain[name].read_bytes() == more[name].read_bytes(), name
    rows = read(more["rm_policy_prompts"])
    assert len(rows) == 25 and all(5 <= r["limit"] <= 80 and r["limit"] % 5 == 0 for r in rows)
    test_text = {r["text"] for r in read(more["source"]) if r["split"] == "test"}
    assert not any(t in r["prompt"] for r in rows for t in test_text)
    used = {p for r in read(more["rm"]) for p in [r["prompt"]]}
    assert not used & {r["prompt"] for r in rows}
    assert json.loads(more["meta"].read_text(encoding="utf-8"))["counts"]["rm_policy_prompts"] == 25


def test_policy_prompts_file_repeats_each_prompt(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "请用10个字概括：甲乙丙。"}\n\n{"prompt": "写个摘要", "limit": 7}\n', encoding="utf-8")
    rows = read(policy_prompts_file(src, tmp_path / "out.jsonl", 3))
    assert [(r["group"], r["limit"]) for r in rows] == [(1, 10)] * 3 + [(3, 7)] * 3
    with pytest.raises(ValueError, match="answers_per_prompt"):
        policy_prompts_file(src, tmp_path / "x.jsonl", 1)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "写个摘要"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'prompt'"):
        policy_prompts_file(tmp_path / "bad.jsonl", tmp_path / "y.jsonl", 2)
    for text, needle in (('{"prompt": "写10字"}\n{"prompt": ', r"bad.jsonl:2: invalid JSON"),
                         ('{"limit": 10}\n', r"bad.jsonl:1: missing field 'prompt'"),
                         ('["写10字"]\n', r"bad.jsonl:1: expected a JSON object")):
        (tmp_path / "bad.jsonl").write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=needle):
            policy_prompts_file(tmp_path / "bad.jsonl", tmp_path / "y.jsonl", 2)


def test_rank_policy_answers_ranks_by_closeness_and_counts_what_it_drops(tmp_path):
    samples = [
        (1, 10, "一二三四五六七八九十"), (1, 10, "一二三"), (1, 10, "一二三"), (1, 10, " "),
        (1, 10, "一二三四五六七八九十一二"),
        (2, 5, "甲乙丙丁戊"), (2, 5, "甲乙丙丁戊"),  # one distinct answer: no pair
        (3, 4, "甲乙"), (3, 4, "甲乙丙丁戊己"),  # equally close (0.5): no pair
    ]
    file = tmp_path / "samples.jsonl"
    file.write_text("".join(json.dumps({"prompt": f"p{g}", "limit": n, "group": g, "response": a},
                                       ensure_ascii=False) + "\n" for g, n, a in samples), encoding="utf-8")
    counts = rank_policy_answers(file, tmp_path / "rm.jsonl")
    assert counts == {"prompts": 3, "answers": 9, "empty": 1, "repeated": 2, "unfaithful": 0, "rows": 1,
                      "prompts_without_pair": 2}
    [row] = read(tmp_path / "rm.jsonl")
    assert row["prompt"] == "p1"
    assert [r[0] for r in row["response"]] == ["一二三四五六七八九十", "一二三四五六七八九十一二", "一二三"]
    assert row["score"] == [closeness(r[0], 10) for r in row["response"]] == [1.0, 0.8, 0.3]
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p1", "limit": 10, "group": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.jsonl:1: missing field 'response'"):
        rank_policy_answers(tmp_path / "broken.jsonl", tmp_path / "rm2.jsonl")


def test_demo_reward_model_trains_on_both_files(tmp_path):
    from jaxrlhf.data import load_preference_data
    from jaxrlhf.tasks.length_control.pipeline import load_demo_config, policy_rm_file, stage_configs

    names = ("sft", "rm", "dpo", "ppo_prompts", "test")
    cfg = load_demo_config(None, [f"output_dir={tmp_path}"])
    data = {name: tmp_path / f"{name}.jsonl" for name in names}
    assert stage_configs(cfg, tmp_path, data)["rm"].data.train_files == (str(data["rm"]),)
    data["rm_policy_prompts"] = tmp_path / "rm_policy_prompts.jsonl"
    rm = stage_configs(cfg, tmp_path, data)["rm"]
    assert rm.data.train_files == (str(data["rm"]), str(policy_rm_file(tmp_path)))
    # the ranked rows are in the format the RM stage reads
    (tmp_path / "s.jsonl").write_text(json.dumps({"prompt": "p", "limit": 4, "group": 1, "response": "甲乙丙丁"},
                                                 ensure_ascii=False) + "\n" + json.dumps(
        {"prompt": "p", "limit": 4, "group": 1, "response": "甲"}, ensure_ascii=False) + "\n", encoding="utf-8")
    rank_policy_answers(tmp_path / "s.jsonl", tmp_path / "r.jsonl")
    examples, _ = load_preference_data([str(tmp_path / "r.jsonl")], strict=True)
    assert [e.responses for e in examples] == [("甲乙丙丁", "甲")]


def test_policy_answers_not_from_their_source_rank_below_faithful_ones(tmp_path):
    from jaxrlhf.tasks.length_control.data import UNFAITHFUL_PENALTY
    from jaxrlhf.tasks.length_control.score import fidelity

    source = "洛阳北部新区阳光社区将于五月三日举办便民义诊，欢迎居民朋友参加。"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "用10个字概括：" + source, "limit": 10, "source": source},
                                  ensure_ascii=False) + "\n", encoding="utf-8")
    rows = read(policy_prompts_file(prompts, tmp_path / "out.jsonl", 3))
    assert all(r["source"] == source for r in rows)  # carried to the sampler's output rows
    answers = ["南京滨江新区阳光社区", "洛阳北部新区阳光社", "洛阳北部新区阳光社区将于五月"]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({**r, "response": a}, ensure_ascii=False) + "\n"
                               for r, a in zip(rows, answers)), encoding="utf-8")
    counts = rank_policy_answers(samples, tmp_path / "rm.jsonl")
    [row] = read(tmp_path / "rm.jsonl")
    # the exact-length answer is half made up: it ranks last, below the faithful ones of the wrong length
    assert fidelity(answers[0], source) < 0.6 and counts["unfaithful"] == 1
    assert [r[0] for r in row["response"]] == [answers[1], answers[2], answers[0]]
    assert row["score"] == [closeness(answers[1], 10), closeness(answers[2], 10),
                            round(closeness(answers[0], 10) - UNFAITHFUL_PENALTY, 4)]
