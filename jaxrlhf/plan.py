"""``jaxrlhf plan``: will a configuration fit? Compile the steps ahead of time on fake
devices, with abstract arrays only (nothing is allocated), and read per-device memory
from the compiled executables.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

# usable device memory of common chips (bytes)
CHIPS = {"TPU v4": 32 * 2**30, "TPU v5e": 16 * 2**30, "TPU v5p": 95 * 2**30,
         "A100 40GB": 40 * 2**30, "A100 80GB": 80 * 2**30, "H100 80GB": 80 * 2**30}


@dataclasses.dataclass
class MemoryPlan:
    name: str
    argument_bytes: int  # parameters, optimizer state, batch: per device, from their shardings
    temp_bytes: int  # activations, gathered weights, scratch: per device, from the compiled program

    @property
    def peak_bytes(self) -> int:
        # outputs are donated in place of the state (aliased), so they add nothing
        return self.argument_bytes + self.temp_bytes


def _abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def per_device_bytes(tree) -> int:
    """Bytes one device holds of abstract arrays with shardings (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def _memory(name: str, compiled, arguments) -> MemoryPlan:
    # the CPU backend reports argument sizes unpartitioned, so arguments are counted from
    # their shardings; temporaries come from the compiled (per-device) program
    return MemoryPlan(name, per_device_bytes(arguments), int(compiled.memory_analysis().temp_size_in_bytes))


def _abstract_models(arch, mesh, dtype, param_dtype, remat, lora=None, logits=("full", 512)):
    """(policy, reward model) as (graphdef, params, buffers) of abstract sharded arrays; with
    ``lora`` both carry adapters and split as training does (adapters + heads | frozen base).
    ``logits``: (model.logits, model.logits_chunk_size) the policy's losses use."""
    from jaxrlhf.models.io import _backbone_factory, _reward_factory
    from jaxrlhf.models.logits_path import set_logits_path
    from jaxrlhf.models.lora import add_lora, split_trained
    from jaxrlhf.sharding import state_shardings

    def adapted(factory):
        def make():
            model = set_logits_path(factory(), *logits)
            if lora is not None:
                add_lora(model, lora)
            return model
        return make

    def split(factory):
        graphdef, params, buffers = split_trained(nnx.eval_shape(adapted(factory)))
        return graphdef, _abstract(params, state_shardings(params, mesh)), _abstract(buffers, state_shardings(buffers, mesh))

    common = dict(dtype=dtype, param_dtype=param_dtype, remat=remat, seed=0)
    return split(_backbone_factory(arch, **common)), split(_reward_factory(arch, **common))


def plan_rm_step(arch, mesh, *, batch: int, k: int, seq: int, dtype="bfloat16", param_dtype="float32",
                 remat: bool = True) -> MemoryPlan:
    from jaxrlhf.steps.common import (OptimConfig, batch_shardings, init_train_state, make_optimizer,
                                      train_state_shardings)
    from jaxrlhf.steps.rm import rm_train_step

    _, (graphdef, params, buffers) = _abstract_models(arch, mesh, dtype, param_dtype, remat)
    tx = make_optimizer(OptimConfig(), 1000)
    state = jax.eval_shape(lambda: init_train_state(params, buffers, tx, 0))
    state_sh = train_state_shardings(state, mesh, tx)
    example = {"input_ids": jax.ShapeDtypeStruct((1, batch, k, seq), jnp.int32),
               "attention_mask": jax.ShapeDtypeStruct((1, batch, k, seq), jnp.int32),
               "scores": jax.ShapeDtypeStruct((1, batch, k), jnp.float32),
               "slot_mask": jax.ShapeDtypeStruct((1, batch, k), jnp.bool_)}
    batch_sh = batch_shardings(mesh, example)
    step = jax.jit(functools.partial(rm_train_step, graphdef=graphdef, tx=tx),
                   in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
    arguments = (_abstract(state, state_sh), _abstract(example, batch_sh))
    with jax.set_mesh(mesh):
        compiled = step.lower(*arguments).compile()
    return _memory("reward-model step", compiled, arguments)


def plan_ppo_iteration(arch, mesh, *, batch: int, prompt: int, new_tokens: int, dtype="bfloat16",
                       param_dtype="float32", remat: bool = True, lora=None,
                       logits: tuple[str, int] = ("full", 512)) -> MemoryPlan:
    """Scoring + PPO update in one program, with the learner's own pure functions
    (``make_experience``, ``update_policy``) and a default algorithm (GAE with a
    critic, 2 epochs x 2 minibatches, EMA of the actor): actor and critic trained (with optimizer
    state), reference and reward model frozen, all resident.

    ``lora`` (a LoRAConfig): as a LoRA run holds it: actor and critic train adapters (and the
    critic's head) on frozen bases of ``param_dtype``; the reference is the actor's base with
    the starting adapters (no tree of its own); the reward model is frozen in ``param_dtype``.
    ``logits``: (model.logits, model.logits_chunk_size) for the actor's and reference's log-probs."""
    from jaxrlhf.algorithms import AlgorithmConfig, AveragingConfig
    from jaxrlhf.steps.common import OptimConfig, init_train_state, make_optimizer, train_state_shardings
    from jaxrlhf.steps.rl import RLState, make_experience, update_policy

    (pol_g, pol_p, pol_b), (rm_g, rm_p, rm_b) = _abstract_models(arch, mesh, dtype, param_dtype, remat, lora,
                                                                 logits)
    tx = make_optimizer(OptimConfig(), 1000)
    replicated = NamedSharding(mesh, P())
    actor = jax.eval_shape(lambda: init_train_state(pol_p, pol_b, tx, 0))
    critic = jax.eval_shape(lambda: init_train_state(rm_p, rm_b, tx, 1))
    actor_sh = train_state_shardings(actor, mesh, tx)
    ema = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32), actor.params)
    state = RLState(iteration=jax.ShapeDtypeStruct((), jnp.int32), actor=actor, critic=critic,
                    kl_coef=jax.ShapeDtypeStruct((), jnp.float32),
                    rng=jax.ShapeDtypeStruct((2,), jnp.uint32), ema=ema)
    state_sh = RLState(iteration=replicated, actor=actor_sh,
                       critic=train_state_shardings(critic, mesh, tx), kl_coef=replicated, rng=replicated,
                       ema=actor_sh.params)
    algo = AlgorithmConfig(minibatches=2, epochs=2, averaging=AveragingConfig(kind="ema"))
    static = dict(actor_graphdef=pol_g, critic_graphdef=rm_g, prompt_len=prompt, temperature=1.0, algo=algo)
    total = prompt + new_tokens
    row = NamedSharding(mesh, P(("data", "fsdp")))
    ids = jax.ShapeDtypeStruct((batch, total), jnp.int32, sharding=row)
    resp = jax.ShapeDtypeStruct((batch, new_tokens), jnp.int32, sharding=row)
    finished = jax.ShapeDtypeStruct((batch,), jnp.bool_, sharding=row)

    def iteration(state, reference, reward_model, input_ids, attention_mask, response_mask, finished):
        if lora is not None:  # the starting adapters on the actor's own base
            reference = (reference, state.actor.buffers)
        scores = nnx.merge(rm_g, *reward_model)(input_ids, attention_mask)
        experience, _ = make_experience(state, reference, input_ids, attention_mask, response_mask, scores,
                                        finished, group_size=1, **static)
        return update_policy(state, experience, actor_tx=tx, critic_tx=tx, **static)

    step = jax.jit(iteration, out_shardings=(state_sh, None), donate_argnums=0)
    # with LoRA the frozen RM is counted with adapters of its own (a few MiB over a merged RM)
    reference = (pol_p, pol_b) if lora is None else pol_p
    arguments = (_abstract(state, state_sh), reference, (rm_p, rm_b), ids, ids, resp, finished)
    with jax.set_mesh(mesh):
        compiled = step.lower(*arguments).compile()
    name = "PPO iteration (actor, critic, reference, RM)"
    return _memory(name if lora is None else f"PPO iteration LoRA r{lora.rank} (actor,critic,ref,RM)", compiled,
                   arguments)


