"""Probe: which answer length a length-control reward model rates best, limit by limit.

    python experiments/lc_rm_lengths.py RM_DIR DATA_DIR [--limits 5 10 15 20 30] [--prompts 12]

For up to ``--prompts`` test prompts of each limit, cuts the prompt's own paragraph to every
length from about 0.5x to 2x the limit (``make_compression`` with a fixed clause order, so
the drafts differ only in where they stop), scores them with the RM laid out as the RM
stage trains (``layout_sequences`` with the demo's ``append_eos``), and prints the lengths the RM
rated best and its mean reward (minus each prompt's mean) at every length. An RM that
compares length with the limit peaks at the limit; run19's RM peaks at 5 characters for a
limit of 5 (3 prompts) and at 29-35 for a limit of 30.
"""
from jaxrlhf.hostmem import tune_host_malloc

tune_host_malloc()  # before numpy/JAX start threads, as the CLI does

import argparse
import json

import jax.numpy as jnp
import numpy as np

from jaxrlhf.data.tokenize import layout_sequences
from jaxrlhf.models import load_tokenizer, reward_model_from_pretrained
from jaxrlhf.tasks.length_control.pipeline import load_demo_config
from jaxrlhf.tasks.length_control.data import make_compression
from jaxrlhf.tasks.length_control.score import count_chars

p = argparse.ArgumentParser()
p.add_argument("rm_dir")
p.add_argument("data_dir")
p.add_argument("--limits", type=int, nargs="+", default=[5, 10, 15, 20, 30])
p.add_argument("--prompts", type=int, default=12)
a = p.parse_args()
rm, tok = reward_model_from_pretrained(a.rm_dir), load_tokenizer(a.rm_dir)
demo = load_demo_config()
read = lambda name: [json.loads(x) for x in open(f"{a.data_dir}/{name}.jsonl", encoding="utf-8")]
paragraphs = [s["text"] for s in read("source") if s["split"] == "test"]
test = read("test")
for limit in a.limits:
    lengths = list(range(max(2, limit // 2), 2 * limit + 4))
    total, best = np.zeros(len(lengths)), []
    for row in [r for r in test if r["limit"] == limit][:a.prompts]:
        paragraph = next((q for q in paragraphs if q in row["prompt"]), None)
        if paragraph is None:
            continue
        answers = [make_compression(paragraph, n, np.random.default_rng(1)) for n in lengths]
        # Laid out as the RM stage trains, one row of len(lengths) slots.
        ids, mask, _, _ = layout_sequences([row["prompt"]], [answers], tok, max_length=demo.max_length,
                                           min_prompt_tokens=None, append_eos=demo.rm["data"]["append_eos"],
                                           num_slots=len(answers), report=None)
        ids, mask = ids[0], mask[0]
        reward = np.asarray(rm.normalized(rm(jnp.asarray(ids), jnp.asarray(mask))))
        total += reward - reward.mean()
        best.append(count_chars(answers[int(reward.argmax())]))
    if best:
        print(f"limit {limit}: {len(best)} prompts, best-rated lengths {sorted(best)}")
        print("  " + " ".join(f"{n}:{v / len(best):+.2f}" for n, v in zip(lengths, total)))
