"""Two JAX processes x 4 fake CPU devices over loopback (gloo) train a reward model to the
same loss and params as one process with 8 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from rm_fixtures import ranked_rows, rm_config_yaml, tiny_model_folder, write_jsonl
from jaxrlhf.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_equal_one_process(tmp_path):
    model = tiny_model_folder(tmp_path / "model")
    train = write_jsonl(ranked_rows(96, k=3, seed=11), tmp_path / "train.jsonl")
    cfg = rm_config_yaml(tmp_path, model, train)
    common = ["--set", "mesh.data=2", "--set", "mesh.fsdp=4", "--set", "mesh.tensor=1",
              "--set", "train.max_steps=4", "--set", "train.save_every=2", "--set", "train.log_every=1"]

    assert main(["rm", "--config", cfg, *common, "--set", f"output_dir={tmp_path / 'one'}"]) == 0

    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "jaxrlhf.cli", "--cpu-devices", "4",
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i), "rm", "--config", cfg, *common,
                               "--set", f"output_dir={tmp_path / 'two'}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    one = load_file(tmp_path / "one" / "final" / "model.safetensors")
    two = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for key in one:
        np.testing.assert_allclose(two[key], one[key], atol=1e-5, err_msg=key)
    losses = lambda run: [r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl")
                                                  .read_text().splitlines()) if r["split"] == "train"]
    np.testing.assert_allclose(losses("two"), losses("one"), atol=1e-5)
    assert len(losses("one")) == 4


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_equal_one_process_for_ppo(tmp_path):
    """The RL learner over 2 processes x 4 devices: rollouts, scores, GAE and updates equal one
    process with 8 devices (params and logged metrics to 1e-5)."""
    from rm_fixtures import copy_rows

    model = tiny_model_folder(tmp_path / "model")
    prompts = write_jsonl([{"prompt": r["prompt"]} for r in copy_rows(32)], tmp_path / "prompts.jsonl")
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(f"""
model: {{path: {model}}}
mesh: {{data: 2, fsdp: 4, tensor: 1}}
data: {{prompt_files: [{prompts}], max_prompt_length: 12}}
rollout: {{max_new_tokens: 8, temperature: 1.0}}
algorithm: {{kl: {{coef: 0.02}}, epochs: 2, minibatches: 2}}
train:
  iterations: 3
  batch_size: 16
  save_every: 2
  actor_optim: {{learning_rate: 3.0e-3, schedule: constant}}
  critic_optim: {{learning_rate: 3.0e-3, schedule: constant}}
rewards:
  - {{kind: rule, function: "jaxrlhf.rewards:target_length_tokens", kwargs: {{target: 4}}}}
""")
    assert main(["ppo", "--config", str(cfg), "--set", f"output_dir={tmp_path / 'one'}"]) == 0

    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "jaxrlhf.cli", "--cpu-devices", "4",
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i), "ppo", "--config", str(cfg),
                               "--set", f"output_dir={tmp_path / 'two'}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    for folder in ("final", "critic"):
        one = load_file(tmp_path / "one" / folder / "model.safetensors")
        two = load_file(tmp_path / "two" / folder / "model.safetensors")
        for key in one:
            np.testing.assert_allclose(two[key], one[key], atol=1e-5, err_msg=f"{folder} {key}")
    rows = lambda run: [r for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                        if r["split"] == "ppo"]
    assert len(rows("one")) == 3
    for a, b in zip(rows("one"), rows("two")):
        for key in ("score", "kl", "policy_loss", "value_loss", "response_length", "advantage_mean"):
            if key in a:
                np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=key)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_equal_one_process_for_lora_dpo(tmp_path):
    """LoRA DPO over 2 processes x 4 devices (adapters sharded by the base's rules, the reference
    on the policy's own base, checkpoints without the base) equals one process with 8 devices."""
    from rm_fixtures import copy_pairs

    model = tiny_model_folder(tmp_path / "model")
    pairs = write_jsonl(copy_pairs(64, seed=5), tmp_path / "pairs.jsonl")
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(f"""
model: {{path: {model}, lora: {{rank: 4, alpha: 8, targets: all-linear}}}}
mesh: {{data: 2, fsdp: 4, tensor: 1}}
data: {{train_files: [{pairs}], eval_fraction: 0.0, max_length: 24}}
train: {{max_steps: 4, batch_size: 16, save_every: 2, log_every: 1, optim: {{learning_rate: 1.0e-2}}}}
loss: {{beta: 0.5}}
""")
    assert main(["dpo", "--config", str(cfg), "--set", f"output_dir={tmp_path / 'one'}"]) == 0

    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "jaxrlhf.cli", "--cpu-devices", "4",
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i), "dpo", "--config", str(cfg),
                               "--set", f"output_dir={tmp_path / 'two'}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    for part in ("model.safetensors", "adapter/adapter_model.safetensors"):
        one = load_file(tmp_path / "one" / "final" / part)
        two = load_file(tmp_path / "two" / "final" / part)
        assert one.keys() == two.keys()
        for key in one:
            np.testing.assert_allclose(two[key], one[key], atol=1e-5, err_msg=f"{part} {key}")
    rows = lambda run: [r for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                        if r["split"] == "train"]
    assert len(rows("one")) == 4
    for a, b in zip(rows("one"), rows("two")):
        for key in ("loss", "reward_accuracy", "margin"):
            if key in a:
                np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=key)
    assert any(r.get("margin", 0) != 0 for r in rows("one"))  # the adapters moved the policy off its reference
