"""Run every benchmark and print one table (same run, same machine, side by side).

    python benchmarks/run_all.py [--quick]

Rows compare jaxrlhf with its peers where they are installed (trl's RewardTrainer,
transformers' generate); "vs jaxrlhf" is the peer's throughput over ours for the same
benchmark. Each script can also be run alone for its own options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate  # noqa: E402
import ppo_iter  # noqa: E402
import rm_step  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    args = parser.parse_args(argv)
    steps = ["--steps", "4"] if args.quick else []
    results: list[dict] = []
    rm_step.main(steps, results)
    generate.main(["--repeats", "3"] if args.quick else [], results)
    ppo_iter.main(["--iterations", "4"] if args.quick else [], results)

    print("\n" + "=" * 100)
    print(f"{'benchmark':<36} {'runner':<34} {'value':>10} {'unit':<13} {'vs jaxrlhf':>10}  detail")
    ours: dict[str, float] = {}
    for r in results:
        if r["runner"].startswith("jaxrlhf"):
            ours[r["benchmark"]] = r["value"]
        base = ours.get(r["benchmark"])
        ratio = f"{r['value'] / base:.2f}x" if base else ""
        print(f"{r['benchmark']:<36} {r['runner']:<34} {r['value']:>10.1f} {r['unit']:<13} {ratio:>10}  {r['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
