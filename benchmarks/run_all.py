"""Run every benchmark and print one table: jaxrlhf and its peers side by side, same run,
same device, same model config, data and batch.

    python benchmarks/run_all.py --quick                 # CPU sizes (a d=256 4-layer Llama), few steps
    python benchmarks/run_all.py --hidden 64 --layers 2 --seq 64 --quick     # a smaller smoke run
    bash benchmarks/gpu.sh                               # 1B-class Llama in bfloat16 on one GPU

Benchmarks: RM step (rm_step.py, vs trl's RewardTrainer), SFT step (sft_step.py, vs trl's
SFTTrainer), sampler (generate.py, vs transformers' generate), PPO iteration
(ppo_iter.py, vs trl's PPO trainer where the installed trl has one). A peer that is not
installed, or that fails (e.g. out of memory), becomes a row saying so. Model and dtype
flags go to every benchmark; the rest to the benchmarks named in their help. With
--isolate each benchmark's jaxrlhf and peer runs are separate processes (so on a GPU,
memory held by one framework cannot starve the other). See benchmarks/README.md for the
columns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BENCHMARKS = ("rm", "sft", "generate", "ppo")
MODULES = {"rm": "rm_step", "sft": "sft_step", "generate": "generate", "ppo": "ppo_iter"}


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps / repeats / iterations")
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--isolate", action="store_true", help="one process per benchmark and runner group")
    parser.add_argument("--only", choices=["jaxrlhf", "peers"], help="run only our runner or only the peers")
    g = parser.add_argument_group("model (every benchmark; default: each script's CPU size)")
    for flag in ("--hidden", "--layers", "--heads", "--kv-heads", "--vocab", "--mlp"):
        g.add_argument(flag, type=int)
    g.add_argument("--dtype", choices=["float32", "bfloat16"])
    g.add_argument("--attention", choices=["auto", "xla", "chunked", "cudnn", "splash"],
                   help="jaxrlhf's attention backend in the RM and SFT steps (default: auto)")
    g.add_argument("--torch-threads", type=int, help="CPU threads for the torch peers (see the scripts' help)")
    g = parser.add_argument_group("batch and lengths (default: each script's)")
    g.add_argument("--rm-batch", type=int, help="RM: prompts per step")
    g.add_argument("--k", type=int, nargs="+", help="RM: answers per prompt (one row each)")
    g.add_argument("--sft-batch", type=int, help="SFT: sequences per step")
    g.add_argument("--seq", type=int, help="RM and SFT: tokens per sequence")
    g.add_argument("--steps", type=int, help="RM and SFT: timed steps")
    g.add_argument("--gen-batch", type=int, help="generate: prompts decoded together")
    g.add_argument("--prompt", type=int, help="generate: prompt tokens")
    g.add_argument("--new", type=int, help="generate: new tokens")
    g.add_argument("--repeats", type=int, help="generate: timed runs")
    g.add_argument("--ppo-batch", type=int, help="PPO: prompts per iteration")
    g.add_argument("--ppo-prompt", type=int, help="PPO: prompt tokens")
    g.add_argument("--ppo-new", type=int, help="PPO: response tokens")
    g.add_argument("--iterations", type=int, help="PPO: iterations (the first is not timed)")
    return parser.parse_args(argv)


def flags(pairs: dict) -> list[str]:
    """["--name", "value", ...] for the values that are set (lists expanded)."""
    out = []
    for name, value in pairs.items():
        if value is None:
            continue
        out.append(name)
        out += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return out


def script_argv(args) -> dict[str, list[str]]:
    """Each benchmark's command line, from run_all's flags (unset flags keep the script's default)."""
    quick = lambda value, fast: value if value is not None or not args.quick else fast
    model = flags({"--hidden": args.hidden, "--layers": args.layers, "--heads": args.heads,
                   "--kv-heads": args.kv_heads, "--vocab": args.vocab, "--mlp": args.mlp, "--dtype": args.dtype,
                   "--torch-threads": args.torch_threads})
    steps = quick(args.steps, 4)
    model_train = model + flags({"--attention": args.attention})  # the steps that train; decoding stays on xla
    return {
        "rm": model_train + flags({"--batch": args.rm_batch, "--k": args.k, "--max-length": args.seq, "--steps": steps}),
        "sft": model_train + flags({"--batch": args.sft_batch, "--max-length": args.seq, "--steps": steps}),
        "generate": model + flags({"--batch": args.gen_batch, "--prompt": args.prompt, "--new": args.new,
                                   "--repeats": quick(args.repeats, 3)}),
        "ppo": model + flags({"--batch": args.ppo_batch, "--prompt": args.ppo_prompt, "--new": args.ppo_new,
                              "--iterations": quick(args.iterations, 4)}),
    }


def run_in_process(name: str, argv: list[str], results: list) -> None:
    module = __import__(MODULES[name])
    module.main(argv, results)


def run_isolated(name: str, argv: list[str], only: str, results: list) -> None:
    """The script in a child process for one runner group; its rows come back as JSON lines."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as f:
        cmd = [sys.executable, str(HERE / f"{MODULES[name]}.py"), *argv, "--only", only, "--json", f.name]
        code = subprocess.call(cmd)
        rows = [json.loads(line) for line in f if line.strip()]
    if code != 0 and not rows:
        results.append(dict(benchmark=f"{MODULES[name]}.py", runner=only, value=None, unit="", higher_is_better=True, seq_s=None,
                            tok_s=None, mfu=None, roofline=None, detail=f"failed: exit status {code}"))
    results.extend(rows)


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def fmt_value(value) -> str:
    return "" if value is None else f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def speed_vs_ours(r: dict, ours: dict | None) -> str:
    """The runner's speed over jaxrlhf's on the same benchmark (above 1: faster than jaxrlhf)."""
    if ours is None or r["value"] is None or ours["value"] is None:
        return ""
    ratio = r["value"] / ours["value"] if r["higher_is_better"] else ours["value"] / r["value"]
    return f"{ratio:.2f}x"


def grouped(results: list[dict]) -> list[dict]:
    """Rows of one benchmark together (in order of first appearance), jaxrlhf first."""
    order = {b: i for i, b in reversed(list(enumerate(r["benchmark"] for r in results)))}
    return sorted(results, key=lambda r: (order[r["benchmark"]], not r["runner"].startswith("jaxrlhf")))


def print_table(results: list[dict]) -> None:
    results = grouped(results)
    ours = {r["benchmark"]: r for r in results if r["runner"].startswith("jaxrlhf")}
    head = (f"{'benchmark':<34} {'runner':<34} {'value':>9} {'unit':<11} {'vs jaxrlhf':>10} "
            f"{'seq/s':>8} {'tok/s':>9} {'MFU':>6} {'roofline':>8}  detail")
    print("\n" + "=" * len(head) + "\n" + head + "\n" + "-" * len(head))
    for r in results:
        print(f"{r['benchmark']:<34} {r['runner']:<34} {fmt_value(r['value']):>9} {r['unit']:<11} "
              f"{speed_vs_ours(r, ours.get(r['benchmark'])):>10} {fmt(r['seq_s'], '8.1f'):>8} "
              f"{fmt(r['tok_s'], '9.0f'):>9} {fmt(r['mfu'], '6.1%'):>6} {fmt(r['roofline'], '8.1%'):>8}  "
              f"{r['detail']}")
    print("vs jaxrlhf: the runner's speed over jaxrlhf's (above 1 = faster). MFU: model FLOP/s over the "
          "device's measured matmul peak.\nroofline: decode time at the measured memory bandwidth over the "
          "measured decode time.")


def main(argv=None) -> int:
    args = parse(argv)
    argvs = script_argv(args)
    results: list[dict] = []
    for name in args.benchmarks:
        if args.isolate:
            for only in ("jaxrlhf", "peers"):
                if args.only in (None, only):
                    run_isolated(name, argvs[name], only, results)
        else:
            run_in_process(name, argvs[name] + (["--only", args.only] if args.only else []), results)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
