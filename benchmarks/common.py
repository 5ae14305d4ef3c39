"""Helpers shared by the benchmark scripts (not run directly).

A random Llama of a stated size saved as an HF folder (cached per size), the flags every
script takes (model size, dtype, batch, which runners, JSON output), the device's measured
matmul peak and memory bandwidth, model FLOP counts, the torch device and Trainer
settings for the peers, and the result rows that run_all.py prints as one table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import string
import tempfile
import time
import traceback
from pathlib import Path

# --------------------------------------------------------------------------- model


def char_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(string.ascii_lowercase + " :")})
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>", unk_token="<unk>")


MAX_POSITIONS = 8192  # only a config value (RoPE is computed on the fly): every benchmark length fits


def default_mlp(hidden: int) -> int:
    return int(hidden * 8 / 3) // 16 * 16


def llama_folder(hidden=256, layers=4, heads=4, kv_heads=2, vocab=512, max_positions=512, seed=0,
                 folder: Path | None = None, mlp: int | None = None) -> Path:
    """Save a random (seeded, so reproducible) tied-embedding Llama as an HF folder."""
    from jaxrlhf.models import LlamaConfig, create_model, save_pretrained

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp or default_mlp(hidden),
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         extra_json='{"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}')
    folder = folder or Path(tempfile.mkdtemp()) / "model"
    save_pretrained(create_model(config, seed=seed), folder, tokenizer=char_tokenizer())
    return folder


def model_folder(args) -> Path:
    """The benchmark model for ``args`` (see add_common_args), created once per size.

    Cached under $JAXRLHF_BENCH_CACHE (default: the temp dir), so run_all.py and its
    subprocesses share one folder; written under a temporary name and renamed when complete.
    """
    key = f"llama-d{args.hidden}-l{args.layers}-h{args.heads}-kv{args.kv_heads}-v{args.vocab}-m{mlp_size(args)}"
    root = Path(os.environ.get("JAXRLHF_BENCH_CACHE", Path(tempfile.gettempdir()) / "jaxrlhf-bench"))
    folder = root / key
    if not (folder / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=root)) / key
        llama_folder(hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                     vocab=args.vocab, max_positions=MAX_POSITIONS, mlp=mlp_size(args), folder=partial)
        if not (folder / "config.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
        shutil.rmtree(partial.parent, ignore_errors=True)
    return folder


def mlp_size(args) -> int:
    return args.mlp or default_mlp(args.hidden)


def describe(args) -> str:
    return (f"Llama d={args.hidden} layers={args.layers} heads={args.heads}/{args.kv_heads} "
            f"mlp={mlp_size(args)} vocab={args.vocab}, {args.dtype}, attention {getattr(args, 'attention', 'auto')}")


# --------------------------------------------------------------------------- flags


def add_model_args(g) -> None:
    """The model-size flags model_folder reads; defaults are the CPU sizes."""
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv-heads", type=int, default=2)
    g.add_argument("--vocab", type=int, default=512)
    g.add_argument("--mlp", type=int, default=0, help="MLP width (default: 8/3 x hidden, rounded to 16)")


def add_common_args(parser: argparse.ArgumentParser, *, batch: int, batch_help: str) -> None:
    """Model size, dtype, batch and runner flags; defaults are the CPU sizes."""
    g = parser.add_argument_group("model, dtype, batch, runners (shared by every benchmark)")
    add_model_args(g)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype: bfloat16 is mixed precision for training (float32 params and "
                        "optimizer state on both sides), bf16 weights for generation")
    g.add_argument("--batch", type=int, default=batch, help=batch_help)
    g.add_argument("--attention", default="auto", choices=["auto", "xla", "chunked", "cudnn", "splash"],
                   help="jaxrlhf's attention backend (model.attention; the training steps use it, "
                        "decoding stays on xla)")
    g.add_argument("--torch-threads", type=int, default=0,
                   help="CPU threads for the torch peers (0: torch's default); 1 on a CPU busy with other "
                        "work, where OpenMP threads stall waiting for each other")
    g.add_argument("--only", choices=["jaxrlhf", "peers"], default=None,
                   help="run only our runner or only the peers (run_all.py --isolate uses this)")
    g.add_argument("--json", default=None, help="append the result rows to this file as JSON lines")


def wants(args, runner: str) -> bool:
    return args.only is None or args.only == runner


# --------------------------------------------------------------------------- device peaks


def platform() -> str:
    import jax
    return jax.devices()[0].platform


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one untimed call."""
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@functools.lru_cache(maxsize=None)
def matmul_peak_flops(dtype: str = "float32") -> float:
    """FLOP/s of one large square matmul in ``dtype`` with JAX on the default device."""
    import jax
    import jax.numpy as jnp
    n = 2048 if platform() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda x: x @ x)
    return 2 * n ** 3 / median_seconds(lambda: f(a).block_until_ready(), 5)


