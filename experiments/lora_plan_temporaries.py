"""What are the PPO iteration's temporaries in `jaxrlhf plan --lora-rank 16` for Llama-3-8B at fsdp=8?

Compiles plan_ppo_iteration (LoRA rank 16, all-linear, bf16 frozen bases, remat, 8 prompts of
512 + 512 tokens) for the Llama-3-8B shapes with fewer layers (the per-layer slope and the
layer-free intercept of the temporaries), full vs chunked logits, fsdp=8 vs tensor=8, on 8 fake CPU
devices, and lists the largest buffers of each compiled program (from its HLO text).

    python experiments/lora_plan_temporaries.py LAYERS:MESH:LOGITS[:PROMPTS] ...
    e.g. 1:fsdp=8:chunked 2:fsdp=8:full 1:tensor=8:chunked 2:tensor=8:chunked:2 (PROMPTS: 8)
"""

import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxrlhf.config import LoRAConfig, read_yaml  # noqa: E402
from jaxrlhf.models import config_from_hf  # noqa: E402
from jaxrlhf.plan import plan_ppo_iteration  # noqa: E402
from jaxrlhf.sharding import MeshConfig, make_mesh  # noqa: E402

GIB = 2**30
MESHES = {"fsdp=8": "data=1,fsdp=8,tensor=1", "tensor=8": "data=1,fsdp=1,tensor=8"}
BYTES = {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "s8": 1, "u8": 1}


def largest_buffers(compiled, n=8):
    """(bytes, shape text, op) of the largest instruction outputs in the per-device HLO."""
    found = []
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[([\d,]*)\][^ ]* (\w[\w\-]*)\(", line)
        if m and m.group(1) in BYTES:
            dims = [int(d) for d in m.group(2).split(",") if d]
            found.append((int(np.prod(dims)) * BYTES[m.group(1)], f"{m.group(1)}[{m.group(2)}]", m.group(3)))
    found.sort(reverse=True)
    out, seen = [], set()
    for b, shape, op in found:
        if (shape, op) not in seen:
            seen.add((shape, op))
            out.append((b, shape, op))
        if len(out) == n:
            break
    return out


def main(cases):
    import jaxrlhf.plan as plan_module

    hf = read_yaml("configs/models/llama3-8b.yaml")
    lora = LoRAConfig(rank=16, alpha=32.0, targets=("all-linear",))
    compiled_programs = []
    memory = plan_module._memory
    plan_module._memory = lambda name, compiled, arguments: (compiled_programs.append(compiled),
                                                             memory(name, compiled, arguments))[1]
    for case in cases:
        n_layers, mesh_text, logits, *prompts = case.split(":")
        batch = int(prompts[0]) if prompts else 8
        mesh = make_mesh(MeshConfig.parse(MESHES[mesh_text]), devices=jax.devices()[:8])
        arch = config_from_hf(dict(hf, num_hidden_layers=int(n_layers)), strict=True, source="llama3-8b")
        t = time.time()
        plan = plan_ppo_iteration(arch, mesh, batch=batch, prompt=512, new_tokens=512,
                                  param_dtype="bfloat16", lora=lora, logits=(logits, 512))
        print(f"layers {n_layers} mesh {dict(mesh.shape)} logits {logits} prompts {batch}: args {plan.argument_bytes / GIB:.3f} GiB "
              f"temp {plan.temp_bytes / GIB:.3f} GiB peak {plan.peak_bytes / GIB:.3f} GiB "
              f"(compiled in {time.time() - t:.0f} s)", flush=True)
        for size, shape, op in largest_buffers(compiled_programs[-1]):
            print(f"    {size / GIB:7.3f} GiB {shape} {op}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
