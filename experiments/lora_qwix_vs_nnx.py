"""qwix's LoRA against our NNX LoRA module on a tiny Llama: speed, memory, sharding, export.

Run: python experiments/lora_qwix_vs_nnx.py  (CPU; results in experiments/NOTES.md)

Both variants train the same SFT step (jaxrlhf.steps.sft.sft_train_step) with the model split as
(LoRAParam) trained | everything else frozen; only how the adapters enter the model differs:
ours are LoRA modules on our Linear (models/lora.py), qwix intercepts jax.lax.dot_general inside
the modules its regex matches and creates ``<weight>_lora_a/_lora_b`` params on first call.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import functools  # noqa: E402

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxrlhf.config import LoRAConfig  # noqa: E402
from jaxrlhf.models import LlamaConfig, create_model  # noqa: E402
from jaxrlhf.models.lora import add_lora  # noqa: E402
from jaxrlhf.plan import per_device_bytes  # noqa: E402
from jaxrlhf.sharding import MeshConfig, make_mesh  # noqa: E402
from jaxrlhf.stages.common import stack_micro_batches  # noqa: E402
from jaxrlhf.steps.common import (OptimConfig, batch_shardings, init_train_state, make_optimizer,  # noqa: E402
                                  train_state_shardings)
from jaxrlhf.steps.sft import sft_train_step  # noqa: E402

ARCH = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
RANK, ALPHA, B, T = 16, 32.0, 8, 128
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, ARCH.vocab_size, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": mask, "segment_ids": mask}


def nnx_lora(model, mesh=None):
    add_lora(model, LoRAConfig(rank=RANK, alpha=ALPHA, targets="all-linear"), mesh=mesh)
    return model


def qwix_lora(model, mesh=None):
    import qwix
    provider = qwix.LoraProvider(module_path=".*(" + "|".join(TARGETS) + ")$", rank=RANK, alpha=ALPHA)
    b = batch()
    return qwix.apply_lora_to_model(model, provider, b["input_ids"][:1], b["attention_mask"][:1],
                                    rngs=nnx.Rngs(0))


def measure(name, make, mesh, dtype, param_dtype):
    with jax.set_mesh(mesh):
        base = create_model(ARCH, dtype=dtype, param_dtype=param_dtype, mesh=mesh)
        b = batch()
        base_logits = np.asarray(base(b["input_ids"], b["attention_mask"]).logits)
        model = make(base)
        same = np.array_equal(np.asarray(model(b["input_ids"], b["attention_mask"]).logits), base_logits)
        graphdef, params, buffers = nnx.split(model, nnx.LoRAParam, ...)
        n_adapters = len(jax.tree.leaves(params))
        adapter_dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(params)})
        tx = make_optimizer(OptimConfig(learning_rate=1e-3), 100)
        state = init_train_state(params, buffers, tx, 0)
        mb = stack_micro_batches(b, 1)
        try:
            sh = train_state_shardings(jax.eval_shape(lambda: state), mesh, tx)
            rules = "ok"
        except ValueError as e:  # qwix copies the kernel's logical_axes onto its 2-D adapters
            sh, rules = None, f"rules table refuses: {e}"
        if sh is not None:
            state = jax.device_put(state, sh)
            bsh = batch_shardings(mesh, mb)
            mb = jax.device_put(mb, bsh)
            step = jax.jit(functools.partial(sft_train_step, graphdef=graphdef, tx=tx),
                           in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
        else:  # one device: plain jit
            step = jax.jit(functools.partial(sft_train_step, graphdef=graphdef, tx=tx), donate_argnums=0)
        t0 = time.perf_counter()
        compiled = step.lower(state, mb).compile()
        compile_s = time.perf_counter() - t0
        temp = compiled.memory_analysis().temp_size_in_bytes
        args = per_device_bytes(state)
        times = []
        for _ in range(12):
            t0 = time.perf_counter()
            state, metrics = compiled(state, mb)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t0)
        loss = float(metrics["loss"])
    print(f"{name:<6} {dtype:<8} base={param_dtype:<8} zero-init==base {same!s:<5} adapters {n_adapters:>3} "
          f"({', '.join(adapter_dtypes)}) step {1e3 * statistics.median(times[2:]):7.1f} ms "
          f"compile {compile_s:5.1f} s temp {temp / 2**20:7.2f} MiB state/device {args / 2**20:6.2f} MiB "
          f"loss {loss:.4f}\n        shardings from our logical-axis rules: {rules}", flush=True)


def adapter_specs(name, make, mesh):
    """The adapters' partition specs when the base is sharded fsdp x tensor (q_proj's and down_proj's)."""
    with jax.set_mesh(mesh):
        model = make(create_model(ARCH, mesh=mesh), mesh)
    flat = nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
    shown = {"/".join(map(str, p[-3:])): str(v.get_value().sharding.spec) for p, v in flat
             if p[1] == 0 and ("q_proj" in p or "down_proj" in p)}
    print(f"{name:<6} adapter specs on fsdp=2 x tensor=2: {shown}", flush=True)


def main(argv):
    # timings on one device (the 8-device CPU collectives stall on the loaded 2-core VM)
    one = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    for dtype, param_dtype in (("float32", "float32"), ("bfloat16", "bfloat16")):
        for name, make in (("nnx", nnx_lora), ("qwix", qwix_lora)):
            try:
                measure(name, make, one, dtype, param_dtype)
            except Exception as e:  # a variant that cannot run is a result too
                print(f"{name:<6} {dtype:<8} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
    four = make_mesh(MeshConfig(1, 2, 2), devices=jax.devices()[:4])
    for name, make in (("nnx", nnx_lora), ("qwix", qwix_lora)):
        adapter_specs(name, make, four)


if __name__ == "__main__":
    main(sys.argv[1:])
