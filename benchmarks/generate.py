"""Sampler throughput: jaxrlhf's KV-cache sampler vs transformers' ``generate`` (PyTorch),
same weights, batch, prompt length and number of new tokens, in one run.

    python benchmarks/generate.py [--hidden 256 --layers 4 --batch 8 --prompt 64 --new 64]

Greedy decoding, EOS disabled so every row generates exactly --new tokens. Medians of
--repeats timed runs after one warm-up (compilation for JAX).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_folder  # noqa: E402


def time_runs(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None, results: list | None = None) -> int:
    """Print the table; append one dict per row to ``results`` (for run_all.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)

    import jax
    from flax import nnx

    from jaxrlhf.generate import SamplingConfig, generate
    from jaxrlhf.models import from_pretrained

    folder = llama_folder(hidden=args.hidden, layers=args.layers, max_positions=args.prompt + args.new)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 30, size=(args.batch, args.prompt)).astype(np.int32)
    lengths = rng.integers(args.prompt // 2, args.prompt + 1, size=args.batch)
    mask = (np.arange(args.prompt)[None] >= args.prompt - lengths[:, None]).astype(np.int32)
    ids = ids * mask  # left padding with pad id 0
    tokens = args.batch * args.new

    model = from_pretrained(folder, dtype=args.dtype)
    graphdef, state = nnx.split(model)
    sample = jax.jit(functools.partial(generate, graphdef, config=SamplingConfig(args.new, temperature=0.0),
                                       eos_id=-1, pad_id=0))
    ours = time_runs(lambda: jax.block_until_ready(sample(state, ids, mask, jax.random.key(0)).tokens),
                     args.repeats)
    print(f"model: Llama d={args.hidden} layers={args.layers}; batch {args.batch}, prompt {args.prompt} "
          f"(left-padded), {args.new} new tokens, greedy, {args.dtype}, device {jax.devices()[0].platform}")
    print(f"{'runner':<40} {'seconds':>8} {'tokens/s':>10} {'vs ours':>8}")
    print(f"{'jaxrlhf (prefill + lax.while_loop)':<40} {ours:>8.3f} {tokens / ours:>10.0f} {1.0:>7.2f}x")
    row = dict(benchmark=f"generate, batch {args.batch}, {args.prompt}+{args.new} tokens", unit="tokens/s")
    if results is not None:
        results.append(dict(row, runner="jaxrlhf", value=tokens / ours, detail=f"{ours:.3f} s"))
    try:
        import torch
        import transformers
    except ImportError:
        print("transformers/torch not installed: skipped")
        return 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32 if args.dtype == "float32" else torch.bfloat16).eval()
    t_ids, t_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

    def run_hf():
        with torch.no_grad():
            hf.generate(input_ids=t_ids, attention_mask=t_mask, max_new_tokens=args.new,
                        min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)

    theirs = time_runs(run_hf, args.repeats)
    if results is not None:
        results.append(dict(row, runner="transformers generate", value=tokens / theirs, detail=f"{theirs:.3f} s"))
    print(f"{'transformers generate (PyTorch)':<40} {theirs:>8.3f} {tokens / theirs:>10.0f} "
          f"{ours / theirs:>7.2f}x")
    print(f"jaxrlhf is {theirs / ours:.2f}x the tokens/s of transformers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
