"""``jaxrlhf export`` writes an RL run's policy and, with ``--role critic``, its value model as
transformers folders (issue 31, defect 4: export refused PPO runs with "unknown stage 'ppo'")."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxrlhf.cli import main
from rm_fixtures import copy_rows, tiny_model_folder, write_jsonl


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """A 2-iteration PPO run (critic started from a random reward model) on the tiny policy."""
    from jaxrlhf.models import reward_model_from_pretrained, save_pretrained

    root = tmp_path_factory.mktemp("export-rl")
    policy = tiny_model_folder(root / "policy")
    save_pretrained(reward_model_from_pretrained(policy, seed=2), root / "rm")
    prompts = write_jsonl([{"prompt": r["prompt"]} for r in copy_rows(16)], root / "prompts.jsonl")
    config = root / "ppo.yaml"
    # keys that read the same before and after the RL rewrite, so the test runs on either
    config.write_text(f"""
output_dir: {root / 'run'}
model: {{path: {policy}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{prompt_files: [{prompts}], max_prompt_length: 12}}
rollout: {{max_new_tokens: 8, temperature: 1.0}}
train: {{iterations: 2, batch_size: 8}}
rewards:
  - {{kind: model, path: {root / 'rm'}}}
""")
    assert main(["ppo", "--config", str(config)]) == 0
    return root / "run"


@pytest.mark.slow
def test_policy_export_is_the_final_actor(ppo_run, tmp_path):
    import transformers

    assert main(["export", str(ppo_run), "--out", str(tmp_path / "policy")]) == 0
    final = load_file(ppo_run / "final" / "model.safetensors")
    exported = load_file(tmp_path / "policy" / "model.safetensors")
    assert exported.keys() == final.keys()
    for key, value in final.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert type(model).__name__.endswith("ForCausalLM")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "policy") is not None


@pytest.mark.slow
def test_critic_export_is_the_trained_value_model(ppo_run, tmp_path):
    import transformers

    assert main(["export", str(ppo_run), "--role", "critic", "--out", str(tmp_path / "critic")]) == 0
    trained = load_file(ppo_run / "critic" / "model.safetensors")
    exported = load_file(tmp_path / "critic" / "model.safetensors")
    assert exported.keys() == trained.keys() and any("score" in k for k in exported)
    for key, value in trained.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "critic")
    assert model.config.num_labels == 1
