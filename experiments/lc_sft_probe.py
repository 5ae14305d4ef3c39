"""Probe: train the demo's SFT model with another architecture or SFT setting, on a
finished demo's data, and measure how precisely it stops (issue 6 experiments).

    python experiments/lc_sft_probe.py DEMO_RUN OUT [--n-sft N] [--arch key=value ...] [--set key=value ...]

``--arch`` overrides the demo's model section (e.g. ``rope_theta=500``, ``num_attention_heads=4``),
``--set`` the SFT stage config (dotted keys, YAML values); ``--n-sft`` trains on the first N
rows of DEMO_RUN/data/sft.jsonl only. Prints one JSON line: seconds, SFT eval loss, the greedy
test-split score and, by limit band, the median and spread (std) of length / limit: the
spread is what no preference stage removes, the median what DPO and PPO move.
"""
import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from jaxrlhf.config import apply_overrides, from_dict, to_dict
from jaxrlhf.stages.demo import DemoConfig, DemoModelConfig, _texts, build_base_model, stage_configs
from jaxrlhf.stages.sft import SFTConfig, run_sft
from jaxrlhf.tasks.length_control.evaluate import evaluate_length_control

p = argparse.ArgumentParser()
p.add_argument("demo_run")
p.add_argument("out")
p.add_argument("--n-sft", type=int, default=0)
p.add_argument("--arch", action="append", default=[], help="demo model key=value")
p.add_argument("--set", action="append", default=[], help="sft stage key=value (dotted), YAML value")
a = p.parse_args()
logging.basicConfig(level=logging.WARNING)
run, out = Path(a.demo_run), Path(a.out)
out.mkdir(parents=True, exist_ok=True)
data = {q.stem: q for q in (run / "data").glob("*.jsonl")}
if a.n_sft:
    lines = data["sft"].read_text(encoding="utf-8").splitlines()[: a.n_sft]
    data["sft"] = out / "sft_subset.jsonl"
    data["sft"].write_text("".join(x + "\n" for x in lines), encoding="utf-8")
arch = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.arch)}
demo = DemoConfig(output_dir=str(out), model=dataclasses.replace(DemoModelConfig(), **arch))
start = time.time()
build_base_model(demo, out, _texts({q.stem: q for q in (run / "data").glob("*.jsonl")}))  # the demo's tokenizer
cfg = apply_overrides(to_dict(stage_configs(demo, out, data)["sft"]), a.set)
result = run_sft(from_dict(SFTConfig, cfg))
seconds = round(time.time() - start)
predictions = out / "pred.jsonl"
r = evaluate_length_control(out / "sft" / "final", data["test"], predictions, max_prompt_length=demo.max_prompt_length)
rows = [json.loads(x) for x in predictions.read_text().splitlines()]
limits = np.array([x["limit"] for x in rows])
ratio = np.array([x["chars"] for x in rows]) / limits
bands = {}
for lo, hi in ((5, 10), (15, 25), (30, 45), (50, 65), (70, 80)):
    m = (limits >= lo) & (limits <= hi)
    bands[f"{lo}-{hi}"] = {"median": round(float(np.median(ratio[m])), 3), "std": round(float(np.std(ratio[m])), 3)}
print(json.dumps({"out": str(out), "arch": arch, "set": a.set, "n_sft": a.n_sft or "all", "seconds": seconds,
                  "eval": {k: v for k, v in (result.get("eval") or {}).items() if isinstance(v, (int, float))},
                  "score": r["mean_score"], "ratio_by_limit": bands}), flush=True)
