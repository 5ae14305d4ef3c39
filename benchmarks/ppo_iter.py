"""Seconds per PPO iteration, split into rollout / score / train, on a stated model size.

    python benchmarks/ppo_iter.py [--hidden 256 --layers 4 --batch 16 --new 32 --iterations 6]

Actor, critic, reference and a learned reward model (all Llama of the same size, random
weights) plus a rule reward; prompts of --prompt tokens. Medians over the iterations
after the first (which includes compilation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_folder  # noqa: E402


def main(argv=None, results: list | None = None) -> int:
    """Print the table; append one dict per row to ``results`` (for run_all.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)

    from jaxrlhf.config import from_dict
    from jaxrlhf.models import reward_model_from_pretrained, save_pretrained
    from jaxrlhf.stages.ppo import PPOConfig, run_ppo

    root = Path(tempfile.mkdtemp())
    policy = llama_folder(hidden=args.hidden, layers=args.layers, max_positions=args.prompt + args.new,
                          folder=root / "policy")
    save_pretrained(reward_model_from_pretrained(policy, seed=1), root / "rm")
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    with open(root / "prompts.jsonl", "w") as f:
        for _ in range(args.batch * args.iterations):
            f.write(json.dumps({"prompt": "".join(rng.choice(letters, size=args.prompt - 2))}) + "\n")
    cfg = from_dict(PPOConfig, {
        "output_dir": str(root / "run"), "model": {"path": str(policy), "dtype": args.dtype},
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
        "data": {"prompt_files": [str(root / "prompts.jsonl")], "max_prompt_length": args.prompt},
        "rollout": {"max_new_tokens": args.new, "temperature": 1.0},
        "train": {"iterations": args.iterations, "batch_size": args.batch, "epochs": args.epochs,
                  "minibatches": args.minibatches},
        "rewards": [{"kind": "model", "path": str(root / "rm")},
                    {"kind": "rule", "name": "target_length_tokens", "kwargs": {"target": 8}, "weight": 0.1}],
    })
    history = run_ppo(cfg)["history"][1:]
    import jax
    print(f"model: Llama d={args.hidden} layers={args.layers} (actor, critic, reference, reward model); "
          f"{args.batch} prompts x {args.prompt} tokens, {args.new} new tokens, {args.epochs} epochs x "
          f"{args.minibatches} minibatches, {args.dtype}, device {jax.devices()[0].platform}")
    parts = {k: statistics.median(h[f"{k}_seconds"] for h in history) for k in ("rollout", "score", "train")}
    total = sum(parts.values())
    print(f"{'part':<10} {'seconds':>8} {'share':>7}")
    for k, v in parts.items():
        print(f"{k:<10} {v:>8.3f} {v / total:>7.1%}")
    print(f"{'total':<10} {total:>8.3f}")
    tps = statistics.median(h["generated_tokens_per_second"] for h in history)
    if results is not None:
        results.append({"benchmark": f"PPO iteration, {args.batch} prompts", "runner": "jaxrlhf",
                        "value": 1.0 / total, "unit": "iterations/s",
                        "detail": ", ".join(f"{k} {v:.3f} s" for k, v in parts.items())})
    print(f"rollout: {tps:.0f} generated tokens/s (median of {len(history)} iterations after the first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
