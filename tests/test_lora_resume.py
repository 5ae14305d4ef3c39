"""LoRA checkpoints hold what training changes (adapters, heads, optimizer state, step, RNG) and
not the frozen base, which a resume takes from model.path again: the resumed run equals the
uninterrupted one bit for bit, and a resume on other base weights stops with one line."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_models import build_hf_model, tiny_llama_config
from rm_fixtures import char_tokenizer, copy_rows, ranked_rows, rm_config_yaml, write_jsonl
from jaxrlhf.checkpoint import _saved_shapes
from jaxrlhf.cli import main

LORA = "{rank: 4, alpha: 8, targets: all-linear}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-resume") / "model"
    tok = char_tokenizer()
    build_hf_model(tiny_llama_config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     tie_word_embeddings=True, initializer_range=0.1), folder)
    tok.save_pretrained(folder)
    return folder


def rm_run(tmp_path, model_dir, out, steps, *extra):
    train = write_jsonl(ranked_rows(80, k=3, seed=4), tmp_path / "train.jsonl")
    cfg = rm_config_yaml(tmp_path, model_dir, train)
    # a constant learning rate: the schedule does not depend on max_steps, so 4 + 4 steps == 8
    return main(["rm", "--config", cfg, "--set", f"output_dir={out}", "--set", f"model.lora={LORA}",
                 "--set", "train.optim.schedule=constant", "--set", "train.optim.warmup_steps=0",
                 "--set", f"train.max_steps={steps}", *extra])


def assert_same_files(a, b):
    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


@pytest.mark.slow
def test_lora_checkpoint_leaves_the_base_out_and_resume_is_exact(model_dir, tmp_path):
    assert rm_run(tmp_path, model_dir, tmp_path / "straight", 8) == 0
    assert rm_run(tmp_path, model_dir, tmp_path / "split", 4) == 0
    base = load_file(model_dir / "model.safetensors")
    saved = _saved_shapes(tmp_path / "split" / "checkpoints" / "4")
    # adapters ([in, 4] and [4, out]) and the score head with Adam's moments, the normalisation
    # buffer, step, RNG and counts: no tensor of the base's shapes
    assert not {tuple(v.shape) for v in base.values() if v.ndim == 2} & set(saved), saved
    assert (4, 32) in saved and (32, 4) in saved
    assert rm_run(tmp_path, model_dir, tmp_path / "split", 8, "--resume") == 0
    assert_same_files(tmp_path / "straight" / "final" / "model.safetensors",
                      tmp_path / "split" / "final" / "model.safetensors")
    assert_same_files(tmp_path / "straight" / "final" / "adapter" / "adapter_model.safetensors",
                      tmp_path / "split" / "final" / "adapter" / "adapter_model.safetensors")
    # the export command rebuilds the base from model.path too
    assert main(["export", str(tmp_path / "split"), "--out", str(tmp_path / "exported")]) == 0
    assert_same_files(tmp_path / "split" / "final" / "model.safetensors", tmp_path / "exported" / "model.safetensors")


@pytest.mark.slow
def test_lora_resume_on_other_base_weights_is_refused(model_dir, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(model_dir, base)
    assert rm_run(tmp_path, base, tmp_path / "run", 1) == 0
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())["fixed"]
    assert [f["path"] for f in record["model.frozen_base_files"]] == [str(base / "model.safetensors")]
    weights = load_file(base / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    weights[name] = weights[name] * 1.01
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert rm_run(tmp_path, base, tmp_path / "run", 2, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.frozen_base_files" in err and "frozen base" in err, err


@pytest.mark.slow
def test_lora_ppo_resume_is_exact(model_dir, tmp_path):
    """The RL state holds two train states (actor and critic), each with its own frozen base."""
    from test_ppo import ppo_yaml

    prompts = write_jsonl([{"prompt": r["prompt"]} for r in copy_rows(32)], tmp_path / "prompts.jsonl")
    cfg = ppo_yaml(tmp_path, model_dir, prompts, iterations=3, batch=8)
    run = lambda out, n, *extra: main(["ppo", "--config", cfg, "--set", f"output_dir={out}", "--set",
                                       f"model.lora={LORA}", "--set", f"train.iterations={n}", *extra])
    assert run(tmp_path / "straight", 3) == 0
    assert run(tmp_path / "split", 2) == 0
    assert run(tmp_path / "split", 3, "--resume") == 0
    for part in ("final/adapter/adapter_model.safetensors", "critic/adapter/adapter_model.safetensors",
                 "final/model.safetensors"):
        assert_same_files(tmp_path / "straight" / part, tmp_path / "split" / part)
    # export rebuilds both frozen bases from their folders: the actor and the critic as the run wrote them
    assert main(["export", str(tmp_path / "split"), "--out", str(tmp_path / "actor")]) == 0
    assert_same_files(tmp_path / "split" / "final" / "model.safetensors", tmp_path / "actor" / "model.safetensors")
    assert main(["export", str(tmp_path / "split"), "--out", str(tmp_path / "critic"), "--role", "critic"]) == 0
    assert_same_files(tmp_path / "split" / "critic" / "model.safetensors", tmp_path / "critic" / "model.safetensors")
