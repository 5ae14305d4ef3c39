"""metrics.jsonl after a resume logs each step once (issue 36, case 6): a run killed after it
logged steps past its last complete checkpoint logs those steps again when resumed."""

import json
import shutil

import pytest

from rm_fixtures import ranked_rows, rm_config_yaml, tiny_model_folder, write_jsonl
from jaxrlhf.cli import main


def logged(run, split):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if r["split"] == split]


@pytest.mark.slow
def test_steps_logged_after_the_last_checkpoint_are_not_logged_twice(tmp_path):
    model_dir = tiny_model_folder(tmp_path / "model")
    train = write_jsonl(ranked_rows(120, k=3, seed=11), tmp_path / "train.jsonl")
    cfg = rm_config_yaml(tmp_path, model_dir, train)
    sets = ["--set", "train.max_steps=8", "--set", "train.save_every=4", "--set", "train.log_every=1",
            "--set", "train.eval_every=2"]
    assert main(["rm", "--config", cfg, *sets]) == 0
    run = tmp_path / "run"
    assert logged(run, "train") == list(range(1, 9)) and logged(run, "eval") == [2, 4, 6, 8]
    # what a kill during the save of step 8 leaves: steps 5-8 logged, step 8's checkpoint still in
    # Orbax's temporary folder, no final model
    checkpoints = run / "checkpoints"
    (checkpoints / "8").rename(checkpoints / "8.orbax-checkpoint-tmp-1")
    for name in ("final", "results.json"):
        path = run / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    assert main(["rm", "--config", cfg, *sets, "--resume"]) == 0
    assert logged(run, "train") == list(range(1, 9))
    assert logged(run, "eval") == [2, 4, 6, 8]
