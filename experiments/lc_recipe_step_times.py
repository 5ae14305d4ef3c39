"""Step times of the length-control real-model recipe (configs/length_control/gemma3-270m-lora.yaml)
on this machine: one stage of the demo pipeline per call, run with the recipe's settings (LoRA,
bf16 compute, bf16 base) for a few steps, on a converted Gemma 3 270M folder.

    python experiments/lc_recipe_step_times.py --pretrained FOLDER --out DIR --stage sft --steps 4 \\
        [--set sft.train.batch_size=4 ...]

Run the stages in the pipeline's order (sft, then rm / dpo, then ppo: each starts from DIR/sft/final
and PPO scores with DIR/rm/final), one process each so each peak RSS is its own. Prints every
step's seconds as the trainer measured them (log_every 1: the wall time between two logged steps,
so the first one includes compilation), the median of the steps after the first, the batch shapes
and the process's peak RSS. A PPO iteration's seconds split into rollout, scoring and update.
Beside the wall seconds, each step's CPU seconds (user + system of this process, all threads,
read when the trainer logs the step): on a shared machine the wall time depends on the others'
load, the CPU time much less so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "length_control" / "gemma3-270m-lora.yaml"
# enough rows for a few steps at the timed batch sizes; the step's shapes do not depend on them
SMALL_DATA = ["data.n_sft=400", "data.n_rm=200", "data.n_test=16", "data.n_ppo_prompts=64", "data.n_rm_policy=0"]
STEP_KEYS = {"ppo": ("rollout_seconds", "score_seconds", "train_seconds")}


def stage_overrides(stage: str, steps: int) -> list[str]:
    """Stop after ``steps`` steps, log each, evaluate and save only at the end."""
    if stage == "ppo":
        return [f"ppo.train.iterations={steps}", "ppo.train.log_every=1", "ppo.train.save_every=0",
                "ppo.train.eval_every=0"]
    return [f"{stage}.train.max_steps={steps}", f"{stage}.train.log_every=1", f"{stage}.train.eval_every=0",
            f"{stage}.train.save_every=0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="the converted Gemma 3 270M folder")
    parser.add_argument("--out", required=True, help="run folder shared by the stages")
    parser.add_argument("--stage", required=True, choices=["sft", "rm", "dpo", "ppo"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more demo overrides, e.g. sft.train.batch_size=4 (what you time must fit here)")
    args = parser.parse_args()

    from jaxrlhf.hostmem import tune_host_malloc
    tune_host_malloc()  # as the CLI does
    import jax

    from jaxrlhf.stages.registry import STAGES
    from jaxrlhf.trainer import Trainer
    from jaxrlhf.tasks.length_control import build_length_control_data
    from jaxrlhf.tasks.length_control.pipeline import load_demo_config, stage_configs

    out = Path(args.out)
    cfg = load_demo_config(RECIPE, [f"pretrained={args.pretrained}", f"output_dir={out}", *SMALL_DATA,
                                    *stage_overrides(args.stage, args.steps), *args.overrides])
    data_dir = out / "data"
    if (data_dir / "meta.json").exists():
        data = {p.stem: p for p in data_dir.glob("*.jsonl")}
    else:
        d = cfg.data
        data = build_length_control_data(data_dir, seed=cfg.seed, n_sft=d.n_sft, n_rm=d.n_rm, n_test=d.n_test,
                                         n_ppo_prompts=d.n_ppo_prompts, n_rm_policy=0,
                                         paragraph_chars=tuple(d.paragraph_chars), sft_noise=d.sft_noise)
    config = stage_configs(cfg, out, data)[args.stage]
    cpu_at_log = [_cpu_seconds()]  # at the start, then each time the trainer logs a step
    log_window = Trainer._log_window

    def log_window_with_cpu(self, window, position, seconds):
        cpu_at_log.append(_cpu_seconds())
        return log_window(self, window, position, seconds)

    Trainer._log_window = log_window_with_cpu
    STAGES[args.stage].run(config, resume=False)
    cpu_per_step = [b - a for a, b in zip(cpu_at_log, cpu_at_log[1:])]

    rows = [json.loads(line) for line in (out / args.stage / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if any(k.endswith("steps_per_second") for k in r)]
    per_step = [1.0 / next(v for k, v in r.items() if k.endswith("steps_per_second")) for r in rows]
    train = config.train
    shape = (f"batch {train.batch_size} answers ({train.batch_size // train.samples_per_prompt} prompts x "
             f"{train.samples_per_prompt}), {config.rollout.max_new_tokens} new tokens"
             if args.stage == "ppo" else f"batch {train.batch_size}, max_length {config.data.max_length}")
    print(f"{args.stage}: {shape}; {jax.devices()[0].platform}; model {config.model.dtype} compute, "
          f"{config.model.param_dtype} base, LoRA r{config.model.lora.rank}")
    print(f"{args.stage}: step seconds {[round(s, 1) for s in per_step]}")
    if len(per_step) > 1:
        print(f"{args.stage}: median after the first {statistics.median(per_step[1:]):.1f} s")
    # the first also holds loading, data and compilation
    print(f"{args.stage}: step CPU seconds {[round(s, 1) for s in cpu_per_step]}")
    if len(cpu_per_step) > 1:
        print(f"{args.stage}: CPU median after the first {statistics.median(cpu_per_step[1:]):.1f} s")
    for key in STEP_KEYS.get(args.stage, ()):
        values = [next((v for k, v in r.items() if k.endswith(key)), float("nan")) for r in rows]
        print(f"{args.stage}: {key} {[round(v, 1) for v in values]}"
              + (f", median after the first {statistics.median(values[1:]):.1f}" if len(values) > 1 else ""))
    tokens = [next((v for k, v in r.items() if k.endswith("input_tokens")), None) for r in rows]
    if any(t is not None for t in tokens):
        print(f"{args.stage}: real tokens per step {tokens}")
    print(f"{args.stage}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


if __name__ == "__main__":
    main()
