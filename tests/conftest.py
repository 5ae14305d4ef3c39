"""Test-wide setup: 8 fake CPU devices (before anything touches the JAX backend)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from jaxrlhf.hostmem import tune_host_malloc  # noqa: E402

tune_host_malloc()  # as the CLI does, before JAX starts its threads

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")
