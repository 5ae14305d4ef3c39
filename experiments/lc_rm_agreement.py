"""Probe: how well a length-control reward model ranks a policy's own samples (what PPO sees).

    python experiments/lc_rm_agreement.py DATA_DIR/test.jsonl POLICY_DIR OUT.jsonl RM_DIR [RM_DIR ...] [--samples 8]

Samples ``--samples`` answers per test prompt from POLICY_DIR at temperature 1 (written to
OUT.jsonl, reused if it exists), scores them with each RM (read at the last answer token, as
the demo's RM stage lays them out) and prints, within each prompt's group: the Spearman correlation of the
RM's scores with closeness to the limit, and the rule score of the RM's favourite and least
favourite answer against the group mean and the best any ranking could pick.
"""
from jaxrlhf.hostmem import tune_host_malloc

tune_host_malloc()  # before numpy/JAX start threads, as the CLI does

import argparse
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from scipy.stats import spearmanr

from jaxrlhf.data.tokenize import layout_sequences
from jaxrlhf.generate import SamplingConfig
from jaxrlhf.models import load_tokenizer, reward_model_from_pretrained
from jaxrlhf.tasks.length_control.pipeline import load_demo_config
from jaxrlhf.stages.sample import generate_file
from jaxrlhf.tasks.length_control.data import closeness as closeness_of
from jaxrlhf.tasks.length_control.score import score

PROMPTS_PER_FORWARD = 8  # prompts (x --samples answers) per RM call: bounds memory

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
                  batch_size=128, max_prompt_length=load_demo_config().max_prompt_length)
rows = [json.loads(x) for x in open(out, encoding="utf-8")]
closeness = np.array([closeness_of(r["response"], r["limit"]) for r in rows]).reshape(-1, group)
rule = np.array([score(r["response"], r["limit"]) for r in rows]).reshape(-1, group)
demo = load_demo_config()
prompts = [r["prompt"] for r in rows[::group]]
answers = [[r["response"] for r in rows[i:i + group]] for i in range(0, len(rows), group)]
for rm_dir in a.rm_dirs:
    rm, tok = reward_model_from_pretrained(rm_dir), load_tokenizer(rm_dir)
    # laid out exactly as the RM stage trains on them: input_ids, attention_mask [prompts, group, T]
    input_ids, attention_mask, _, _ = layout_sequences(
        prompts, answers, tok, max_length=demo.max_length, min_prompt_tokens=None,
        append_eos=demo.rm["data"]["append_eos"], num_slots=group, report=None)
    t = input_ids.shape[-1]
    rewards = [np.asarray(rm(jnp.asarray(input_ids[i:i + PROMPTS_PER_FORWARD].reshape(-1, t)),
                             jnp.asarray(attention_mask[i:i + PROMPTS_PER_FORWARD].reshape(-1, t))))
               for i in range(0, len(prompts), PROMPTS_PER_FORWARD)]
    reward = np.concatenate(rewards).reshape(-1, group)
    rho = [spearmanr(r, c)[0] for r, c in zip(reward, closeness) if np.std(c) > 0 and np.std(r) > 0]
    pick = np.arange(len(reward))
    print(json.dumps({"rm": rm_dir, "spearman": round(float(np.mean(rho)), 3),
                      "rule_of_rm_best": round(float(rule[pick, reward.argmax(1)].mean()), 3),
                      "rule_of_rm_worst": round(float(rule[pick, reward.argmin(1)].mean()), 3),
                      "rule_mean": round(float(rule.mean()), 3), "rule_best": round(float(rule.max(1).mean()), 3)}))
