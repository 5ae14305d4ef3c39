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


# a fresh process: malloc and touch a 64 MB buffer 12 times; minor page faults after the first
_FAULTS = """
import ctypes, json, resource, sys
from jaxrlhf.hostmem import tune_host_malloc
tuned = tune_host_malloc() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size, faults = 64 << 20, 0
for i in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ptr = libc.malloc(size)
    ctypes.memset(ptr, 1, size)
    libc.free(ptr)
    faults += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) if i else 0
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
def test_freed_buffers_are_reused_without_page_faults():
    default, tuned = _faults("default"), _faults("tuned")
    assert tuned["tuned"] is True
    if default["faults"] < 100:
        pytest.skip(f"this kernel/libc does not fault freed 64 MB buffers back in ({default['faults']} faults)")
    # glibc's default mmaps each 64 MB buffer afresh (16k faults each, fewer with huge pages);
    # tuned, the heap keeps it and the 11 later buffers reuse resident pages
    assert tuned["faults"] * 10 < default["faults"], (default, tuned)
