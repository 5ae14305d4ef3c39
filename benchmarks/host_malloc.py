"""The CLI's host allocator settings (jaxrlhf/hostmem.py) against glibc's defaults, on CPU.

    python benchmarks/host_malloc.py              # the demo's model and SFT batch, 40 timed steps
    python benchmarks/host_malloc.py --steps 100 --hidden 256 --layers 4 --heads 4 --kv-heads 2

Runs the same jaxrlhf SFT step in two fresh processes, one with JAXRLHF_HOST_MALLOC=system
(glibc's defaults) and one with the settings the CLI applies, and prints the median ms/step,
the minor page faults and system CPU seconds per step of each, and the speed-up. Defaults are
the length-control demo's model (Llama d=128, 4 layers, 8/4 heads, vocab 1431) and SFT batch
(8 rows of 256 tokens). The allocator is fixed at process start, hence the two processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def child(args) -> dict:
    from jaxrlhf.hostmem import tune_host_malloc
    tuned = tune_host_malloc()  # first, as in the CLI; a no-op under JAXRLHF_HOST_MALLOC=system

    import jax
    from sft_step import sft_rows

    from jaxrlhf.data.sft import SFTExample, tokenize_sft
    from jaxrlhf.models import from_pretrained, load_tokenizer
    from jaxrlhf.steps.sft import sft_train_step

    folder = common.model_folder(args)  # built once, shared by both processes
    rows = sft_rows(args.batch * 4, args.max_length)
    examples = [SFTExample(r["prompt"], r["completion"], "bench", i) for i, r in enumerate(rows)]
    arrays = tokenize_sft(examples, load_tokenizer(folder), max_length=args.max_length)
    step, state = common.jitted_train_step(from_pretrained(folder), sft_train_step,
                                           args.steps + common.WARMUP)
    batches = common.device_batches(arrays, args.batch)
    for i in range(common.WARMUP):  # compiles; outside the counted window
        state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics["loss"])
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"tuned": tuned, "ms": common.median(times) * 1e3,
            "faults": (after.ru_minflt - before.ru_minflt) / args.steps,
            "sys_s": (after.ru_stime - before.ru_stime) / args.steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(parser)
    parser.set_defaults(hidden=128, heads=8, kv_heads=4, vocab=1431, mlp=352)  # the demo's model
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return 0

    results = {}
    for name, value in (("glibc defaults", "system"), ("jaxrlhf settings", "")):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAXRLHF_HOST_MALLOC=value)
        proc = subprocess.run([sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])],
                              env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(lines[-1][len("RESULT "):])

    base = results["glibc defaults"]["ms"]
    print(f"SFT step, Llama d={args.hidden} x{args.layers}, vocab {args.vocab}, batch {args.batch} x "
          f"{args.max_length} tokens, median of {args.steps} steps")
    print(f"{'allocator':<18} {'ms/step':>9} {'faults/step':>12} {'sys s/step':>11} {'speed-up':>9}")
    for name, r in results.items():
        print(f"{name:<18} {r['ms']:>9.1f} {r['faults']:>12.0f} {r['sys_s']:>11.3f} {base / r['ms']:>8.2f}x")
    if not results["jaxrlhf settings"]["tuned"]:
        print("note: the settings were not applied here (not glibc, or JAX would not run on the CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
