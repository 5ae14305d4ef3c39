"""Probe: PPO settings on top of a finished demo SFT and an RM probe (issue 6).

    python experiments/lc_ppo_probe.py DEMO_RUN RM_RUN OUT [--set ppo.key=value ...]

Runs the demo's PPO stage from DEMO_RUN/sft/final against RM_RUN/rm/final with the demo's
PPO settings (plus overrides, e.g. --set kl.coef=0.2), then decodes DEMO_RUN's test split
greedily and prints one JSON line: PPO seconds, last iteration's RM score and KL, the mean
rule score, corr(length, limit) and the median length ratio.
"""
import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from jaxrlhf.config import from_dict, to_dict
from jaxrlhf.stages.demo import DemoConfig, _merge, stage_configs
from jaxrlhf.stages.ppo import PPOConfig, run_ppo
from jaxrlhf.tasks.length_control.evaluate import evaluate_length_control

p = argparse.ArgumentParser()
p.add_argument("demo_run"); p.add_argument("rm_run"); p.add_argument("out")
p.add_argument("--set", action="append", default=[], help="ppo key=value (dotted), YAML value")
a = p.parse_args()
logging.basicConfig(level=logging.WARNING)
run, out = Path(a.demo_run), Path(a.out)
data = {q.stem: q for q in (run / "data").glob("*.jsonl")}
cfg = DemoConfig(output_dir=str(out))
ppo = to_dict(stage_configs(cfg, out, data)["ppo"])
ppo["model"]["path"] = str(run / "sft" / "final")
ppo["rewards"] = [{"kind": "model", "path": str(Path(a.rm_run) / "rm" / "final")}]
for item in a.set:
    key, value = item.split("=", 1)
    node = {}
    cur = node
    *parents, last = key.split(".")
    for k in parents:
        cur = cur.setdefault(k, {})
    cur[last] = yaml.safe_load(value)
    ppo = _merge(ppo, node)
start = time.time()
res = run_ppo(from_dict(PPOConfig, ppo))
ppo_s = time.time() - start
r = evaluate_length_control(out / "ppo" / "final", data["test"], out / "pred.jsonl", max_prompt_length=cfg.max_prompt_length)
rows = [json.loads(line) for line in (out / "pred.jsonl").read_text().splitlines()]
L = np.array([x["limit"] for x in rows]); n = np.array([x["chars"] for x in rows])
last = res["history"][-1]
print(json.dumps({"out": str(out), "set": a.set, "ppo_s": round(ppo_s), "rm_score": round(last["score"], 3),
                  "kl": round(last["kl"], 2), "score": r["mean_score"], "corr": round(float(np.corrcoef(L, n)[0, 1]), 3),
                  "median_ratio": round(float(np.median(n / L)), 3), "dist": r["distribution"]}), flush=True)
