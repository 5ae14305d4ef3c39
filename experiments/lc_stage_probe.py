"""Probe: re-run one stage of a finished demo with other settings (issue 6 experiments).

    python experiments/lc_stage_probe.py rm  DEMO_RUN OUT [--set key=value ...]
    python experiments/lc_stage_probe.py ppo DEMO_RUN OUT [--rm RM_RUN] [--set key=value ...]
    python experiments/lc_stage_probe.py dpo DEMO_RUN OUT [--set key=value ...]

Builds the stage's config exactly as ``jaxrlhf demo`` does for DEMO_RUN (its data and its
sft/final), applies the overrides (dotted keys of that stage's config, YAML values, e.g.
``--set data.append_eos=false``), runs it into OUT/<stage>, and prints one JSON line: the
stage's seconds and held-out eval; for ppo and dpo also the greedy test-split score,
corr(length, limit), the median length ratio and the score distribution. ``--rm`` scores PPO
with RM_RUN/rm/final instead of DEMO_RUN's reward model (e.g. one trained by this probe);
either is read where the demo's RM settings say (the last answer token by default).
"""
from jaxrlhf.hostmem import tune_host_malloc

tune_host_malloc()  # before numpy/JAX start threads, as the CLI does

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from jaxrlhf.config import apply_overrides, from_dict, to_dict
from jaxrlhf.tasks.length_control.pipeline import load_demo_config, stage_configs
from jaxrlhf.stages.dpo import DPOConfig, run_dpo
from jaxrlhf.stages.rl import RLConfig, run_rl
from jaxrlhf.stages.rm import RMConfig, run_rm
from jaxrlhf.tasks.length_control.evaluate import evaluate_length_control

STAGES = {"rm": (RMConfig, run_rm), "ppo": (RLConfig, run_rl), "dpo": (DPOConfig, run_dpo)}

p = argparse.ArgumentParser()
p.add_argument("stage", choices=sorted(STAGES))
p.add_argument("demo_run")
p.add_argument("out")
p.add_argument("--rm", default=None, help="ppo: a run folder whose rm/final scores the rollouts")
p.add_argument("--reward", action="append", default=[],
               help="ppo: key=value (YAML value) of the reward-model source, e.g. dense=true")
p.add_argument("--set", action="append", default=[], help="stage key=value (dotted), YAML value")
a = p.parse_args()
logging.basicConfig(level=logging.WARNING)
run, out = Path(a.demo_run), Path(a.out)
data = {q.stem: q for q in (run / "data").glob("*.jsonl")}
demo = load_demo_config(None, [f"output_dir={out}"])
cfg = to_dict(stage_configs(demo, out, data)[a.stage])
cfg["model"]["path"] = str(run / "sft" / "final")
if a.stage == "ppo":
    cfg["rewards"][0]["path"] = str(Path(a.rm or run) / "rm" / "final")
    cfg["rewards"][0] = apply_overrides(cfg["rewards"][0], a.reward)
cfg = apply_overrides(cfg, a.set)
config_cls, runner = STAGES[a.stage]
start = time.time()
result = runner(from_dict(config_cls, cfg))
line = {"stage": a.stage, "out": str(out), "set": a.set + [f"reward.{r}" for r in a.reward], "seconds": round(time.time() - start),
        "eval": {k: v for k, v in (result.get("eval") or {}).items() if isinstance(v, (int, float))}}
if a.stage in ("ppo", "dpo"):
    predictions = out / "pred.jsonl"
    r = evaluate_length_control(out / a.stage / "final", data["test"], predictions,
                                max_prompt_length=demo.max_prompt_length)
    rows = [json.loads(x) for x in predictions.read_text().splitlines()]
    limits = np.array([x["limit"] for x in rows])
    chars = np.array([x["chars"] for x in rows])
    line.update(score=r["mean_score"], corr=round(float(np.corrcoef(limits, chars)[0, 1]), 3),
                median_ratio=round(float(np.median(chars / limits)), 3), dist=r["distribution"])
print(json.dumps(line), flush=True)
