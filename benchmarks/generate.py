"""Sampler throughput: jaxrlhf's KV-cache sampler vs transformers' ``generate`` (PyTorch),
same weights, batch, prompt length and number of new tokens, in one run.

    python benchmarks/generate.py [--hidden 256 --layers 4 --batch 8 --prompt 64 --new 64]
    python benchmarks/generate.py --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --dtype bfloat16

Greedy decoding, EOS disabled so every row generates exactly --new tokens; weights and KV
cache in --dtype on both sides (torch on cuda when available). Prints generated tokens/s
(prefill included) and, for the decode steps alone (a run with --new tokens minus a run
with 1), the fraction of the memory-bandwidth roofline: a decode step must read every
weight once plus the K/V cache of the tokens so far, so its shortest possible time is
those bytes over the device's memory bandwidth (measured here with a JAX copy / sum of a
large array). Medians of --repeats timed runs after one warm-up (compilation for JAX).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def prompts(args) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded random prompts [B, P] (pad id 0) and their mask."""
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 30, size=(args.batch, args.prompt)).astype(np.int32)
    lengths = rng.integers(args.prompt // 2, args.prompt + 1, size=args.batch)
    mask = (np.arange(args.prompt)[None] >= args.prompt - lengths[:, None]).astype(np.int32)
    return ids * mask, mask


def ours(folder: Path, ids, mask, args) -> dict[int, float]:
    """Median seconds of one generate call for 1 and for --new new tokens."""
    import jax
    from flax import nnx

    from jaxrlhf.generate import SamplingConfig, generate
    from jaxrlhf.models import from_pretrained

    model = from_pretrained(folder, dtype=args.dtype, param_dtype=args.dtype)
    graphdef, state = nnx.split(model)
    seconds = {}
    for new in (1, args.new):
        sample = jax.jit(functools.partial(generate, graphdef, config=SamplingConfig(new, temperature=0.0),
                                           eos_id=-1, pad_id=0))
        seconds[new] = common.median_seconds(
            lambda: jax.block_until_ready(sample(state, ids, mask, jax.random.key(0)).tokens), args.repeats)
    return seconds


def transformers_seconds(folder: Path, ids, mask, args) -> dict[int, float]:
    import torch
    import transformers

    common.setup_peers(args)
    device = common.torch_device()
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=common.torch_dtype(args.dtype))
    hf = hf.to(device).eval()
    t_ids, t_mask = torch.from_numpy(ids).long().to(device), torch.from_numpy(mask).long().to(device)

    def run(new: int):
        with torch.no_grad():
            hf.generate(input_ids=t_ids, attention_mask=t_mask, max_new_tokens=new, min_new_tokens=new,
                        do_sample=False, pad_token_id=0, eos_token_id=None)
        common.torch_sync()

    return {new: common.median_seconds(functools.partial(run, new), args.repeats) for new in (1, args.new)}


def benchmark_name(args) -> str:
    return f"generate, batch {args.batch}, {args.prompt}+{args.new} tok"


def report(args, name: str, seconds: dict[int, float], base: float | None) -> dict:
    total = seconds[args.new]
    decode = total - seconds[1]  # the --new - 1 decode steps after prefill + first token
    steps = args.new - 1
    tok_s = args.batch * args.new / total
    roofline = decode_tok_s = None
    if steps and decode > 0.05 * total:  # else lost in the timing noise (tiny models)
        decode_tok_s = args.batch * steps / decode
        step_bytes = common.decode_step_bytes(args, args.batch, args.prompt + args.new / 2)
        roofline = steps * step_bytes / common.memory_bandwidth() / decode
    shown = lambda x, f: "n/a" if x is None else format(x, f)
    print(f"{name:<40} {total:>8.3f} {tok_s:>10.0f} {shown(decode_tok_s, '.0f'):>12} "
          f"{shown(roofline, '.1%'):>9} {(base or total) / total:>7.2f}x")
    return common.row(benchmark_name(args), name, tok_s, "tokens/s", tok_s=tok_s, roofline=roofline,
                      detail=f"{total:.3f} s; decode {shown(decode_tok_s, '.0f')} tok/s; "
                             f"prefill+1 {seconds[1] * 1e3:.0f} ms")


def main(argv=None, results: list | None = None) -> int:
    """Print the table; append one dict per row to ``results`` (for run_all.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, batch=8, batch_help="prompts decoded together")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (left-padded, lengths P/2..P)")
    parser.add_argument("--new", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    folder = common.model_folder(args)
    ids, mask = prompts(args)
    bandwidth = common.memory_bandwidth()
    step_bytes = common.decode_step_bytes(args, args.batch, args.prompt + args.new / 2)
    print(f"generate: {common.describe(args)}; batch {args.batch}, prompt {args.prompt} (left-padded), "
          f"{args.new} new tokens, greedy, device {common.platform()}")
    print(f"memory bandwidth (JAX copy/sum): {bandwidth / 1e9:.1f} GB/s; a decode step reads "
          f"{step_bytes / 1e6:.1f} MB (weights + mean K/V cache) -> roofline "
          f"{args.batch * bandwidth / step_bytes:.0f} decode tokens/s")
    print(f"{'runner':<40} {'seconds':>8} {'tokens/s':>10} {'decode tok/s':>12} {'roofline':>9} {'vs ours':>8}")
    out, base = [], None
    if common.wants(args, "jaxrlhf"):
        seconds = ours(folder, ids, mask, args)
        out.append(report(args, "jaxrlhf (prefill + lax.while_loop)", seconds, None))
        base = seconds[args.new]
    if common.wants(args, "peers"):
        out += common.run_peer(benchmark_name(args), "transformers generate",
                               lambda: [report(args, "transformers generate",
                                               transformers_seconds(folder, ids, mask, args), base)])
    return common.finish(args, out, results)


if __name__ == "__main__":
    sys.exit(main())
