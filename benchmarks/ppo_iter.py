"""Seconds per PPO iteration, split into rollout / score / train: jaxrlhf vs trl's PPO
trainer (when the installed trl has one), same model size, batch and lengths.

    python benchmarks/ppo_iter.py [--hidden 256 --layers 4 --batch 16 --prompt 32 --new 32 --iterations 6]

jaxrlhf: actor, critic, reference and a learned reward model (all Llama of the same size,
random weights) plus a rule reward, through ``run_ppo``; rollout / score / train seconds
come from its history. trl: its PPO trainer (``trl.experimental.ppo.PPOTrainer``, or
``trl.PPOTrainer`` with the policy / ref / reward / value model signature) on the same
models, prompts, batch, response length (no early stop), epochs and minibatches, timed
per iteration (its loop has no hook between the phases, so only the total); trl versions
without one print a row saying so. Medians over the iterations after the first (which
includes compilation / warm-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def write_prompts(path: Path, args) -> list[str]:
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    texts = ["".join(rng.choice(letters, size=args.prompt - 2)) for _ in range(args.batch * args.iterations)]
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"prompt": t}) + "\n")
    return texts


def ours(policy: Path, rm: Path, prompt_file: Path, args) -> list[dict]:
    from jaxrlhf.config import from_dict
    from jaxrlhf.stages.rl import RLConfig, run_rl

    cfg = from_dict(RLConfig, {
        "output_dir": tempfile.mkdtemp(), "model": {"path": str(policy), "dtype": args.dtype},
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
        "data": {"prompt_files": [str(prompt_file)], "max_prompt_length": args.prompt},
        "rollout": {"max_new_tokens": args.new, "temperature": 1.0},
        "train": {"iterations": args.iterations, "batch_size": args.batch},
        "algorithm": {"epochs": args.epochs, "minibatches": args.minibatches},
        "rewards": [{"kind": "model", "path": str(rm)},
                    {"kind": "rule", "function": "jaxrlhf.rewards:target_length_tokens", "kwargs": {"target": 8}, "weight": 0.1}],
    })
    return run_rl(cfg)["history"][1:]


def find_trl_ppo():
    """(PPOConfig, PPOTrainer) of the installed trl, or a string saying why there is none."""
    import trl
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    for module in ("trl.experimental.ppo", "trl"):
        try:
            mod = __import__(module, fromlist=["PPOTrainer", "PPOConfig"])
            trainer, config = mod.PPOTrainer, mod.PPOConfig
        except (ImportError, AttributeError):
            continue
        params = inspect.signature(trainer.__init__).parameters
        if {"reward_model", "value_model", "ref_model"} <= set(params):
            return config, trainer
    return (f"skipped: trl {trl.__version__} has no PPO trainer with a policy/ref/reward/value model "
            f"signature (looked for trl.experimental.ppo.PPOTrainer and trl.PPOTrainer)")


def trl_ppo_times(config_cls, trainer_cls, policy: Path, rm: Path, texts: list[str], args) -> list[float]:
    import transformers
    from datasets import Dataset

    common.setup_peers(args)
    tok = transformers.AutoTokenizer.from_pretrained(policy)
    dataset = Dataset.from_dict({"input_ids": [tok(t)["input_ids"] for t in texts]})
    load = lambda cls, path, **kw: cls.from_pretrained(path, dtype=common.torch_dtype("float32"), **kw)
    models = dict(model=load(transformers.AutoModelForCausalLM, policy),
                  ref_model=load(transformers.AutoModelForCausalLM, policy),
                  reward_model=load(transformers.AutoModelForSequenceClassification, rm, num_labels=1),
                  value_model=load(transformers.AutoModelForSequenceClassification, rm, num_labels=1))
    wanted = dict(common.trainer_kwargs(args, args.iterations), per_device_train_batch_size=args.batch,
                  gradient_accumulation_steps=1, num_mini_batches=args.minibatches, num_ppo_epochs=args.epochs,
                  response_length=args.new, local_rollout_forward_batch_size=args.batch,
                  total_episodes=args.batch * args.iterations, temperature=1.0, stop_token=None,
                  missing_eos_penalty=None, num_sample_generations=0, gradient_checkpointing=False)
    names = {f.name for f in dataclasses.fields(config_cls)}
    config = config_cls(**{k: v for k, v in wanted.items() if k in names})
    times: list[float] = []
    trainer = trainer_cls(args=config, processing_class=tok, train_dataset=dataset, eval_dataset=dataset,
                          callbacks=[iteration_timer(times)], **models)
    common.without_printer(trainer).train()
    return times[1:]


def iteration_timer(times: list):
    """A TrainerCallback timing the gaps between step ends (one PPO iteration each)."""
    import transformers

    class IterationTimer(transformers.TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            common.torch_sync()
            self.last = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            common.torch_sync()
            now = time.perf_counter()
            times.append(now - self.last)
            self.last = now

    return IterationTimer()


def trl_rows(bench: str, policy: Path, rm: Path, texts: list[str], args, base: float | None) -> list[dict]:
    import torch  # noqa: F401  (ImportError here marks the peer as not installed)
    found = find_trl_ppo()
    if isinstance(found, str):
        print(f"trl PPO: {found}")
        return [common.row(bench, "trl PPO trainer", None, "", detail=found)]
    total = statistics.median(trl_ppo_times(*found, policy, rm, texts, args))
    print(f"{'trl PPO (total only)':<22} {total:>8.3f}  {(base or total) / total:.2f}x the speed of jaxrlhf")
    import trl
    return [common.row(bench, "trl PPOTrainer", total, "s/iteration", higher_is_better=False,
                       detail=f"total only; trl {trl.__version__}, {found[1].__module__}")]


def main(argv=None, results: list | None = None) -> int:
    """Print the table; append one dict per row to ``results`` (for run_all.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, batch=16, batch_help="prompts (= responses) per iteration")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=32, help="response tokens")
    parser.add_argument("--iterations", type=int, default=6, help="iterations (the first is not timed)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--no-trl", action="store_true")
    args = parser.parse_args(argv)

    from jaxrlhf.models import reward_model_from_pretrained, save_pretrained

    policy = common.model_folder(args)
    root = Path(tempfile.mkdtemp())
    save_pretrained(reward_model_from_pretrained(policy, seed=1), root / "rm")
    texts = write_prompts(root / "prompts.jsonl", args)
    bench = f"PPO iteration, {args.batch} x ({args.prompt}+{args.new} tok)"
    print(f"PPO: {common.describe(args)} (actor, critic, reference, reward model); {args.batch} prompts x "
          f"{args.prompt} tokens, {args.new} new tokens, {args.epochs} epochs x {args.minibatches} minibatches, "
          f"device {common.platform()}")
    out, base = [], None
    if common.wants(args, "jaxrlhf"):
        history = ours(policy, root / "rm", root / "prompts.jsonl", args)
        parts = {k: statistics.median(h[f"{k}_seconds"] for h in history) for k in ("rollout", "score", "train")}
        base = sum(parts.values())
        tps = statistics.median(h["generated_tokens_per_second"] for h in history)
        print(f"{'part':<10} {'seconds':>8} {'share':>7}")
        for k, v in parts.items():
            print(f"{k:<10} {v:>8.3f} {v / base:>7.1%}")
        print(f"{'total':<10} {base:>8.3f}\nrollout: {tps:.0f} generated tokens/s "
              f"(median of {len(history)} iterations after the first)")
        split = " / ".join(f"{k} {v:.3f}" for k, v in parts.items())
        out.append(common.row(bench, "jaxrlhf", base, "s/iteration", higher_is_better=False,
                              detail=f"{split} s; rollout {tps:.0f} generated tok/s"))
    if not args.no_trl and common.wants(args, "peers"):
        out += common.run_peer(bench, "trl PPO trainer", lambda: trl_rows(bench, policy, root / "rm", texts, args, base))
    return common.finish(args, out, results)


if __name__ == "__main__":
    sys.exit(main())
