"""Reward-model training step: jaxrlhf vs trl's RewardTrainer, side by side in one run.

    python benchmarks/rm_step.py                 # default: a 4-layer d=256 Llama, T=128, 8 prompts
    python benchmarks/rm_step.py --hidden 512 --layers 8 --steps 20 --dtype bfloat16

For each K (answers per prompt) it prints ms/step, prompts/s, sequences/s, tokens/s and
model FLOP/s as a fraction of this device's measured matmul peak (MFU). jaxrlhf scores
each of the K answers once and forms all C(K,2) pairs from the [B, K] reward matrix; trl
(when installed) trains on the same ranked data expanded to the C(K,2) (chosen, rejected)
pairs it needs, once with its default settings and once with gradient checkpointing off.
Same model config, data, sequence length and precision, on the same device (torch on
cuda when available). Medians of --steps timed steps after 2 warm-up steps.
"""

from __future__ import annotations

import argparse
import math
import string
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WARMUP = common.WARMUP


def ranked_rows(n: int, k: int, prompt_chars: int, response_chars: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    letters = list(string.ascii_lowercase)
    text = lambda m: "".join(rng.choice(letters, size=m))
    return [{"prompt": text(prompt_chars), "responses": [text(response_chars) for _ in range(k)],
             "scores": list(rng.permutation(k).astype(float))} for _ in range(n)]


def ours(folder: Path, rows, k: int, args) -> list[float]:
    from jaxrlhf.data import RankedExample, tokenize_ranked
    from jaxrlhf.models import load_tokenizer, reward_model_from_pretrained
    from jaxrlhf.models.base import set_attention
    from jaxrlhf.steps.rm import rm_train_step

    examples = [RankedExample(r["prompt"], tuple(r["responses"]), tuple(r["scores"]), "bench", i)
                for i, r in enumerate(rows)]
    arrays = tokenize_ranked(examples, load_tokenizer(folder), max_length=args.max_length, num_slots=k)
    model = set_attention(reward_model_from_pretrained(folder, dtype=args.dtype), args.attention)
    step, state = common.jitted_train_step(model, rm_train_step, args.steps + WARMUP)
    return common.time_jax_steps(step, state, common.device_batches(arrays, args.batch), args.steps)


def ranked_to_pairs(rows, k: int) -> list[dict]:
    """Every (better, worse) pair of each prompt's answers, as a pairwise trainer needs."""
    pairs = []
    for r in rows:
        order = np.argsort(r["scores"])[::-1]
        for a in range(k):
            for b in range(a + 1, k):
                w, l = order[a], order[b]
                if r["scores"][w] > r["scores"][l]:
                    pairs.append({"prompt": r["prompt"], "chosen": r["responses"][w],
                                  "rejected": r["responses"][l]})
    return pairs


def trl_times(folder: Path, rows, k: int, args, gradient_checkpointing: bool | None) -> list[float]:
    import torch  # noqa: F401  (ImportError here marks the peer as not installed)
    import transformers
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    common.setup_peers(args)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1,
                                                                            dtype=common.torch_dtype("float32"))
    model.config.pad_token_id = tok.pad_token_id
    times: list[float] = []
    kwargs = dict(common.trainer_kwargs(args, args.steps + WARMUP), max_length=args.max_length,
                  per_device_train_batch_size=args.batch * math.comb(k, 2))
    if gradient_checkpointing is not None:
        kwargs["gradient_checkpointing"] = gradient_checkpointing
    trainer = RewardTrainer(model=model, args=RewardConfig(**kwargs), processing_class=tok,
                            train_dataset=Dataset.from_list(ranked_to_pairs(rows, k)),
                            callbacks=[common.step_timer(times)])
    common.without_printer(trainer).train()
    return times[WARMUP:]


def report(args, k: int, name: str, times: list[float], seqs_per_prompt: int, base_ms: float | None) -> dict:
    ms = common.median(times) * 1e3
    seqs = args.batch * seqs_per_prompt
    flops = common.train_flops(args, seqs, args.max_length, head_outputs=1)
    mfu = flops / (ms / 1e3) / common.matmul_peak_flops(args.dtype)
    seq_s = seqs / (ms / 1e3)
    print(f"{k:>2} {name:<34} {ms:>9.1f} {args.batch / (ms / 1e3):>10.1f} {seq_s:>8.1f} "
          f"{seq_s * args.max_length:>9.0f} {mfu:>7.1%} {ms / (base_ms or ms):>8.2f}x")
    return common.row(f"RM step, K={k}, T={args.max_length}", name, args.batch / (ms / 1e3), "prompts/s",
                      seq_s=seq_s, tok_s=seq_s * args.max_length, mfu=mfu,
                      detail=f"{ms:.0f} ms/step, {seqs} seqs/step")


def main(argv=None, results: list | None = None) -> int:
    """Print the table; append one dict per row to ``results`` (for run_all.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, batch=8, batch_help="prompts per step (each with K answers)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sequence (prompt + answer)")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=10, help=f"timed steps (after {WARMUP} warm-up)")
    parser.add_argument("--no-trl", action="store_true")
    args = parser.parse_args(argv)

    folder = common.model_folder(args)
    print(f"RM step: {common.describe(args)}, T={args.max_length}, {args.batch} prompts/step, "
          f"device {common.platform()}; matmul peak (JAX, {args.dtype}): "
          f"{common.matmul_peak_flops(args.dtype) / 1e9:.1f} GFLOP/s")
    header = (f"{'K':>2} {'runner':<34} {'ms/step':>9} {'prompts/s':>10} {'seq/s':>8} {'tok/s':>9} "
              f"{'MFU':>7} {'time/ours':>9}")
    print(header + "\n" + "-" * len(header))
    half = args.max_length // 2
    rows_out = []
    for k in args.k:
        rows = ranked_rows(args.batch * (args.steps + WARMUP), k, prompt_chars=half - 4,
                           response_chars=half - 4, seed=k)
        base_ms = None
        if common.wants(args, "jaxrlhf"):
            rows_out.append(report(args, k, "jaxrlhf (one forward per answer)", ours(folder, rows, k, args), k, None))
            base_ms = args.batch / rows_out[-1]["value"] * 1e3
        if args.no_trl or not common.wants(args, "peers"):
            continue
        for name, gc in (("trl RewardTrainer, defaults", None), ("trl RewardTrainer, no grad ckpt", False)):
            bench = f"RM step, K={k}, T={args.max_length}"
            rows_out += common.run_peer(bench, name, lambda: [report(
                args, k, name, trl_times(folder, rows, k, args, gc), 2 * math.comb(k, 2), base_ms)])
    return common.finish(args, rows_out, results)


if __name__ == "__main__":
    sys.exit(main())
