"""SFT and DPO: loss parity with transformers, packing, sharding, learning, export + greedy."""

import functools
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from rm_fixtures import char_tokenizer, copy_pairs, copy_rows, tiny_model_folder, write_jsonl
from jaxrlhf.cli import main
from jaxrlhf.data import SFTExample, pack_sft, tokenize_sft
from jaxrlhf.generate import SamplingConfig, generate
from jaxrlhf.models import from_pretrained
from jaxrlhf.sharding import MeshConfig, make_mesh
from jaxrlhf.stages.common import stack_micro_batches
from jaxrlhf.steps.common import (OptimConfig, batch_shardings, init_train_state, make_optimizer,
                                  train_state_shardings)
from jaxrlhf.steps.dpo import dpo_train_step
from jaxrlhf.steps.sft import sft_eval_step, sft_train_step


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("sft") / "model")


def sft_arrays(n=8, max_length=16):
    examples = [SFTExample(r["prompt"], r["response"], "mem", i + 1) for i, r in enumerate(copy_rows(n))]
    return tokenize_sft(examples, char_tokenizer(), max_length=max_length)


def losses_vs_transformers(model_dir, arrays, label_mask):
    """Our eval sums on ``arrays`` and transformers' mean loss with labels where ``label_mask``."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    labels = torch.from_numpy(np.where(label_mask == 1, arrays.input_ids, -100)).long()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(arrays.input_ids).long(),
                 attention_mask=torch.from_numpy(arrays.attention_mask).long(), labels=labels).loss.item()
    model = from_pretrained(model_dir)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    state = init_train_state(params, buffers, make_optimizer(OptimConfig(), 1), 0)
    return sft_eval_step(state, stack_micro_batches(arrays.as_dict(), 1), graphdef=graphdef), ref


def test_sft_loss_matches_transformers(model_dir):
    arrays = sft_arrays()
    sums, ref = losses_vs_transformers(model_dir, arrays, arrays.loss_mask)
    prompt_tokens = int((arrays.attention_mask - arrays.loss_mask).sum())
    assert prompt_tokens > 0 and float(sums["token_count"]) == arrays.loss_mask.sum()
    np.testing.assert_allclose(float(sums["nll_sum"] / sums["token_count"]), ref, atol=1e-4)


def test_train_on_prompt_is_whole_sequence_lm_as_transformers(model_dir):
    examples = [SFTExample(r["prompt"], r["response"], "mem", i + 1) for i, r in enumerate(copy_rows(8))]
    arrays = tokenize_sft(examples, char_tokenizer(), max_length=16, train_on_prompt=True)
    assert (arrays.loss_mask[:, 0] == 0).all()
    assert (arrays.loss_mask[:, 1:] == arrays.attention_mask[:, 1:]).all()
    sums, ref = losses_vs_transformers(model_dir, arrays, arrays.attention_mask)
    np.testing.assert_allclose(float(sums["nll_sum"] / sums["token_count"]), ref, atol=1e-4)


def test_packing_gives_the_same_loss(model_dir):
    arrays = sft_arrays(n=12, max_length=40)
    packed = pack_sft(arrays)
    assert len(packed) < len(arrays)
    model = from_pretrained(model_dir)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    state = init_train_state(params, buffers, make_optimizer(OptimConfig(), 1), 0)
    evaluate = jax.jit(functools.partial(sft_eval_step, graphdef=graphdef))
    a = evaluate(state, stack_micro_batches(arrays.as_dict(), 1))
    b = evaluate(state, stack_micro_batches(packed.as_dict(), 1))
    assert float(a["token_count"]) == float(b["token_count"])
    np.testing.assert_allclose(float(a["nll_sum"]), float(b["nll_sum"]), rtol=1e-5)


def dpo_batch(n=8):
    from jaxrlhf.data import RankedExample, tokenize_pairs
    pairs = [RankedExample(r["prompt"], (r["chosen"], r["rejected"]), (1.0, 0.0), "mem", i)
             for i, r in enumerate(copy_pairs(n))]
    return tokenize_pairs(pairs, char_tokenizer(), max_length=16).as_dict()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_sharded_step_equals_single_device(model_dir, stage):
    def run(mesh):
        model = from_pretrained(model_dir, mesh=mesh)
        graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
        # Adam divides by sqrt(v): for near-zero gradients, reduction-order noise between
        # meshes becomes a step of ~lr, so lr bounds the difference we can expect to see
        tx = make_optimizer(OptimConfig(learning_rate=1e-3), 10)
        state = init_train_state(params, buffers, tx, 0)
        batch = stack_micro_batches((sft_arrays().as_dict() if stage == "sft" else dpo_batch()), 2)
        shardings = train_state_shardings(state, mesh, tx)
        state, batch = jax.device_put(state, shardings), jax.device_put(batch, batch_shardings(mesh, batch))
        if stage == "sft":
            step = jax.jit(functools.partial(sft_train_step, graphdef=graphdef, tx=tx))
            call = lambda s: step(s, batch)
        else:
            reference = from_pretrained(model_dir, mesh=mesh)
            _, rp, rb = nnx.split(reference, nnx.Param, ...)
            step = jax.jit(functools.partial(dpo_train_step, graphdef=graphdef, tx=tx, beta=0.5))
            call = lambda s: step(s, (rp, rb), batch)
        with jax.set_mesh(mesh):
            for _ in range(2):
                state, metrics = call(state)
        return jax.device_get(state.params), float(metrics["loss"])

    single, loss1 = run(make_mesh(MeshConfig(1, 1, 1)))
    sharded, loss8 = run(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    np.testing.assert_allclose(loss1, loss8, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), single, sharded)


def stage_yaml(tmp_path, name, body):
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return str(path)


@pytest.mark.slow
def test_sft_from_scratch_learns_then_dpo_prefers_chosen(model_dir, tmp_path):
    arch = tmp_path / "arch.yaml"
    arch.write_text(json.dumps({"model_type": "llama", "vocab_size": len(char_tokenizer()),
                                "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2,
                                "max_position_embeddings": 64, "tie_word_embeddings": True,
                                "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}))
    write_jsonl(copy_rows(4000, seed=1), tmp_path / "sft.jsonl")
    sft = stage_yaml(tmp_path, "sft", f"""
