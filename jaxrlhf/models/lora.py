"""LoRA adapters on the projections of any port: ``y = W x + (alpha / r) * B A x``.

An adapter is an :class:`nnx.LoRAParam` pair (``a``, ``b``) held by the :class:`Linear` it
adapts (``linear.lora``). ``b`` starts at zero, so an adapted model's first forward is the
base model's, bit for bit. Training splits a model with :func:`trained_filter`: adapters and
scalar heads are the trained ``params``; the base (any dtype, e.g. bfloat16) rides in the
train state's ``buffers``, never differentiated, sharded by the same logical-axis rules as
full fine-tuning (``a`` keeps the input axes, ``b`` the output axes, the rank is replicated).

The reference policy of DPO and RL is the same base with the adapters frozen at their
starting values (:func:`reference_adapters`): zero for fresh adapters, i.e. the base itself;
the SFT adapter when training continues from one. Only the small adapter arrays are copied.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.config import ALL_LINEAR, PROJECTION_NAMES, LoRAConfig
from jaxrlhf.models.layers import Linear

__all__ = ["ALL_LINEAR", "PROJECTION_NAMES", "LoRA", "LoRAConfig", "add_lora", "merge_lora", "trained_filter"]

# our module attribute name -> the projection name a config targets
PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
               "up_proj": "up", "down_proj": "down",
               # GPT-2: the MLP's c_fc / c_proj play up / down (its attention c_proj is our o_proj)
               "c_fc": "up", "c_proj": "down"}


def _kaiming_uniform(key, shape, fan_in: int, dtype):
    # PEFT's default A init (kaiming_uniform with a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoRA(nnx.Module):
    """The low-rank update of one :class:`Linear`: ``a`` [*in_shape, r], ``b`` [r, *out_shape].

    Kept in float32 whatever the base's storage dtype: these are the trained weights, and
    their optimizer sees them directly."""

    def __init__(self, linear: Linear, in_axes, out_axes, *, rank: int, scale: float, key: jax.Array,
                 dtype=jnp.float32):
        fan_in = math.prod(linear.in_shape)
        self.rank, self.scale, self.dtype = rank, float(scale), linear.dtype
        self.a = nnx.LoRAParam(_kaiming_uniform(key, linear.in_shape + (rank,), fan_in, dtype),
                               logical_axes=tuple(in_axes) + (None,))
        self.b = nnx.LoRAParam(jnp.zeros((rank,) + linear.out_shape, dtype),
                               logical_axes=(None,) + tuple(out_axes))

    def __call__(self, x: jax.Array, n_in: int) -> jax.Array:
        # x: [..., *in_shape] -> [..., *out_shape], through [..., r]
        a = self.a[...].astype(self.dtype)
        b = self.b[...].astype(self.dtype)
        h = jax.lax.dot_general(x.astype(self.dtype), a,
                                ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
        y = jax.lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))
        return y * jnp.asarray(self.scale, self.dtype)

    def delta(self) -> jax.Array:
        """The dense update ``scale * a . b`` [*in_shape, *out_shape] (float32), for merging."""
        a = self.a[...].astype(jnp.float32)
        return jnp.tensordot(a, self.b[...].astype(jnp.float32), axes=1) * self.scale


def projections(model: nnx.Module) -> list[tuple[tuple, str, Linear]]:
    """(path, projection name, module) of every adaptable Linear in ``model`` (lm_head excluded)."""
    found = []
    for path, module in nnx.iter_graph(model):
        if isinstance(module, Linear) and path and path[-1] in PROJECTIONS:
            found.append((tuple(path), PROJECTIONS[path[-1]], module))
    return found


def _linear_axes(linear: Linear) -> tuple[tuple, tuple]:
    axes = linear.kernel.get_metadata().get("logical_axes") or (None,) * (len(linear.in_shape)
                                                                           + len(linear.out_shape))
    n_in = len(linear.in_shape)
    return tuple(axes[:n_in]), tuple(axes[n_in:])


def add_lora(model: nnx.Module, config: LoRAConfig, *, seed: int = 0, mesh=None,
             ranks: dict[tuple, tuple[int, float]] | None = None) -> list[tuple]:
    """Put zero-initialised adapters on ``model``'s targeted projections, in place.

    ``ranks``: per-path (rank, scale) overriding the config's (a loaded PEFT adapter).
    Returns the adapted paths. A target no projection of this architecture has is a one-line
    ValueError naming the targets and the projections that exist.
    """
    available = projections(model)
    present = sorted({name for _, name, _ in available}, key=PROJECTION_NAMES.index)
    targets = set(present) if config.all_linear else set(config.target_names())
    missing = sorted(targets - set(present), key=PROJECTION_NAMES.index)
    if missing:
        raise ValueError(f"lora.targets {', '.join(missing)} match no projection of this model "
                         f"(targets: {', '.join(sorted(targets, key=PROJECTION_NAMES.index))}; "
                         f"projections: {', '.join(present)})")
    key = jax.random.key(seed)
    adapted = []
    for i, (path, name, linear) in enumerate(available):
        if name not in targets:
            continue
        rank, scale = (ranks or {}).get(path, (config.rank, config.scale))
        in_axes, out_axes = _linear_axes(linear)
        linear.lora = LoRA(linear, in_axes, out_axes, rank=rank, scale=scale,
                           key=jax.random.fold_in(key, i))
        adapted.append(path)
    if mesh is not None:
        place_adapters(model, mesh)
    return adapted


def place_adapters(model: nnx.Module, mesh) -> None:
    """Shard the adapters by their logical axes on ``mesh`` (the rules table of the base)."""
    from jaxrlhf.sharding import state_shardings

    state = nnx.state(model, nnx.LoRAParam)
    with jax.set_mesh(mesh):
        placed = jax.device_put(state, state_shardings(state, mesh))
    nnx.update(model, placed)


def has_lora(model: nnx.Module) -> bool:
    return any(isinstance(m, LoRA) for _, m in nnx.iter_graph(model))


# scalar heads trained in full next to the adapters (the reward model's and critic's ``score``)
HEAD_NAMES = ("score",)


def trained_filter(model: nnx.Module):
    """What a train state differentiates: every Param without adapters; with adapters, the
    adapters and the scalar heads only (the base rides in ``buffers``)."""
    if not has_lora(model):
        return nnx.Param
    return nnx.Any(nnx.LoRAParam, *(nnx.All(nnx.Param, nnx.PathContains(h)) for h in HEAD_NAMES))


def split_trained(model: nnx.Module):
    """(graphdef, trained params, buffers) by :func:`trained_filter`."""
    return nnx.split(model, trained_filter(model), ...)


def reference_adapters(params: nnx.State) -> nnx.State:
    """The adapter arrays of ``params`` (heads left out): the reference keeps them frozen at
    their starting values on the shared base; a copy, so that donating the train state leaves
    them intact."""
    adapters = nnx.filter_state(params, nnx.LoRAParam)
    return jax.tree.map(jnp.copy, adapters)  # jnp.copy keeps each array's sharding


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every adapter folded into its kernel and removed: a plain
    model of the same architecture (for export and for a merged sampler)."""
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state, copy=True)
    for _, module in nnx.iter_graph(merged):
        if isinstance(module, Linear) and getattr(module, "lora", None) is not None:
            kernel = module.kernel.get_value()
            module.kernel.set_value((kernel.astype(jnp.float32) + module.lora.delta()).astype(kernel.dtype))
            module.lora = None
    return merged