def format_plan(plans: list[MemoryPlan]) -> str:
    gib = 2**30
    lines = [f"{'program':<46} {'args GiB':>9} {'temp GiB':>9} {'peak GiB':>9}  fits on"]
    for p in plans:
        fits = ", ".join(f"{chip} {'yes' if p.peak_bytes <= hbm else 'NO'}" for chip, hbm in CHIPS.items())
        lines.append(f"{p.name:<46} {p.argument_bytes / gib:>9.3f} {p.temp_bytes / gib:>9.3f} "
                     f"{p.peak_bytes / gib:>9.3f}  {fits}")
    return "\n".join(lines)


def fit_hint(plans: list[MemoryPlan], *, logits: str, mesh_shape) -> str | None:
    """One line on what to change when a program fits none of the listed chips' smallest memory
    (16 GiB), or None. ``logits``: the --logits the plan used; ``mesh_shape``: its mesh axes."""
    smallest = min(CHIPS.values())
    over = [p for p in plans if p.peak_bytes > smallest]
    if not over:
        return None
    worst = max(over, key=lambda p: p.peak_bytes)
    gib = 2**30
    levers = []
    if worst.argument_bytes > smallest:
        levers.append("more devices on fsdp (the arguments alone exceed it)")
    if logits == "full":
        levers.append("--logits chunked (model.logits: chunked; no whole [B, T, vocab] float32 logits)")
    if mesh_shape.get("tensor", 1) == 1:
        levers.append("a tensor axis (--mesh fsdp=..,tensor=N: weights used sharded, not gathered whole per layer)")
    levers.append("fewer prompts per step (--batch) or shorter --prompt/--new-tokens")
    return (f"hint: {worst.name} needs {worst.peak_bytes / gib:.1f} GiB per device, over {smallest / gib:.0f} GiB "
            f"({worst.argument_bytes / gib:.1f} GiB arguments, {worst.temp_bytes / gib:.1f} GiB temporaries); "
            f"try {'; '.join(levers)}")
