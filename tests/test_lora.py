"""LoRA on every port: zero-init adapters change nothing, merged == unmerged, PEFT folders that
transformers + peft load (and we load back), and which trees a LoRA train state trains."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_models import (build_hf_model, left_padded_batch, tiny_gemma3_config, tiny_gpt2_config,
                       tiny_llama_config, tiny_qwen2_config, tiny_qwen3_config, torch_logits)
from jaxrlhf.config import ConfigError, LoRAConfig
from jaxrlhf.models import from_pretrained, reward_model_from_pretrained, save_pretrained
from jaxrlhf.models.lora import add_lora, has_lora, projections, split_trained
from jaxrlhf.peft_io import ADAPTER_DIR, load_adapter

peft = pytest.importorskip("peft")

CASES = {
    "llama": lambda: tiny_llama_config(),
    "qwen2": lambda: tiny_qwen2_config(),
    "qwen3": lambda: tiny_qwen3_config(),
    "gemma3": lambda: tiny_gemma3_config(),
    "gpt2": lambda: tiny_gpt2_config(),
}
ALL = LoRAConfig(rank=4, alpha=8.0, targets="all-linear")


def trained_adapters(model, seed=1):
    """Give every adapter a non-zero B (as training would), so that it changes the output."""
    key = jax.random.key(seed)
    for i, (_, _, linear) in enumerate(projections(model)):
        if linear.lora is not None:
            b = linear.lora.b
            b.set_value(0.05 * jax.random.normal(jax.random.fold_in(key, i), b.get_value().shape))
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def port(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "hf"
    hf = build_hf_model(CASES[request.param](), folder)
    return request.param, folder, hf


@pytest.mark.slow
def test_zero_initialised_adapters_equal_the_base_exactly(port):
    name, folder, _ = port
    ids, mask = left_padded_batch(total=12)
    base = np.asarray(from_pretrained(folder)(ids, mask).logits)
    model = from_pretrained(folder)
    adapted = add_lora(model, ALL)
    wanted = {"q", "k", "v", "o", "up", "down"} | ({"gate"} if name != "gpt2" else set())
    assert {n for _, n, linear in projections(model) if linear.lora is not None} == wanted
    assert len(adapted) == len(projections(model))
    np.testing.assert_array_equal(np.asarray(model(ids, mask).logits), base)


@pytest.mark.slow
def test_merged_equals_unmerged_and_peft_on_the_base_equals_ours(port, tmp_path):
    name, folder, hf_base = port
    ids, mask = left_padded_batch(total=12)
    model = from_pretrained(folder)
    add_lora(model, ALL)
    trained_adapters(model)
    ours = np.asarray(model(ids, mask).logits)
    assert np.abs(ours - torch_logits(hf_base, ids, mask)).max() > 1e-3  # the adapters do something

    save_pretrained(model, tmp_path / "final", base_model=str(folder))
    merged = from_pretrained(tmp_path / "final")
    assert not has_lora(merged)
    valid = mask.astype(bool)
    assert np.abs(np.asarray(merged(ids, mask).logits) - ours)[valid].max() <= 1e-5

    hf_lora = peft.PeftModel.from_pretrained(build_hf_model(CASES[name](), tmp_path / "base"),
                                             tmp_path / "final" / ADAPTER_DIR).eval()
    assert np.abs(torch_logits(hf_lora, ids, mask) - ours)[valid].max() <= 1e-4

    # and back: the PEFT folder loaded onto our base gives the same model
    reloaded = from_pretrained(folder)
    load_adapter(reloaded, tmp_path / "final" / ADAPTER_DIR)
    assert np.abs(np.asarray(reloaded(ids, mask).logits) - ours)[valid].max() <= 1e-5


def test_unknown_target_is_one_line(tmp_path):
    build_hf_model(tiny_gpt2_config(), tmp_path / "gpt2")
    with pytest.raises(ValueError) as e:
        add_lora(from_pretrained(tmp_path / "gpt2"), LoRAConfig(targets=("q", "gate")))
    msg = str(e.value)
    assert "\n" not in msg and "gate" in msg and "projections: q, k, v, o, up, down" in msg
    with pytest.raises(ValueError, match="choose from q, k, v, o, gate, up, down or all-linear"):
        LoRAConfig(targets=("qkv",))


def test_lora_config_from_yaml_keys(tmp_path):
    from jaxrlhf.config import from_dict
    from jaxrlhf.stages.sft import SFTConfig
    cfg = from_dict(SFTConfig, {"model": {"path": "x", "lora": {"rank": 16, "alpha": 32, "targets": "all-linear"}}})
    assert cfg.model.lora.scale == 2.0 and cfg.model.lora.target_names()[-1] == "down"
    with pytest.raises(ConfigError, match="model.lora"):
        from_dict(SFTConfig, {"model": {"path": "x", "lora": {"rank": 0}}})


@pytest.mark.slow
def test_only_adapters_and_heads_are_trained(tmp_path):
    """The train state's params, gradients and Adam moments hold adapters (and the RM's score
    head) only; the frozen base, bf16 here, rides in buffers and does not move."""
    from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer
    from jaxrlhf.steps.sft import sft_train_step
    from jaxrlhf.stages.common import stack_micro_batches

    build_hf_model(tiny_llama_config(), tmp_path / "hf")
    model = from_pretrained(tmp_path / "hf", param_dtype="bfloat16")
    add_lora(model, LoRAConfig(rank=4, targets=("q", "v")))
    graphdef, params, buffers = split_trained(model)
    leaves = nnx.to_flat_state(params)
    assert leaves and all(isinstance(v, nnx.LoRAParam) and v.get_value().dtype == jnp.float32
                          for _, v in leaves)
    assert {p[-3] for p, _ in leaves} == {"q_proj", "v_proj"}
    base = nnx.to_flat_state(nnx.filter_state(buffers, nnx.Param))
    assert base and all(v.get_value().dtype == jnp.bfloat16 for _, v in base)

    tx = make_optimizer(OptimConfig(learning_rate=1e-2), 10)
    state = init_train_state(params, buffers, tx, 0)
    adam = state.opt_state[1][0]  # clip, then adamw's ScaleByAdamState
    assert jax.tree.structure(adam.mu) == jax.tree.structure(params)
    ids, mask = left_padded_batch(lengths=(12, 10, 8, 6), total=12)
    rows = {"input_ids": ids, "attention_mask": mask, "loss_mask": mask, "segment_ids": mask}
    batch = stack_micro_batches(rows, 1)
    new, metrics = jax.jit(functools.partial(sft_train_step, graphdef=graphdef, tx=tx))(state, batch)
    assert float(metrics["grad_norm"]) > 0
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params))]
    assert any(moved)
    for a, b in zip(jax.tree.leaves(buffers), jax.tree.leaves(new.buffers)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    rm = reward_model_from_pretrained(tmp_path / "hf")
    add_lora(rm, LoRAConfig(rank=4))
    _, rm_params, rm_buffers = split_trained(rm)
    paths = [p for p, _ in nnx.to_flat_state(rm_params)]
    assert ("score",) in paths and all(p == ("score",) or p[-2] == "lora" for p in paths)
    assert ("normalization",) in dict(nnx.to_flat_state(rm_buffers))


@pytest.mark.slow
def test_adapters_are_sharded_by_the_rules_table_and_a_sharded_step_equals_one_device(tmp_path):
    """a keeps its Linear's input axes, b its output axes (the rank replicated); one LoRA SFT step
    on a data x fsdp x tensor = 2 x 2 x 2 mesh equals the single-device step."""
    from jaxrlhf.sharding import MeshConfig, make_mesh
    from jaxrlhf.stages.common import build_train_state, stack_micro_batches
    from jaxrlhf.loop import TrainConfig
    from jaxrlhf.steps.common import OptimConfig, batch_shardings
    from jaxrlhf.steps.sft import sft_train_step

    build_hf_model(tiny_llama_config(), tmp_path / "hf")
    ids, mask = left_padded_batch(lengths=(12, 10, 8, 6, 12, 9, 7, 5), total=12)
    rows = stack_micro_batches({"input_ids": ids, "attention_mask": mask, "loss_mask": mask, "segment_ids": mask}, 2)

    def run(mesh):
        model = from_pretrained(tmp_path / "hf", mesh=mesh)
        add_lora(model, LoRAConfig(rank=4, targets="all-linear"), mesh=mesh)
        train = TrainConfig(batch_size=8, optim=OptimConfig(learning_rate=1e-2))
        graphdef, state, shardings, tx = build_train_state(model, train, 10, 0, mesh)
        q = state.params["layers"][0]["self_attn"]["q_proj"]["lora"]
        specs = (q["a"].get_value().sharding.spec, q["b"].get_value().sharding.spec)
        batch = jax.device_put(rows, batch_shardings(mesh, rows))
        step = jax.jit(functools.partial(sft_train_step, graphdef=graphdef, tx=tx),
                       in_shardings=(shardings, batch_shardings(mesh, rows)), out_shardings=(shardings, None))
        with jax.set_mesh(mesh):
            for _ in range(2):
                state, metrics = step(state, batch)
        return jax.device_get(state.params), float(metrics["loss"]), specs

    single, loss1, _ = run(make_mesh(MeshConfig(1, 1, 1)))
    sharded, loss8, specs = run(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    # q_proj kernel [embed, heads, head_dim] -> a [embed, r] on fsdp, b [r, heads, head_dim] on tensor
    assert tuple(specs[0])[:1] == ("fsdp",) and tuple(specs[1])[:2] == (None, "tensor")
    np.testing.assert_allclose(loss1, loss8, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), single, sharded)


@pytest.mark.slow
def test_plan_counts_a_lora_ppo_iteration_beside_full_fine_tuning():
    """A LoRA PPO iteration holds adapters + Adam and bf16 frozen bases, and no reference tree of
    its own: its per-device arguments are well under full fine-tuning's (float32 params + Adam)."""
    from jaxrlhf.models import LlamaConfig
    from jaxrlhf.plan import format_plan, plan_ppo_iteration
    from jaxrlhf.sharding import MeshConfig, make_mesh

    arch = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    mesh = make_mesh(MeshConfig(1, 4, 1), jax.devices()[:4])
    full = plan_ppo_iteration(arch, mesh, batch=4, prompt=16, new_tokens=16)
    lora = plan_ppo_iteration(arch, mesh, batch=4, prompt=16, new_tokens=16, param_dtype="bfloat16",
                              lora=LoRAConfig(rank=16, alpha=32, targets="all-linear"))
    # full: 4 float32 models + Adam's 2 moments for actor and critic = 32 bytes per base parameter;
    # LoRA: 3 bf16 bases (the reference is the actor's) = 6 bytes, plus the adapters and their Adam
    # state (rank 16 on a hidden size of 256 is large: measured 0.375 of full here)
    assert lora.argument_bytes < 0.5 * full.argument_bytes, (lora.argument_bytes, full.argument_bytes)
    assert "LoRA r16" in format_plan([full, lora])
