"""The device mesh and the one logical-axis rules table.

Parameters and activations are annotated with *logical* axis names (``embed``,
``mlp``, ``heads`` ...). ``LOGICAL_RULES`` maps each name to mesh axes; nothing else in
the code base names a mesh axis for a tensor dimension. Change the table, not the
models, to change the parallelism strategy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations
    "act_batch": ("data", "fsdp"),
    "act_len": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    # parameters: FSDP over the model dimension, tensor parallel over heads / mlp / vocab
    "embed": "fsdp",
    "vocab": "tensor",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "positions": None,
    "norm": None,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; one of them may be -1, meaning "all remaining devices"."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.sizes()
        if sum(s == -1 for s in sizes) > 1:
            raise ValueError(f"mesh: at most one axis may be -1, got {self}")
        for name, s in zip(MESH_AXES, sizes):
            if s != -1 and s < 1:
                raise ValueError(f"mesh.{name} must be >= 1 or -1, got {s}")

    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = list(self.sizes())
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"mesh {self} does not divide {num_devices} devices "
                    f"({num_devices} is not a multiple of {known})"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                f"{math.prod(sizes)} devices, but {num_devices} are available"
            )
        return tuple(sizes)

    @classmethod
    def parse(cls, text: str) -> "MeshConfig":
        """Parse ``data=2,fsdp=-1,tensor=1`` (missing axes keep their defaults)."""
        kwargs: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep or name.strip() not in MESH_AXES:
                raise ValueError(f"bad mesh item {part!r}: expected one of {MESH_AXES} as name=int")
            try:
                kwargs[name.strip()] = int(value)
            except ValueError:
                raise ValueError(f"bad mesh item {part!r}: {value!r} is not an integer") from None
        return cls(**kwargs)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build the (data, fsdp, tensor) mesh over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    wanted = math.prod(config.sizes())
    if -1 not in config.sizes() and wanted < len(devices):
        # an explicit smaller mesh (e.g. 1x1x1 to debug) uses the first devices only
        log.warning("mesh data=%d x fsdp=%d x tensor=%d uses %d of %d devices",
                    *config.sizes(), wanted, len(devices))
        devices = devices[:wanted]
    shape = config.resolve(len(devices))
    if len(devices) == len(jax.devices()):
        # let JAX pick a topology-aware device order (ICI rings on TPU)
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: dict[str, Any] = LOGICAL_RULES,
) -> P:
    """PartitionSpec for a tensor with the given logical axes.

    When ``shape`` and ``mesh`` are given, a mesh axis that does not divide its dimension
    (e.g. 2 KV heads on a tensor axis of 4) is dropped for that dimension, i.e. that
    dimension is replicated instead of failing to compile. A mesh axis is used at most once.
    """
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule in jaxrlhf.sharding.LOGICAL_RULES")
        target = rules[name]
        axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes:
                size = math.prod(mesh.shape[a] for a in axes)
                if shape[dim] % size:
                    log.debug("replicating dim %d (%s, size %d) instead of sharding over %s",
                              dim, name, shape[dim], axes)
                    axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    return variable.get_metadata().get("logical_axes")


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedSharding for every variable of an (abstract or concrete) NNX state.

    Variables without ``logical_axes`` metadata are replicated.
    """

    def to_sharding(variable):
        axes = variable_logical_axes(variable)
        value = variable.get_value()
        if axes is None:
            spec = P()
        else:
            if len(axes) != len(value.shape):
                raise ValueError(f"logical axes {axes} do not match shape {value.shape}")
            spec = logical_to_spec(axes, value.shape, mesh)
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(to_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(make_model: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Build a module with every parameter created directly in its sharded layout.

    The model is first traced abstractly (``nnx.eval_shape``: no memory), shardings are
    derived from its logical axes, then the initialiser is jitted with those output
    shardings, so no device ever holds a full unsharded copy.
    """
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)

    init = jax.jit(lambda: nnx.split(make_model())[1], out_shardings=shardings)
    with jax.set_mesh(mesh):
        state = init()
    return nnx.merge(graphdef, state)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical axes, when a mesh is set.

    Called at block boundaries so that XLA's propagation is anchored where we want it;
    a no-op outside ``jax.set_mesh`` (e.g. single-device use).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(size == 1 for size in mesh.shape.values()):
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)


def put_global(tree: Any, shardings: Any) -> Any:
    """Place host (numpy) data, the same on every process, as global arrays: each process
    transfers only the shards its own devices hold (multi-host safe)."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]),
                        tree, shardings)


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) array as one numpy array on every process."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def per_device_bytes(array: jax.Array) -> int:
    """Bytes of ``array`` held by its first addressable device."""
    shard = array.addressable_shards[0]
    return int(np.prod(shard.data.shape)) * array.dtype.itemsize
