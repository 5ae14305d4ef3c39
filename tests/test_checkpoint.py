"""Orbax checkpoints: keep-last-k, restore into shardings, interrupted saves are ignored."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrlhf.checkpoint import Checkpointer
from jaxrlhf.sharding import MeshConfig, make_mesh


def state(value):
    return {"w": jnp.full((8, 4), value, jnp.float32), "step": jnp.array(int(value), jnp.int32)}


def test_keep_last_and_restore_sharded(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, state(step), {"epoch": 0, "batch": step})
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    mesh = make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))
    target = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, P("fsdp"))),
              "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}
    restored, meta = ckpt.restore(None, target)
    assert meta == {"epoch": 0, "batch": 3}
    assert restored["w"].sharding.spec == P("fsdp")
    np.testing.assert_array_equal(restored["w"], np.full((8, 4), 3.0))


def test_interrupted_save_is_not_the_latest(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(5, state(5), {"batch": 5})
    # what a process killed mid-save leaves: a temporary folder that was never renamed
    partial = tmp_path / "10.orbax-checkpoint-tmp-1234567890"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 10)
    reopened = Checkpointer(tmp_path, keep=3)
    assert reopened.latest_step() == 5
    restored, meta = reopened.restore(None, state(0))
    assert int(restored["step"]) == 5 and meta == {"batch": 5}
