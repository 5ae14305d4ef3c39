"""Every training stage logs the learning rate in force, its gradient norm and its throughput
with the train metrics (issue 31, defect 7: the learning rate was never logged)."""

import json

import numpy as np
import pytest

from jaxrlhf.cli import main
from rm_fixtures import copy_pairs, copy_rows, tiny_model_folder, write_jsonl

LEARNING_RATE = 1.0e-3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("logged") / "model")


def logged_rows(run, split):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_supervised_stages_log_learning_rate_grad_norm_and_tokens_per_second(stage, model_dir, tmp_path):
    data = write_jsonl(copy_rows(32) if stage == "sft" else copy_pairs(32), tmp_path / "data.jsonl")
    config = tmp_path / f"{stage}.yaml"
    config.write_text(f"""
output_dir: {tmp_path / 'run'}
model: {{path: {model_dir}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{data}], eval_fraction: 0.0, max_length: 24}}
train: {{epochs: 1, batch_size: 8, log_every: 1, eval_every: 0,
         optim: {{learning_rate: {LEARNING_RATE}, schedule: constant, warmup_steps: 0}}}}
""")
    assert main([stage, "--config", str(config)]) == 0
    rows = logged_rows(tmp_path / "run", "train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert row["learning_rate"] == pytest.approx(LEARNING_RATE), row
        assert np.isfinite(row["grad_norm"]) and row["grad_norm"] > 0, row
        assert row["tokens_per_second"] > 0, row


@pytest.mark.slow
def test_rl_logs_learning_rate_grad_norm_and_generated_tokens_per_second(model_dir, tmp_path):
    from jaxrlhf.models import reward_model_from_pretrained, save_pretrained

    save_pretrained(reward_model_from_pretrained(model_dir, seed=2), tmp_path / "rm")
    prompts = write_jsonl([{"prompt": r["prompt"]} for r in copy_rows(16)], tmp_path / "prompts.jsonl")
    config = tmp_path / "ppo.yaml"
    config.write_text(f"""
output_dir: {tmp_path / 'run'}
model: {{path: {model_dir}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{prompt_files: [{prompts}], max_prompt_length: 12}}
rollout: {{max_new_tokens: 8, temperature: 1.0}}
train: {{iterations: 2, batch_size: 8, log_every: 1,
         actor_optim: {{learning_rate: {LEARNING_RATE}, schedule: constant}}}}
rewards:
  - {{kind: model, path: {tmp_path / 'rm'}}}
""")
    assert main(["ppo", "--config", str(config)]) == 0
    rows = logged_rows(tmp_path / "run", "ppo")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["learning_rate"] == pytest.approx(LEARNING_RATE), row
        assert np.isfinite(row["actor_grad_norm"]) and row["actor_grad_norm"] > 0, row
        assert row["generated_tokens_per_second"] > 0, row
