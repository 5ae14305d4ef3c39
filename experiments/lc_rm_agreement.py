"""Probe: how well a length-control reward model ranks a policy's own samples (what PPO sees).

    python experiments/lc_rm_agreement.py DATA_DIR/test.jsonl POLICY_DIR OUT.jsonl RM_DIR [RM_DIR ...] [--samples 8]

Samples ``--samples`` answers per test prompt from POLICY_DIR at temperature 1 (written to
OUT.jsonl, reused if it exists), scores them with each RM (read at the last answer token, as
the demo's PPO does) and prints, within each prompt's group: the Spearman correlation of the
RM's scores with closeness to the limit, and the rule score of the RM's favourite and least
favourite answer against the group mean and the best any ranking could pick.
"""
import argparse
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from scipy.stats import spearmanr

from jaxrlhf.generate import SamplingConfig
from jaxrlhf.models import load_tokenizer, reward_model_from_pretrained
from jaxrlhf.stages.demo import DemoConfig
from jaxrlhf.stages.sample import generate_file
from jaxrlhf.tasks.length_control.score import count_chars, score

p = argparse.ArgumentParser()
p.add_argument("test")
p.add_argument("policy")
p.add_argument("samples_file")
p.add_argument("rm_dirs", nargs="+")
p.add_argument("--samples", type=int, default=8)
a = p.parse_args()
group = a.samples
out = Path(a.samples_file)
if not out.exists():
    prompts = out.with_suffix(".prompts.jsonl")
    rows = [json.loads(x) for x in open(a.test, encoding="utf-8")]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows for _ in range(group)),
                       encoding="utf-8")
    generate_file(a.policy, str(prompts), str(out), config=SamplingConfig(max_new_tokens=100, temperature=1.0),
                  batch_size=128, max_prompt_length=DemoConfig.max_prompt_length)
rows = [json.loads(x) for x in open(out, encoding="utf-8")]
closeness = np.array([1 - abs(count_chars(r["response"]) / r["limit"] - 1) for r in rows]).reshape(-1, group)
rule = np.array([score(r["response"], r["limit"]) for r in rows]).reshape(-1, group)
for rm_dir in a.rm_dirs:
    rm, tok = reward_model_from_pretrained(rm_dir), load_tokenizer(rm_dir)
    rewards = []
    for start in range(0, len(rows), 64):
        seqs = [tok(r["prompt"])["input_ids"] + tok(r["response"], add_special_tokens=False)["input_ids"]
                for r in rows[start:start + 64]]
        width = -(-max(map(len, seqs)) // 32) * 32  # few shapes, few compilations
        ids = np.zeros((64, width), np.int32)
        mask = np.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        rewards.append(np.asarray(rm(jnp.asarray(ids), jnp.asarray(mask)))[:len(seqs)])
    reward = np.concatenate(rewards).reshape(-1, group)
    rho = [spearmanr(r, c)[0] for r, c in zip(reward, closeness) if np.std(c) > 0 and np.std(r) > 0]
    pick = np.arange(len(reward))
    print(json.dumps({"rm": rm_dir, "spearman": round(float(np.mean(rho)), 3),
                      "rule_of_rm_best": round(float(rule[pick, reward.argmax(1)].mean()), 3),
                      "rule_of_rm_worst": round(float(rule[pick, reward.argmin(1)].mean()), 3),
                      "rule_mean": round(float(rule.mean()), 3), "rule_best": round(float(rule.max(1).mean()), 3)}))
