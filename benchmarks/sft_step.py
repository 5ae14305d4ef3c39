"""SFT training step: jaxrlhf vs trl's SFTTrainer, side by side in one run.

    python benchmarks/sft_step.py                 # default: a 4-layer d=256 Llama, T=128, batch 8
    python benchmarks/sft_step.py --hidden 512 --layers 8 --batch 16 --steps 20 --dtype bfloat16

Both train the same model on the same prompt + response rows (loss on response tokens
only, every row exactly --max-length tokens including the EOS, so no padding), same batch,
AdamW, same precision, on the same device (torch on cuda when available). Prints
ms/step, sequences/s, tokens/s and model FLOP/s (LM head included) as a fraction of this
device's measured matmul peak (MFU). trl runs once with its defaults (gradient
checkpointing on) and once with it off. Medians of --steps timed steps after 2 warm-up.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WARMUP = common.WARMUP


def sft_rows(n: int, length: int, seed: int = 0) -> list[dict]:
    """Prompt + response of random letters (one token each), length - 1 tokens, plus EOS."""
    rng = np.random.default_rng(seed)
    letters = list(string.ascii_lowercase)
    text = lambda m: "".join(rng.choice(letters, size=m))
    prompt = length // 4
    return [{"prompt": text(prompt), "completion": text(length - 1 - prompt)} for _ in range(n)]


def ours(folder: Path, rows, args) -> list[float]:
    from jaxrlhf.data.sft import SFTExample, tokenize_sft
    from jaxrlhf.models import from_pretrained, load_tokenizer
    from jaxrlhf.models.base import set_attention
    from jaxrlhf.steps.sft import sft_train_step

    examples = [SFTExample(r["prompt"], r["completion"], "bench", i) for i, r in enumerate(rows)]
    arrays = tokenize_sft(examples, load_tokenizer(folder), max_length=args.max_length)
    assert arrays.attention_mask.all(), "rows must fill --max-length exactly (no padding)"
    model = set_attention(from_pretrained(folder, dtype=args.dtype), args.attention)
    step, state = common.jitted_train_step(model, sft_train_step,
                                           args.steps + WARMUP)
    return common.time_jax_steps(step, state, common.device_batches(arrays, args.batch), args.steps)


def trl_times(folder: Path, rows, args, gradient_checkpointing: bool | None) -> list[float]:
    import torch  # noqa: F401  (ImportError here marks the peer as not installed)
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    common.setup_peers(args)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=common.torch_dtype("float32"))
    times: list[float] = []
    kwargs = dict(common.trainer_kwargs(args, args.steps + WARMUP), max_length=args.max_length,
                  per_device_train_batch_size=args.batch, packing=False, completion_only_loss=True)
    if gradient_checkpointing is not None:
        kwargs["gradient_checkpointing"] = gradient_checkpointing
    trainer = SFTTrainer(model=model, args=SFTConfig(**kwargs), processing_class=tok,
                         train_dataset=Dataset.from_list(rows), callbacks=[common.step_timer(times)])
    common.without_printer(trainer).train()
    return times[WARMUP:]


def report(args, name: str, times: list[float], base_ms: float | None) -> dict:
    ms = common.median(times) * 1e3
    seq_s = args.batch / (ms / 1e3)
    tok_s = seq_s * args.max_length
    flops = common.train_flops(args, args.batch, args.max_length, head_outputs=args.vocab)
    mfu = flops / (ms / 1e3) / common.matmul_peak_flops(args.dtype)
    print(f"{name:<34} {ms:>9.1f} {seq_s:>8.1f} {tok_s:>9.0f} {mfu:>7.1%} {ms / (base_ms or ms):>8.2f}x")
    return common.row(f"SFT step, T={args.max_length}", name, tok_s, "tokens/s", seq_s=seq_s, tok_s=tok_s,
                      mfu=mfu, detail=f"{ms:.0f} ms/step, {args.batch} seqs/step")


def main(argv=None, results: list | None = None) -> int:
    """Print the table; append one dict per row to ``results`` (for run_all.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, batch=8, batch_help="sequences per step")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sequence (prompt + response + EOS)")
    parser.add_argument("--steps", type=int, default=10, help=f"timed steps (after {WARMUP} warm-up)")
    parser.add_argument("--no-trl", action="store_true")
    args = parser.parse_args(argv)

    folder = common.model_folder(args)
    rows = sft_rows(args.batch * (args.steps + WARMUP), args.max_length)
    print(f"SFT step: {common.describe(args)}, T={args.max_length}, {args.batch} sequences/step, "
          f"device {common.platform()}; matmul peak (JAX, {args.dtype}): "
          f"{common.matmul_peak_flops(args.dtype) / 1e9:.1f} GFLOP/s")
    header = f"{'runner':<34} {'ms/step':>9} {'seq/s':>8} {'tok/s':>9} {'MFU':>7} {'time/ours':>9}"
    print(header + "\n" + "-" * len(header))
    out, base_ms = [], None
    if common.wants(args, "jaxrlhf"):
        out.append(report(args, "jaxrlhf", ours(folder, rows, args), None))
        base_ms = args.batch / out[-1]["seq_s"] * 1e3
    if not args.no_trl and common.wants(args, "peers"):
        for name, gc in (("trl SFTTrainer, defaults", None), ("trl SFTTrainer, no grad ckpt", False)):
            out += common.run_peer(f"SFT step, T={args.max_length}", name,
                                   lambda: [report(args, name, trl_times(folder, rows, args, gc), base_ms)])
    return common.finish(args, out, results)


if __name__ == "__main__":
    sys.exit(main())
