"""Host allocator settings for JAX on CPU: keep freed memory instead of handing it back.

XLA's CPU runtime allocates every step's temporary buffers (tens to hundreds of MB) with
malloc and frees them when the step ends. glibc serves allocations above its mmap threshold
(at most 32 MB) with fresh mmap()s and returns them with munmap(), and per-thread arenas trim
their heaps with madvise(), so every step touches hundreds of MB of pages the kernel must
fault in and zero again. One arena, no mmap'd chunks and a 1 GB trim threshold keep those
pages: the allocator changes where buffers live, not what is computed (measurements:
benchmarks/host_malloc.py and experiments/NOTES.md).

Settings are applied with mallopt() before the backend starts its threads (the arena limit is
read when a thread first allocates). Only on glibc, and only where JAX will run on the CPU (no
accelerator plugin installed, or JAX_PLATFORMS starting with cpu): on accelerator hosts the
host keeps little temporary data, and large host arrays (checkpoints being loaded) are better
returned to the system when freed. JAXRLHF_HOST_MALLOC=system turns this off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import sys

ENV = "JAXRLHF_HOST_MALLOC"
# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
SETTINGS = (
    (_M_ARENA_MAX, 1),  # XLA's worker threads share one heap: no per-thread heaps to trim
    (_M_MMAP_MAX, 0),  # large buffers come from the heap, so a freed one is reused next step
    (_M_TRIM_THRESHOLD, 1 << 30),  # keep up to 1 GB of free heap instead of returning it
    (_M_TOP_PAD, 64 << 20),  # grow the heap 64 MB at a time
)
# distributions that give JAX a non-CPU backend (jax[cuda12], jax[tpu], ROCm plugins)
_ACCELERATOR_DISTS = ("libtpu", "jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm")


def runs_on_cpu() -> bool:
    """Whether JAX will pick the CPU backend, decided without starting any backend."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name.startswith(_ACCELERATOR_DISTS):
            return False
    return True


def tune_host_malloc() -> bool:
    """Apply SETTINGS when this is a glibc host running JAX on the CPU. Returns whether it did.

    Call before anything starts JAX's backend (first in the CLI's main, first in conftest)."""
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    if not runs_on_cpu():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it; musl's mallopt is a no-op)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
