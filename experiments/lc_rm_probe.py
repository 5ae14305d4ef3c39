"""Probe: can a reward model learn the length rule on top of an SFT probe's model? (issue 6)

    python experiments/lc_rm_probe.py /tmp/lc_probe/w7 /tmp/lc_probe/rm_w7 [LR] [EPOCHS] [ROWS]

Builds ROWS (default 1500) ranked rows (3 compressions per prompt, ranked by the rule; seed 1, so other
paragraphs than the SFT probe's; 30-120-character paragraphs), trains the ordinary RM
stage from SFT_RUN/sft/final with the demo's RM settings (learning rate LR, default 5e-4;
EPOCHS, default 1) and prints the seconds and the held-out eval (pairwise accuracy).
"""

import json
import logging
import sys
import time
from pathlib import Path

from jaxrlhf.config import from_dict, to_dict
from jaxrlhf.stages.demo import DemoConfig, stage_configs
from jaxrlhf.stages.rm import RMConfig, run_rm
from jaxrlhf.tasks.length_control import build_length_control_data

logging.basicConfig(level=logging.WARNING)
src, out = Path(sys.argv[1]), Path(sys.argv[2])
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 5e-4
epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 1
rows = int(sys.argv[5]) if len(sys.argv) > 5 else 1500
data = build_length_control_data(out / "data", seed=1, n_sft=10, n_rm=rows, n_test=20, n_ppo_prompts=10,
                                 paragraph_chars=(30, 120))
rm = to_dict(stage_configs(DemoConfig(output_dir=str(out), max_length=256), out, data)["rm"])
rm["model"]["path"] = str(src / "sft" / "final")
rm["train"]["optim"]["learning_rate"] = lr
rm["train"]["epochs"] = epochs
start = time.time()
result = run_rm(from_dict(RMConfig, rm))
print(json.dumps({"rm_s": round(time.time() - start), "steps": result["steps"], "eval": result["eval"]}))
