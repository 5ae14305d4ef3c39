"""`jaxrlhf plan`: memory read from ahead-of-time compiled programs, scaling with the mesh."""

import pytest
import subprocess
import sys
from pathlib import Path

import jax

from jaxrlhf.models import LlamaConfig
from jaxrlhf.plan import format_plan, plan_ppo_iteration, plan_rm_step
from jaxrlhf.sharding import MeshConfig, make_mesh

ARCH = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


@pytest.mark.slow
def test_parameter_memory_halves_when_fsdp_doubles():
    wide = plan_rm_step(ARCH, make_mesh(MeshConfig(1, 8, 1)), batch=8, k=2, seq=64)
    narrow = plan_rm_step(ARCH, make_mesh(MeshConfig(1, 4, 1), jax.devices()[:4]), batch=8, k=2, seq=64)
    ratio = narrow.argument_bytes / wide.argument_bytes
    # params and Adam moments (12 bytes per float32 param) dominate the arguments; the batch
    # and the few replicated vectors keep the ratio a little under 2
    assert 1.8 < ratio <= 2.05, ratio
    assert wide.temp_bytes > 0 and wide.peak_bytes >= wide.argument_bytes
    n_params = 1024 * 256 + 2 * (256 * 256 * 2 + 256 * 128 * 2 + 3 * 256 * 704) + 256
    assert wide.argument_bytes >= 12 * n_params / 8  # at least its shard of params + two moments


@pytest.mark.slow
def test_ppo_iteration_plan_and_table():
    plan = plan_ppo_iteration(ARCH, make_mesh(MeshConfig(1, 8, 1)), batch=8, prompt=32, new_tokens=32)
    assert plan.argument_bytes > 0 and plan.peak_bytes > plan.argument_bytes
    table = format_plan([plan])
    assert "PPO iteration" in table and "H100 80GB yes" in table


@pytest.mark.slow
def test_plan_command_runs_on_fake_devices():
    config = Path(__file__).resolve().parents[1] / "configs" / "models" / "llama-tiny.yaml"
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.cli", "plan", "--config", str(config),
                          "--mesh", "data=2,fsdp=2,tensor=1", "--devices", "4", "--seq", "64",
                          "--prompt", "32", "--new-tokens", "32"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "reward-model step" in out.stdout and "PPO iteration" in out.stdout
    assert "{'data': 2, 'fsdp': 2, 'tensor': 1}" in out.stdout


def test_adam_moments_are_sharded_like_their_params():
    from flax import nnx

    from jaxrlhf.models import create_model
    from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer, train_state_shardings
    mesh = make_mesh(MeshConfig(1, 8, 1))
    model = create_model(ARCH, mesh=mesh)
    _, params, buffers = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(OptimConfig(weight_decay=0.1), 10)
    state = init_train_state(params, buffers, tx, 0)
    sh = train_state_shardings(state, mesh, tx)
    kernel = params["layers"][0]["mlp"]["up_proj"]["kernel"].get_value()
    placed = jax.device_put(state, sh)
    mu = [x for x in jax.tree.leaves(placed.opt_state) if x.shape == kernel.shape]
    assert mu and all(x.addressable_shards[0].data.size * 8 == x.size for x in mu)
