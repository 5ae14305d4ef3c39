"""The README's walk through every shipped example runs as written (issue 31, defects 1-2):
examples/walk.sh holds the README's commands, in order, and runs them on the shipped samples."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_tracking import tensorboard_tags

ROOT = Path(__file__).resolve().parents[1]
WALK = ROOT / "examples" / "walk.sh"


def readme_walk() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walk through the examples", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the walk section holds one bash block"
    return [line for line in blocks[0].splitlines() if line.strip()]


def script_walk() -> list[str]:
    text = WALK.read_text()
    body = text.split("# --- the README's walk", 1)[1].split("# --- end of the README's walk", 1)[0]
    return [line for line in body.splitlines()[1:] if line.strip()]


def test_walk_script_runs_the_readme_commands_in_order():
    assert script_walk() == readme_walk()
    commands = " ".join(readme_walk())
    for config in [*sorted((ROOT / "configs" / "init").glob("*.yaml")),
                   *(ROOT / "configs" / stage / "example.yaml" for stage in ("sft", "rm", "dpo", "ppo"))]:
        assert str(config.relative_to(ROOT)) in commands, f"the walk does not run {config}"
    for run in ("sft", "rm", "dpo", "ppo"):
        assert f"jaxrlhf export runs/{run} " in commands


def example_configs() -> dict[str, dict]:
    import yaml
    return {s: yaml.safe_load((ROOT / "configs" / s / "example.yaml").read_text()) for s in ("sft", "rm", "dpo", "ppo")}


def test_example_configs_chain():
    """Each example reads what the one before it writes (defect 1: the SFT example read
    PATH/TO/HF_FOLDER)."""
    import yaml
    configs = example_configs()
    init = yaml.safe_load((ROOT / "configs" / "init" / "llama-tiny.yaml").read_text())
    assert configs["sft"]["model"]["path"] == init["output_dir"]
    assert configs["rm"]["model"]["path"] == configs["dpo"]["model"]["path"] == configs["ppo"]["model"]["path"] \
        == configs["sft"]["output_dir"] + "/final"


def test_ppo_example_reads_the_reward_model_the_rm_example_writes():
    """Defect 2: configs/ppo/example.yaml read runs/rm/final, the RM example wrote runs/rm-example."""
    configs = example_configs()
    reward_models = [r["path"] for r in configs["ppo"]["rewards"] if r["kind"] == "model"]
    assert reward_models == [configs["rm"]["output_dir"] + "/final"]


@pytest.mark.slow
def test_walk_runs_as_written(tmp_path):
    work = tmp_path / "walk"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    env.pop("XLA_FLAGS", None)  # the CLI's own devices, as a user has them
    proc = subprocess.run(["bash", str(WALK), str(work)], env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = work / "runs"
    for stage in ("sft", "rm", "dpo", "ppo"):
        assert (runs / stage / "final" / "config.json").exists()
    for export in ("sft", "rm", "dpo", "ppo", "ppo-critic"):
        assert (work / "exports" / export / "model.safetensors").exists(), export
    prompts = (work / "examples" / "prompts_sample.jsonl").read_text().splitlines()
    generations = (work / "generations.jsonl").read_text().splitlines()
    scored = [json.loads(line) for line in (work / "scored.jsonl").read_text().splitlines()]
    assert len(generations) == len(scored) == len(prompts)  # one row per prompt row
    assert all(isinstance(s["reward"], float) for s in scored)
    # tokens/s for every supervised stage; a few sampled completions as text for RL
    for stage in ("sft", "rm", "dpo"):
        rows = [json.loads(line) for line in (runs / stage / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if r["split"] == "train"]
        assert train and all(r["tokens_per_second"] > 0 and "learning_rate" in r for r in train), stage
    tags = tensorboard_tags(runs / "ppo" / "tensorboard")
    samples = [text for tag, events in tags.items() if tag.startswith("ppo/samples") for _, text in events]
    assert samples and "prompt:" in samples[0] and "answer:" in samples[0] and "score" in samples[0]
    # the RM example's small eval split is warned about and recorded
    norm = json.loads((runs / "rm" / "results.json").read_text())["reward_normalization"]
    assert norm["eval_answers"] < 32 and "fewer than 32" in norm["warning"]