@functools.lru_cache(maxsize=None)
def memory_bandwidth(megabytes: int = 256) -> float:
    """Bytes/s: the better of a copy (read + write) and a sum (read) of a float32 array."""
    import jax
    import jax.numpy as jnp
    x = jnp.ones((megabytes * 2 ** 20 // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)
    total = jax.jit(jnp.sum)
    t_copy = median_seconds(lambda: copy(x).block_until_ready(), 5)
    t_sum = median_seconds(lambda: total(x).block_until_ready(), 5)
    return max(2 * x.nbytes / t_copy, x.nbytes / t_sum)


# --------------------------------------------------------------------------- model arithmetic


def head_dim(args) -> int:
    return args.hidden // args.heads


def block_matmul_params(args) -> int:
    """Weights multiplied per token in the transformer blocks (attention + MLP)."""
    e, d = args.hidden, head_dim(args)
    return args.layers * (e * d * (2 * args.heads + 2 * args.kv_heads) + 3 * e * mlp_size(args))


def param_count(args) -> int:
    """All parameters of the tied-embedding LM (norms included)."""
    return block_matmul_params(args) + args.vocab * args.hidden + (2 * args.layers + 1) * args.hidden


def forward_flops(args, seqs: int, t: int, head_outputs: int) -> float:
    """2 FLOPs per multiply-add over the weights (blocks + an E x head_outputs head) and
    QK^T and AV (causal attention counted in full, as is usual for MFU)."""
    weights = block_matmul_params(args) + args.hidden * head_outputs
    return 2 * weights * seqs * t + 4 * args.layers * t * t * args.heads * head_dim(args) * seqs


def train_flops(args, seqs: int, t: int, head_outputs: int) -> float:
    """Training FLOPs: forward + backward = 3x the forward."""
    return 3 * forward_flops(args, seqs, t, head_outputs)


def decode_step_bytes(args, batch: int, context: float) -> float:
    """Bytes one decode step must read: every weight once (the tied embedding read as the LM
    head) plus the K and V cache of ``context`` tokens per row, in the compute dtype."""
    width = 2 if args.dtype == "bfloat16" else 4
    kv = 2 * args.layers * args.kv_heads * head_dim(args) * context * batch
    return (param_count(args) + kv) * width


# --------------------------------------------------------------------------- jaxrlhf steps


WARMUP = 2  # untimed first steps (compilation; for the peers, allocator and autotuning warm-up)


def jitted_train_step(model, step_fn, total_steps: int):
    """(step, state): ``step_fn(state, batch, graphdef=, tx=)`` jitted with the state donated,
    and a fresh train state (AdamW, float32 moments as in the stages) for ``model``."""
    import jax
    from flax import nnx

    from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(OptimConfig(learning_rate=1e-5), total_steps=total_steps)
    step = jax.jit(functools.partial(step_fn, graphdef=graphdef, tx=tx), donate_argnums=0)
    return step, init_train_state(params, buffers, tx, seed=0)


def time_jax_steps(step, state, batches: list, steps: int) -> list[float]:
    """Wall time of each of ``steps`` steps after WARMUP untimed ones, cycling over ``batches``."""
    import jax
    times = []
    for i in range(steps + WARMUP):
        start = time.perf_counter()
        state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return times[WARMUP:]


def device_batches(arrays, batch: int) -> list:
    """Consecutive [1, batch, ...] batches (one micro-batch) of an arrays object, on device."""
    import jax
    import numpy as np

    from jaxrlhf.stages.common import stack_micro_batches
    return [jax.device_put(stack_micro_batches(arrays.take(np.arange(i * batch, (i + 1) * batch)).as_dict(), 1))
            for i in range(len(arrays) // batch)]


# --------------------------------------------------------------------------- peers (torch)


def torch_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def torch_dtype(name: str):
    import torch
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def trainer_kwargs(args, steps: int) -> dict:
    """TrainingArguments shared by the trl peers: our device and precision (trl's configs
    default bf16 to True, so it is always set explicitly), no logging or saving."""
    return dict(output_dir=tempfile.mkdtemp(), max_steps=steps, learning_rate=1e-5, report_to=[],
                save_strategy="no", logging_steps=10 ** 6, disable_tqdm=True, dataloader_drop_last=True,
                use_cpu=torch_device() == "cpu", bf16=args.dtype == "bfloat16", seed=0)


def setup_peers(args) -> None:
    """torch's thread count (--torch-threads); silence the peers' progress bars and info logs."""
    import warnings

    import datasets
    import torch
    import transformers
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def without_printer(trainer):
    """Drop the Trainer's log printer (it prints a summary dict after train())."""
    import transformers
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer


def step_timer(times: list):
    """A TrainerCallback appending each optimizer step's wall time to ``times``."""
    import transformers

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            torch_sync()
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            torch_sync()
            times.append(time.perf_counter() - self.start)

    return StepTimer()


# --------------------------------------------------------------------------- result rows


def row(benchmark: str, runner: str, value: float | None, unit: str, *, higher_is_better: bool = True,
        seq_s: float | None = None, tok_s: float | None = None, mfu: float | None = None,
        roofline: float | None = None, detail: str = "") -> dict:
    """One table row. ``value`` None marks a runner that was skipped (``detail`` says why)."""
    return dict(benchmark=benchmark, runner=runner, value=value, unit=unit, higher_is_better=higher_is_better,
                seq_s=seq_s, tok_s=tok_s, mfu=mfu, roofline=roofline, detail=detail)


def run_peer(benchmark: str, runner: str, fn) -> list[dict]:
    """Run a peer; a missing package or any failure becomes a skipped row, never an error."""
    try:
        return fn()
    except ImportError as e:
        reason = f"skipped: {e.name or e} not importable"
    except Exception as e:  # a peer's failure (e.g. out of memory) must not stop the suite
        traceback.print_exc()
        reason = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    print(f"{runner}: {reason}")
    return [row(benchmark, runner, None, "", detail=reason)]


def finish(args, rows: list[dict], results: list | None) -> int:
    """Hand the rows to run_all.py (``results``) and/or write them as JSON lines (--json)."""
    if results is not None:
        results.extend(rows)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


def median(times: list[float]) -> float:
    return statistics.median(times)
