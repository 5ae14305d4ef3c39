"""Fidelity (issue 34): the share of an answer's character bigrams found in its source paragraph,
in the evaluation, the CLI's printout and the rule reward."""

import json

import numpy as np
import pytest

from jaxrlhf.rewards import TextBatch
from jaxrlhf.tasks.length_control.evaluate import evaluate_predictions, format_distribution
from jaxrlhf.tasks.length_control.score import combine_length_fidelity, fidelity, length_fidelity_reward

SOURCE = "洛阳北部新区阳光社区将于5月3日举办便民义诊，欢迎居民朋友参加。"


def test_verbatim_extracts_score_one_and_foreign_text_zero():
    assert fidelity("洛阳北部新区阳光社区", SOURCE) == 1.0
    assert fidelity("南京滨江", SOURCE) == 0.0  # no bigram of it is in the source
    # the example: names and numbers rewritten from elsewhere
    assert fidelity("南京滨江新区阳光社区将于1。", SOURCE) == pytest.approx(7 / 13)  # 14 characters, 13 bigrams: 新区 区阳 阳光 光社 社区 区将 将于


def test_whitespace_is_removed_from_both():
    assert fidelity("洛阳 北部\n新区", SOURCE) == 1.0
    assert fidelity("洛阳北部", "洛 阳 北\t部") == 1.0


def test_repeats_count_only_as_often_as_the_source_has_them():
    # 欢迎居民 has 3 bigrams; repeated, the second copy's bigrams (and the join) are not in the source again
    assert fidelity("欢迎居民欢迎居民", SOURCE) == pytest.approx(3 / 7)
    assert fidelity("好好好", "好好好") == 1.0  # the source has 好好 twice


def test_empty_and_one_character_answers():
    assert fidelity("", SOURCE) == 0.0  # says nothing from the source
    assert fidelity("  \n", SOURCE) == 0.0
    assert fidelity("洛", SOURCE) == 1.0  # no bigram: the character itself must be in the source
    assert fidelity("京", SOURCE) == 0.0
    assert fidelity("洛阳", "") == 0.0


def test_combinations_and_the_rule_reward():
    assert combine_length_fidelity(0.8, 0.5, "product") == pytest.approx(0.4)
    assert combine_length_fidelity(0.8, 0.5, "weighted_sum", 0.25) == pytest.approx(0.725)
    assert combine_length_fidelity(0.8, 0.5, "length") == 0.8
    assert combine_length_fidelity(0.8, 0.5, "fidelity") == 0.5
    with pytest.raises(ValueError, match="combine must be one of"):
        combine_length_fidelity(0.8, 0.5, "max")
    answers = ["洛阳北部新区阳光社区", "南京滨江新区阳光社区", "洛阳北部新区阳光社区将于五月三日举办便民义诊"]
    batch = TextBatch(prompts=["用10个字概括：" + SOURCE] * 3, responses=answers, response_tokens=np.zeros((3, 1)),
                      response_mask=np.ones((3, 1)), finished=np.ones(3, bool),
                      meta=[{"limit": 10, "source": SOURCE}] * 3)
    product = length_fidelity_reward(batch, combine="product")
    lengths = length_fidelity_reward(batch, combine="length")
    assert lengths.tolist() == [1.0, 1.0, 0.0]  # both first answers are the right length
    assert product[0] == 1.0 and 0 < product[1] < 0.6 and product[2] == 0.0  # only the first is faithful
    # without a source field the prompt (which holds the paragraph) is the source
    no_source = TextBatch(**{**batch.__dict__, "meta": [{"limit": 10}] * 3})
    assert length_fidelity_reward(no_source, combine="product").tolist() == pytest.approx(product.tolist())
    with pytest.raises(ValueError, match="fidelity_weight"):
        length_fidelity_reward(batch, combine="weighted_sum", fidelity_weight=2.0)


def test_evaluation_reports_fidelity_per_level_and_per_part(tmp_path):
    rows = [{"prompt": "p1", "limit": 10, "source": SOURCE, "part": "in_distribution", "response": "洛阳北部新区阳光社区"},
            {"prompt": "p2", "limit": 10, "source": SOURCE, "part": "in_distribution", "response": "南京滨江新区阳光社区"},
            {"prompt": "p3", "limit": 4, "source": "软件包管理系统", "part": "held_out", "response": "管理系统"}]
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = evaluate_predictions(path, tmp_path / "scored.jsonl")
    scored = [json.loads(l) for l in (tmp_path / "scored.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["fidelity"] for r in scored] == [1.0, round(fidelity(rows[1]["response"], SOURCE), 4), 1.0]
    assert result["mean_fidelity"] == pytest.approx(sum(r["fidelity"] for r in scored) / 3)
    assert result["fidelity_by_level"]["1.0"] == pytest.approx(result["mean_fidelity"])  # all three at 1.0
    assert result["fidelity_by_level"]["0.0"] is None
    parts = result["parts"]
    assert list(parts) == ["in_distribution", "held_out"]
    assert parts["held_out"]["rows"] == 1 and parts["held_out"]["mean_fidelity"] == 1.0
    assert parts["in_distribution"]["mean_fidelity"] == pytest.approx((1.0 + scored[1]["fidelity"]) / 2)
    text = format_distribution(result)
    assert "fidelity" in text.splitlines()[0] and "mean fidelity" in text and "held_out: mean score" in text


def test_demo_adds_the_configured_rule_reward_to_ppo(tmp_path):
    from jaxrlhf.config import ConfigError
    from jaxrlhf.tasks.length_control.pipeline import RULE_FUNCTION, load_demo_config, stage_configs

    data = {name: tmp_path / f"{name}.jsonl" for name in ("sft", "rm", "dpo", "ppo_prompts", "test")}

    def rewards(*overrides):
        cfg = load_demo_config(None, [f"output_dir={tmp_path}", *overrides])
        return stage_configs(cfg, tmp_path, data)["ppo"].rewards

    assert [r.kind for r in rewards()] == ["model"]  # demo.yaml: the learned RM alone
    fidelity = rewards("ppo_rule={combine: fidelity}")  # as configs/length_control/real-text.yaml
    assert [r.kind for r in fidelity] == ["model", "rule"]
    assert fidelity[1].function == RULE_FUNCTION and fidelity[1].kwargs == {"combine": "fidelity"}
    weighted = rewards("ppo_rule={combine: weighted_sum, fidelity_weight: 0.3, weight: 2.0}")
    assert weighted[1].kwargs == {"combine": "weighted_sum", "fidelity_weight": 0.3} and weighted[1].weight == 2.0
    assert [r.kind for r in rewards("ppo_rule={combine: none}")] == ["model"]
    with pytest.raises(ConfigError, match="ppo_rule.combine"):
        rewards("ppo_rule={combine: max}")
    with pytest.raises(ConfigError, match="unknown key"):
        rewards("ppo_rule={combine: product, wieght: 1}")
