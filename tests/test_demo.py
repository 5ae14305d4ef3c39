"""`jaxrlhf demo` end to end at smoke size: every stage runs, the report is written, a
re-run skips finished stages. (The score thresholds need the full size: see README.)"""

import pytest
import json

from jaxrlhf.cli import main


@pytest.mark.slow
def test_demo_smoke_runs_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "smoke", "--out", str(out)]) == 0
    assert "demo finished" in capsys.readouterr().out
    for stage in ("sft", "rm", "ppo", "dpo"):
        assert (out / stage / "results.json").exists(), stage
        assert (out / stage / "final" / "config.json").exists(), stage
    # the smoke size turns on the RM rows ranked from the SFT model's own answers
    ranked = json.loads((out / "rm_data" / "results.json").read_text())["ranked"]
    assert ranked["prompts"] == 16 and ranked["rows"] > 0
    rm_config = (out / "rm" / "config.yaml").read_text()
    assert "rm_policy.jsonl" in rm_config and "data/rm.jsonl" in rm_config
    for model in ("sft", "dpo", "ppo"):
        rows = [json.loads(l) for l in (out / "eval" / f"{model}.jsonl").read_text().splitlines()]
        assert len(rows) == 16 + 8 and all("chars" in r and "score" in r and "fidelity" in r for r in rows)
        assert [r["part"] for r in rows] == ["in_distribution"] * 16 + ["held_out"] * 8
        summary = json.loads((out / "eval" / f"{model}.json").read_text())
        assert set(summary["parts"]) == {"in_distribution", "held_out"} and summary["mean_fidelity"] is not None
    report = (out / "report.md").read_text()
    for needle in ("| SFT |", "| DPO |", "| RLHF (PPO + learned RM) |", "Reward model", "## Examples",
                   "mean fidelity", "held-out source score", "Mean fidelity of the answers in each score band",
                   "| held-out source |", "By limit band", "sft_loss.png", "rm_loss.png", "ppo/ppo_kl.png"):
        assert needle in report, needle
    assert (out / "sft_loss.png").stat().st_size > 1000

    first = json.loads((out / "timings.json").read_text())
    assert first["base model"] > 0 and first["total"] >= first["sft"] > 0

    # everything finished: the re-run trains nothing (no stage's files change), it rebuilds the report
    finished = {p: p.stat().st_mtime_ns for stage in ("sft", "rm", "ppo", "dpo")
                for p in (out / stage).rglob("*") if p.is_file()}
    assert main(["demo", "--size", "smoke", "--out", str(out)]) == 0
    again = {p: p.stat().st_mtime_ns for stage in ("sft", "rm", "ppo", "dpo")
             for p in (out / stage).rglob("*") if p.is_file()}
    assert again == finished
    # the rebuilt report keeps the times the steps took (issue 31, defect 6: 'base model 0 / total 0')
    assert json.loads((out / "timings.json").read_text()) == first
    assert f"| total | {first['total']:.0f} |" in (out / "report.md").read_text()


def test_merge_timings_keeps_skipped_steps():
    from jaxrlhf.tasks.length_control.pipeline import merge_timings
    first = merge_timings({}, {"data": 2.0, "sft": 10.0, "rm": 3.0})
    assert first == {"data": 2.0, "sft": 10.0, "rm": 3.0, "total": 15.0}
    again = merge_timings(first, {"rm": 5.0, "ppo": 7.0})
    assert again == {"data": 2.0, "sft": 10.0, "rm": 5.0, "ppo": 7.0, "total": 24.0}
    assert merge_timings(again, {}) == again
