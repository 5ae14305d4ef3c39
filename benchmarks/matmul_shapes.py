"""Why the CPU training steps trail PyTorch: the same matmuls, XLA vs PyTorch, side by side.

    python benchmarks/matmul_shapes.py [--hidden 256 --mlp 672 --vocab 512 --tokens 1024]

Times one float32 matmul per shape that a step of the benchmark model runs (the forward
projections [tokens, in] x [in, out] and the weight gradients [in, tokens] x [tokens, out]),
as a jitted ``x @ y`` and as ``torch.mm``, with the same thread count, and prints GFLOP/s
and the ratio. Medians of 30 runs after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def median_seconds(fn, runs: int = 30) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--mlp", type=int, default=672)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per step (batch x length)")
    p.add_argument("--torch-threads", type=int, default=0, help="default: torch's own")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import torch
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    e, m, v, n = args.hidden, args.mlp, args.vocab, args.tokens
    shapes = [("q/o projection", n, e, e), ("gate/up", n, e, m), ("down", n, m, e), ("LM head", n, e, v),
              ("grad of gate/up kernel", e, n, m), ("grad of down kernel", m, n, e)]
    matmul = jax.jit(lambda x, y: x @ y)
    rng = np.random.default_rng(0)
    print(f"{'matmul':<24} {'shape (m x k x n)':<18} {'XLA GF/s':>9} {'torch GF/s':>11} {'torch/XLA':>10}")
    for name, rows, inner, cols in shapes:
        a = rng.standard_normal((rows, inner), dtype=np.float32)
        b = rng.standard_normal((inner, cols), dtype=np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        t_xla = median_seconds(lambda: matmul(ja, jb).block_until_ready())
        t_torch = median_seconds(lambda: torch.mm(ta, tb))
        flops = 2 * rows * inner * cols
        print(f"{name:<24} {f'{rows}x{inner}x{cols}':<18} {flops / t_xla / 1e9:>9.0f} {flops / t_torch / 1e9:>11.0f} "
              f"{t_xla / t_torch:>9.2f}x")
    print(f"threads: torch {torch.get_num_threads()}; XLA uses its own pool over the visible cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
