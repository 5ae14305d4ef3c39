"""Mesh construction, the logical rules table, and sharded forwards equal single-device ones."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from hf_models import build_hf_model, left_padded_batch, tiny_gpt2_config, tiny_llama_config
from jaxrlhf.models import create_model, from_pretrained, read_config
from jaxrlhf.sharding import MeshConfig, logical_to_spec, make_mesh, per_device_bytes


def test_mesh_config_resolves_minus_one():
    assert MeshConfig(data=2, fsdp=-1, tensor=2).resolve(8) == (2, 2, 2)
    assert MeshConfig(data=-1, fsdp=1, tensor=1).resolve(8) == (8, 1, 1)
    assert MeshConfig.parse("data=2,tensor=4") == MeshConfig(data=2, fsdp=-1, tensor=4)
    with pytest.raises(ValueError, match="3 is not|not a multiple"):
        MeshConfig(data=3, fsdp=-1).resolve(8)
    with pytest.raises(ValueError, match="16 devices"):
        MeshConfig(data=2, fsdp=4, tensor=2).resolve(8)
    with pytest.raises(ValueError, match="at most one"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="bad mesh item"):
        MeshConfig.parse("dp=2")


def test_make_mesh_axes():
    mesh = make_mesh(MeshConfig(2, 2, 2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_logical_rules_drop_axes_that_do_not_divide():
    mesh = make_mesh(MeshConfig(2, 2, 2))
    assert logical_to_spec(("embed", "heads", "head_dim"), (64, 4, 16), mesh) == P("fsdp", "tensor", None)
    # one KV head cannot be split over tensor=2: replicated, not a compile error
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 1, 16), mesh) == P("fsdp", None, None)
    assert logical_to_spec(("act_batch", "act_len", "act_embed"), (8, 5, 64), mesh) == P(("data", "fsdp"), None, None)
    with pytest.raises(KeyError, match="no rule"):
        logical_to_spec(("nonsense",))


def _forward(model, mesh, ids, mask):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask).logits

    with jax.set_mesh(mesh):
        return np.asarray(run(state, ids, mask))


LARGE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_fc",
         "c_proj", "embed_tokens", "lm_head", "wte")


@pytest.mark.parametrize("config", [
    lambda: tiny_llama_config(vocab_size=128, num_key_value_heads=2, intermediate_size=128),
    lambda: tiny_gpt2_config(vocab_size=128),
], ids=["llama-gqa", "gpt2"])
def test_sharded_forward_equals_single_device(config, tmp_path):
    build_hf_model(config(), tmp_path)
    ids, mask = left_padded_batch(lengths=(12, 7, 3, 1, 9, 12, 2, 5), vocab=128)

    single = from_pretrained(tmp_path)
    expected = _forward(single, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]), ids, mask)

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = from_pretrained(tmp_path, mesh=mesh)
    checked = 0
    for path, variable in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        array = variable.get_value()
        assert len(array.sharding.device_set) == 8
        if path[-1] in ("kernel", "embedding") and any(name in path for name in LARGE):
            fraction = per_device_bytes(array) / array.nbytes
            assert fraction <= 0.25 + 1e-9, (path, array.sharding.spec, fraction)
            checked += 1
    assert checked >= 8
    got = _forward(sharded, mesh, ids, mask)
    np.testing.assert_allclose(got[mask.astype(bool)], expected[mask.astype(bool)], atol=1e-5)


@pytest.mark.slow
def test_create_model_materialises_sharded(tmp_path):
    build_hf_model(tiny_llama_config(vocab_size=128, intermediate_size=128), tmp_path)
    config = read_config(tmp_path)
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    model = create_model(config, mesh=mesh, seed=3)
    kernel = model.layers[0].mlp.up_proj.kernel.get_value()
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert per_device_bytes(kernel) * 8 == kernel.nbytes
    # same seed, same weights, whatever the mesh
    single = create_model(config, seed=3)
    np.testing.assert_array_equal(np.asarray(kernel),
                                  np.asarray(single.layers[0].mlp.up_proj.kernel.get_value()))
