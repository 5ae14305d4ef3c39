"""What the subcommand modules share: the --config/--set pair, meshes from configs and --mesh
flags (bad values are one-line user errors), parameter counts and byte sizes for printing."""

from __future__ import annotations

import argparse
import math


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.dtype=bfloat16 (repeatable)")


def mesh_or_error(mesh_config, what: str):
    from jaxrlhf.config import ConfigError
    from jaxrlhf.sharding import make_mesh
    try:
        return make_mesh(mesh_config)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


def mesh_from_flag(text: str):
    """The mesh a --mesh flag (data=..,fsdp=..,tensor=..) describes; bad values are user errors."""
    from jaxrlhf.config import ConfigError
    from jaxrlhf.sharding import MeshConfig
    try:
        mesh_config = MeshConfig.parse(text)
    except ValueError as e:
        raise ConfigError(f"--mesh: {e}") from None
    return mesh_or_error(mesh_config, "--mesh")


def param_count(model) -> int:
    from flax import nnx
    return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n}"
