"""The CLI's host allocator settings (jaxrlhf/hostmem.py): when they apply, and what they change."""

import json
import subprocess
import sys
import types

import pytest

from jaxrlhf import hostmem

glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")


@pytest.mark.parametrize("platforms, expected", [("cpu", True), ("cpu,cuda", True), ("cuda", False),
                                                 ("tpu", False), (" CPU ", True)])
def test_jax_platforms_decides(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert hostmem.runs_on_cpu() is expected


@pytest.mark.parametrize("dist, expected", [("jax-cuda12-plugin", False), ("libtpu", False),
                                            ("jax_rocm60_plugin", False), ("numpy", True)])
def test_accelerator_plugin_decides(monkeypatch, dist, expected):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    fake = [types.SimpleNamespace(metadata={"Name": dist}), types.SimpleNamespace(metadata={})]
    monkeypatch.setattr(hostmem.importlib.metadata, "distributions", lambda: fake)
    assert hostmem.runs_on_cpu() is expected


def test_opt_out_and_accelerators_leave_malloc_alone(monkeypatch):
    monkeypatch.setenv(hostmem.ENV, "system")
    assert hostmem.tune_host_malloc() is False
    monkeypatch.setenv(hostmem.ENV, "")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert hostmem.tune_host_malloc() is False


# a fresh process: where glibc puts a 64 MB buffer, and what it keeps after free (mallinfo2,
# glibc >= 2.33): the allocator's own bookkeeping, not a timing or a page-fault count
_MALLINFO = """
import ctypes, json, sys
from jaxrlhf.hostmem import tune_host_malloc
tuned = tune_host_malloc() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL("libc.so.6")
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
before = libc.mallinfo2()
ptr = libc.malloc(size)
ctypes.memset(ptr, 1, size)
held = libc.mallinfo2()
libc.free(ptr)
after = libc.mallinfo2()
print(json.dumps({"tuned": tuned, "mmapped_while_held": held.hblkhd - before.hblkhd,
                  "heap_free_after": after.fordblks}))
"""


def _mallinfo(mode: str) -> dict:
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _MALLINFO, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
def test_freed_buffers_stay_in_the_heap_for_the_next_step():
    """glibc's default serves a 64 MB buffer with its own mmap and unmaps it on free (so the next
    step's buffer is faulted in afresh); tuned, it comes from the heap and stays there after free."""
    size = 64 << 20
    default, tuned = _mallinfo("default"), _mallinfo("tuned")
    assert tuned["tuned"] is True
    assert default["mmapped_while_held"] >= size
    assert tuned["mmapped_while_held"] == 0
    assert tuned["heap_free_after"] >= size
