"""Rollouts with LoRA: adapters applied unmerged at every decode step, or merged into a copy of
the base once per iteration (the merge's cost counted), against the base model alone.

Run: python experiments/lora_sampler.py  (CPU, one device; results in experiments/NOTES.md)
"""

from __future__ import annotations

import functools
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxrlhf.config import LoRAConfig  # noqa: E402
from jaxrlhf.generate import SamplingConfig, generate  # noqa: E402
from jaxrlhf.models import LlamaConfig, create_model  # noqa: E402
from jaxrlhf.models.lora import add_lora, split_trained  # noqa: E402

ARCH = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
B, P, N = 16, 64, 128


def merged_params(graphdef, params, buffers):
    """The base kernels with every adapter folded in (what a merged sampler runs), as one state."""
    model = nnx.merge(graphdef, params, buffers)
    from jaxrlhf.models.lora import merge_lora
    merged = merge_lora(model)
    return nnx.split(merged)


def timed(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, ARCH.vocab_size, size=(B, P)).astype(np.int32)
    mask = np.ones((B, P), np.int32)
    cfg = SamplingConfig(max_new_tokens=N, temperature=1.0)
    for dtype in ("float32", "bfloat16"):
        base = create_model(ARCH, dtype=dtype, param_dtype=dtype)
        g_base, s_base = nnx.split(base)
        sample_base = jax.jit(functools.partial(generate, g_base, config=cfg, eos_id=2, pad_id=0))
        t_base = timed(lambda: sample_base(s_base, ids, mask, jax.random.key(0)).tokens)

        model = create_model(ARCH, dtype=dtype, param_dtype=dtype)
        add_lora(model, LoRAConfig(rank=16, alpha=32, targets="all-linear"))
        graphdef, params, buffers = split_trained(model)
        sample_lora = jax.jit(functools.partial(generate, graphdef, config=cfg, eos_id=2, pad_id=0))
        t_unmerged = timed(lambda: sample_lora((params, buffers), ids, mask, jax.random.key(0)).tokens)

        merge = jax.jit(lambda p, b: merged_params(graphdef, p, b)[1])
        g_merged = merged_params(graphdef, params, buffers)[0]
        sample_merged = jax.jit(functools.partial(generate, g_merged, config=cfg, eos_id=2, pad_id=0))
        t_merge = timed(lambda: merge(params, buffers))
        state = merge(params, buffers)
        t_merged = timed(lambda: sample_merged(state, ids, mask, jax.random.key(0)).tokens)
        print(f"{dtype:<8} B={B} P={P} N={N}: base {t_base:.3f} s, LoRA unmerged {t_unmerged:.3f} s, "
              f"merged {t_merged:.3f} s + merge {t_merge:.3f} s (once per iteration)", flush=True)


if __name__ == "__main__":
    main()