output_dir: {tmp_path / 'sft'}
tokenizer: {model_dir}
model: {{arch: {arch}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{tmp_path / 'sft.jsonl'}], eval_fraction: 0.1, max_length: 24, packing: true}}
train: {{epochs: 5, batch_size: 16, eval_every: 200, log_every: 20, optim: {{learning_rate: 5.0e-3, warmup_steps: 20}}}}
""")
    assert main(["sft", "--config", sft]) == 0
    sft_results = json.loads((tmp_path / "sft" / "results.json").read_text())
    # random guessing over the letters costs ln(25) = 3.2 nats per token; copying costs ~0
    assert sft_results["eval"]["loss"] < 0.8, sft_results["eval"]

    write_jsonl(copy_pairs(300, seed=2), tmp_path / "pairs.jsonl")
    write_jsonl(copy_pairs(60, seed=3), tmp_path / "held_out.jsonl")
    dpo = stage_yaml(tmp_path, "dpo", f"""
output_dir: {tmp_path / 'dpo'}
model: {{path: {tmp_path / 'sft' / 'final'}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{tmp_path / 'pairs.jsonl'}], eval_files: [{tmp_path / 'held_out.jsonl'}], max_length: 24}}
train: {{epochs: 6, batch_size: 8, log_every: 10, optim: {{learning_rate: 2.0e-3}}}}
loss: {{beta: 0.5}}
""")
    assert main(["dpo", "--config", dpo]) == 0
    dpo_results = json.loads((tmp_path / "dpo" / "results.json").read_text())
    assert dpo_results["eval"]["reward_accuracy"] >= 0.9, dpo_results["eval"]
    assert main(["dpo", "--config", dpo, "--set", f"output_dir={tmp_path / 'dpo-pre'}",
                 "--set", "loss.precompute_reference=true", "--set", "train.max_steps=3"]) == 0


@pytest.mark.slow
def test_export_generates_like_transformers(model_dir, tmp_path):
    write_jsonl(copy_rows(64, seed=4), tmp_path / "sft.jsonl")
    cfg = stage_yaml(tmp_path, "sft", f"""
output_dir: {tmp_path / 'run'}
model: {{path: {model_dir}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{tmp_path / 'sft.jsonl'}], eval_fraction: 0.0, max_length: 24}}
train: {{max_steps: 4, batch_size: 8, save_every: 2, optim: {{learning_rate: 1.0e-2}}}}
""")
    assert main(["sft", "--config", cfg]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    ours = from_pretrained(tmp_path / "exported")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    batch = tok(["q: abc ", "q: hello there ", "q: z"], padding=True, padding_side="left", return_tensors="np")
    n = 12
    graphdef, state = nnx.split(ours)
    gen = jax.jit(functools.partial(generate, graphdef, config=SamplingConfig(max_new_tokens=n, temperature=0.0),
                                    eos_id=tok.eos_token_id, pad_id=tok.pad_token_id))
    out = gen(state, batch["input_ids"], batch["attention_mask"], jax.random.key(0))
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                          attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
                          max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)[:, batch["input_ids"].shape[1]:].numpy()
    ref = np.pad(ref, ((0, 0), (0, n - ref.shape[1])), constant_values=tok.pad_token_id)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
