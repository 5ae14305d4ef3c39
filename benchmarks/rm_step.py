"""Reward-model training step: jaxrlhf vs trl's RewardTrainer, side by side in one run.

    python benchmarks/rm_step.py                 # default: a 4-layer d=256 Llama, T=128, 8 prompts
    python benchmarks/rm_step.py --hidden 512 --layers 8 --steps 20

For each K (answers per prompt) it prints ms/step, prompts/s and model FLOP/s as a
fraction of this machine's measured matmul peak. jaxrlhf scores each of the K answers
once and forms all C(K,2) pairs from the [B, K] reward matrix; trl (when installed)
trains on the same ranked data expanded to the C(K,2) (chosen, rejected) pairs it needs,
once with its default settings and once with gradient checkpointing off. Same model
config, same data, same sequence length, float32, on the same device. Medians.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_folder  # noqa: E402


def ranked_rows(n: int, k: int, prompt_chars: int, response_chars: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    letters = list(string.ascii_lowercase)
    text = lambda m: "".join(rng.choice(letters, size=m))
    return [{"prompt": text(prompt_chars), "responses": [text(response_chars) for _ in range(k)],
             "scores": list(rng.permutation(k).astype(float))} for _ in range(n)]


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


def step_flops(n_matmul_params: int, layers: int, hidden: int, seqs: int, t: int) -> float:
    """Training FLOPs: 3x the forward (2 per multiply-add over weights, plus QK^T and AV)."""
    forward = 2 * n_matmul_params * seqs * t + 4 * layers * t * t * hidden * seqs
    return 3 * forward


def ours(folder: Path, rows, k: int, batch: int, max_length: int, steps: int) -> list[float]:
    import jax
    from flax import nnx

    from jaxrlhf.data import RankedExample, tokenize_ranked
    from jaxrlhf.models import load_tokenizer, reward_model_from_pretrained
    from jaxrlhf.stages.common import stack_micro_batches
    from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer
    from jaxrlhf.steps.rm import rm_train_step

    tok = load_tokenizer(folder)
    examples = [RankedExample(r["prompt"], tuple(r["responses"]), tuple(r["scores"]), "bench", i)
                for i, r in enumerate(rows)]
    arrays = tokenize_ranked(examples, tok, max_length=max_length, num_slots=k)
    model = reward_model_from_pretrained(folder)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(OptimConfig(learning_rate=1e-5), total_steps=steps + 2)
    state = init_train_state(params, buffers, tx, seed=0)
    step = jax.jit(functools.partial(rm_train_step, graphdef=graphdef, tx=tx), donate_argnums=0)
    batches = [jax.device_put(stack_micro_batches(arrays.take(np.arange(i * batch, (i + 1) * batch)).as_dict(), 1))
               for i in range(len(arrays) // batch)]
    times = []
    for i in range(steps + 2):  # two warm-up steps (compile)
        start = time.perf_counter()
        state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return times[2:]


def trl_times(folder: Path, rows, k: int, batch: int, max_length: int, steps: int,
              gradient_checkpointing: bool | None) -> list[float] | None:
    try:
        import torch
        import transformers
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer
    except ImportError:
        return None
    pairs = []
    for r in rows:
        order = np.argsort(r["scores"])[::-1]
        for a in range(k):
            for b in range(a + 1, k):
                w, l = order[a], order[b]
                if r["scores"][w] > r["scores"][l]:
                    pairs.append({"prompt": r["prompt"], "chosen": r["responses"][w],
                                  "rejected": r["responses"][l]})
    pairs_per_step = batch * math.comb(k, 2)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1,
                                                                            dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.start)

    kwargs = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=pairs_per_step,
                  max_steps=steps + 2, max_length=max_length, learning_rate=1e-5, report_to=[],
                  save_strategy="no", logging_steps=10 ** 6, use_cpu=True, disable_tqdm=True,
                  dataloader_drop_last=True)
    if gradient_checkpointing is not None:
        kwargs["gradient_checkpointing"] = gradient_checkpointing
    trainer = RewardTrainer(model=model, args=RewardConfig(**kwargs), processing_class=tok,
                            train_dataset=Dataset.from_list(pairs), callbacks=[Timer()])
    trainer.train()
    return times[2:]


def main(argv=None, results: list | None = None) -> int:
    """Print the table; append one dict per row to ``results`` (for run_all.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="prompts per step")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up)")
    parser.add_argument("--no-trl", action="store_true")
    args = parser.parse_args(argv)

    from jaxrlhf.models import read_config

    folder = llama_folder(hidden=args.hidden, layers=args.layers, heads=args.heads,
                          kv_heads=args.kv_heads, vocab=args.vocab, max_positions=args.max_length)
    e, m = args.hidden, read_config(folder).intermediate_size
    d = e // args.heads
    n_matmul = args.layers * (e * d * (2 * args.heads + 2 * args.kv_heads) + 3 * e * m) + e
    peak = matmul_peak_flops()
    print(f"model: Llama d={e} layers={args.layers} heads={args.heads}/{args.kv_heads} mlp={m} "
          f"({n_matmul / 1e6:.2f}M matmul params), T={args.max_length}, {args.batch} prompts/step, float32")
    print(f"measured matmul peak (JAX, f32 2048^3): {peak / 1e9:.1f} GFLOP/s")
    header = f"{'K':>2} {'runner':<34} {'ms/step':>9} {'prompts/s':>10} {'GFLOP/s':>9} {'of peak':>8} {'time/ours':>9}"
    print(header)
    print("-" * len(header))
    half = args.max_length // 2
    for k in args.k:
        rows = ranked_rows(args.batch * (args.steps + 2), k, prompt_chars=half - 4,
                           response_chars=half - 4, seed=k)
        runs = [("jaxrlhf (one forward per answer)", ours(folder, rows, k, args.batch, args.max_length, args.steps), k)]
        if not args.no_trl:
            for name, gc in (("trl RewardTrainer, defaults", None),
                             ("trl RewardTrainer, no grad ckpt", False)):
                t = trl_times(folder, rows, k, args.batch, args.max_length, args.steps, gc)
                if t is None:
                    print(f"{k:>2} trl not installed: skipped")
                    break
                runs.append((name, t, 2 * math.comb(k, 2)))
        base = None
        for name, times, seqs_per_prompt in runs:
            ms = statistics.median(times) * 1e3
            flops = step_flops(n_matmul, args.layers, e, args.batch * seqs_per_prompt, args.max_length)
            base = base or ms
            if results is not None:
                results.append({"benchmark": f"RM step, K={k}", "runner": name,
                                "value": args.batch / (ms / 1e3), "unit": "prompts/s",
                                "detail": f"{ms:.0f} ms/step, {flops / (ms / 1e3) / peak:.0%} of matmul peak"})
            print(f"{k:>2} {name:<34} {ms:>9.1f} {args.batch / (ms / 1e3):>10.1f} "
                  f"{flops / (ms / 1e3) / 1e9:>9.1f} {flops / (ms / 1e3) / peak:>8.1%} {ms / base:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
