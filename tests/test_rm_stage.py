"""`jaxrlhf rm` end to end: learning, kill-and-resume, bad data, export to transformers."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from rm_fixtures import ranked_rows, rm_config_yaml, tiny_model_folder, write_jsonl
from jaxrlhf.cli import main
from jaxrlhf.models import reward_model_from_pretrained


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("base") / "model")


@pytest.mark.slow
def test_learns_held_out_rankings(model_dir, tmp_path, capsys):
    train = write_jsonl(ranked_rows(300, k=3, seed=0), tmp_path / "train.jsonl")
    held_out = write_jsonl(ranked_rows(60, k=4, seed=99), tmp_path / "eval.jsonl")
    cfg = rm_config_yaml(tmp_path, model_dir, train)
    assert main(["rm", "--config", cfg, "--set", "train.epochs=2",
                 "--set", f"data.eval_files=[{held_out}]", "--set", "data.num_slots=4"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval"]["pair_accuracy"] >= 0.9, results["eval"]
    assert results["data"]["train"]["kept"] == 300
    # metrics reached TensorBoard and the JSONL log
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    logged = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "eval"} <= {r["split"] for r in logged}
    # the stored normalisation gives eval rewards mean 0, std 1
    rm = reward_model_from_pretrained(tmp_path / "run" / "final")
    gain, bias = np.asarray(rm.normalization.get_value())
    norm = results["reward_normalization"]
    np.testing.assert_allclose([gain, bias], [norm["gain"], norm["bias"]], rtol=1e-6)
    assert "rm: " in capsys.readouterr().out


def _final_params(run_dir):
    return load_file(run_dir / "final" / "model.safetensors")


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(model_dir, tmp_path):
    train = write_jsonl(ranked_rows(1200, k=3, seed=3), tmp_path / "train.jsonl")
    cfg = rm_config_yaml(tmp_path, model_dir, train)
    common = ["--set", "train.epochs=3", "--set", "train.save_every=10", "--set", "train.eval_every=50"]

    assert main(["rm", "--config", cfg, *common, "--set", f"output_dir={tmp_path / 'straight'}"]) == 0

    killed_dir = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    # the same 8 CPU devices as this process (conftest): XLA:CPU compiles the step for the
    # backend it sees, and a 1-device backend sums in another order (differences ~2e-6)
    proc = subprocess.Popen([sys.executable, "-m", "jaxrlhf.cli", "--cpu-devices", "8", "rm", "--config", cfg, *common,
                             "--set", f"output_dir={killed_dir}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    checkpoints = killed_dir / "checkpoints"
    while time.time() < deadline:
        if checkpoints.exists() and any(p.name.isdigit() and int(p.name) >= 20 for p in checkpoints.iterdir()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "final").exists(), "the run finished before it could be killed"

    assert main(["rm", "--config", cfg, *common, "--set", f"output_dir={killed_dir}", "--resume"]) == 0
    straight, resumed = _final_params(tmp_path / "straight"), _final_params(killed_dir)
    assert straight.keys() == resumed.keys()
    for key in straight:
        np.testing.assert_allclose(resumed[key], straight[key], atol=1e-6, err_msg=key)
    # without --resume an existing run is not silently overwritten
    assert main(["rm", "--config", cfg, *common, "--set", f"output_dir={killed_dir}"]) == 2


def test_bad_data_is_reported(model_dir, tmp_path, capsys):
    rows = ranked_rows(40, k=3, seed=5)
    lines = [json.dumps(r) for r in rows]
    lines[2] = '{"prompt": "q: abc", "response": [["x"], ["y"]'  # bad JSON on line 3
    lines[5] = json.dumps({"prompt": "q", "response": [["a"], ["b"]], "score": [1, 2, 3]})
    lines[7] = json.dumps({"response": [["a"], ["b"]], "score": [1, 2]})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    cfg = rm_config_yaml(tmp_path, model_dir, train)

    assert main(["rm", "--config", cfg, "--set", "data.strict=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{train}:3:" in err and "invalid JSON" in err

    assert main(["rm", "--config", cfg, "--set", "train.max_steps=2"]) == 0
    report = json.loads((tmp_path / "run" / "results.json").read_text())["data"]["train"]
    assert report["kept"] == 37 and report["total"] == 40
    assert report["skipped"] == {"invalid JSON": 1, "score count mismatch": 1, "missing prompt": 1}


@pytest.mark.slow
def test_export_scores_the_same_in_transformers(model_dir, tmp_path):
    train = write_jsonl(ranked_rows(80, k=3, seed=7), tmp_path / "train.jsonl")
    cfg = rm_config_yaml(tmp_path, model_dir, train)
    assert main(["rm", "--config", cfg, "--set", "train.max_steps=6", "--set", "train.save_every=3"]) == 0
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--step", "3"]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "latest")]) == 0

    ours = reward_model_from_pretrained(out)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = tok(["q: abc zz", "q: hello there"], padding=True, return_tensors="np")
    with torch.no_grad():
        ref = theirs(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                     attention_mask=torch.from_numpy(batch["attention_mask"]).long()).logits[:, 0].numpy()
    # transformers outputs gain * raw (the gain is folded into score.weight; its head has no bias)
    gain = float(np.asarray(ours.normalization.get_value())[0])
    np.testing.assert_allclose(gain * np.asarray(ours(batch["input_ids"], batch["attention_mask"])), ref, atol=1e-4)
    # the latest checkpoint is the run's final model
    latest, final = load_file(tmp_path / "latest" / "model.safetensors"), _final_params(tmp_path / "run")
    for key in final:
        np.testing.assert_array_equal(latest[key], final[key])
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--step", "5"]) == 2
