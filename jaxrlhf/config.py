"""Typed configuration: small frozen dataclasses per concern, loaded from YAML.

``load_config(RunConfig, "configs/x.yaml", ["model.dtype=bfloat16"])`` reads the file with
``yaml.safe_load``, applies ``--set section.key=value`` overrides (values parsed as YAML
scalars), and builds the dataclasses. An unknown key, a value of the wrong type or a
failed validation raises :class:`ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from jaxrlhf.sharding import MeshConfig

T = TypeVar("T")

DTYPE_NAMES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the source and the key."""


PROJECTION_NAMES = ("q", "k", "v", "o", "gate", "up", "down")  # what model.lora.targets may name
ALL_LINEAR = "all-linear"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """``model.lora``: adapters on the named projections (q/k/v/o/gate/up/down or all-linear)."""

    rank: int = 8  # r: adapter A is [in, r], B is [r, out]
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # only 0 (adapter dropout is not implemented; RL runs dropout-free)
    targets: tuple[str, ...] | str = ("q", "k", "v", "o")  # projections: q k v o gate up down, or all-linear
    # a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) to continue
    # training from; its rank, alpha and targets replace the ones above
    adapter: str | None = None

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0 < self.alpha < float("inf"):
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if self.dropout != 0.0:
            # dropout on the adapter input needs a fresh mask per step threaded through every
            # forward; the RL recipe runs dropout-free anyway
            raise ValueError(f"lora.dropout must be 0 (adapter dropout is not implemented), got {self.dropout}")
        targets = self.target_names()
        bad = sorted(set(targets) - set(PROJECTION_NAMES))
        if bad or not targets:
            raise ValueError(f"lora.targets: unknown projection(s) {bad or '(none given)'}; choose from "
                             f"{', '.join(PROJECTION_NAMES)} or {ALL_LINEAR}")

    def target_names(self) -> tuple[str, ...]:
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        return PROJECTION_NAMES if ALL_LINEAR in targets else targets

    @property
    def all_linear(self) -> bool:
        """Every projection the architecture has (GPT-2 has no gate)."""
        return ALL_LINEAR in ((self.targets,) if isinstance(self.targets, str) else tuple(self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model to start from and how to run it."""

    path: str | None = None  # a Hugging Face folder (config.json + safetensors)
    arch: str | None = None  # or an architecture YAML (configs/models/*.yaml) for a random init
    dtype: str = "float32"  # compute dtype of activations (bfloat16 on accelerators)
    param_dtype: str = "float32"  # storage dtype of parameters and optimizer state
    remat: bool = False  # recompute each block's activations in the backward pass
    # how attention is computed (jaxrlhf.models.attention): auto picks per platform and length
    attention: typing.Literal["auto", "xla", "chunked", "cudnn", "splash"] = "auto"
    # how the losses get token log-probs from the last hidden states (jaxrlhf.models.logits_path):
    # full computes the whole [B, T, V] logits; chunked runs the head logits_chunk_size tokens at
    # a time and never holds them all (for big vocabularies, e.g. Gemma 3's 262k)
    logits: typing.Literal["full", "chunked"] = "full"
    logits_chunk_size: int = 512  # tokens per head chunk on the chunked logits path
    lora: LoRAConfig | None = None  # train LoRA adapters (and heads) on a frozen base instead of every weight

    def __post_init__(self):
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPE_NAMES:
                raise ValueError(f"{key} must be one of {DTYPE_NAMES}, got {getattr(self, key)!r}")
        if self.logits_chunk_size < 1:
            raise ValueError(f"logits_chunk_size must be >= 1, got {self.logits_chunk_size}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The settings every command shares; stage configs extend this."""

    seed: int = 0  # seeds initialisation, data order and sampling: a run is repeatable from it
    output_dir: str = "runs/default"  # the run folder: checkpoints, logs, results.json, final/
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()


# --------------------------------------------------------------------------- building


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int -> float and list -> tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: {value!r} matches none of {' | '.join(map(_type_name, options))}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} settings, got {value!r}")
        return _build(tp, value, key)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string; accept what Python reads as a number
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {(prefix + '.' if prefix else '') + close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {dotted!r}{hint}; known keys here: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def from_dict(cls: type[T], data: dict | None, source: str = "config") -> T:
    try:
        return _build(cls, data or {})
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[:i + 1])} is not a section")
            node[k] = child = dict(child)
            node = child
        node[keys[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def merge_dicts(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, section by section: a nested dict refines the one it replaces
    (a preset's or the demo's defaults refined by a YAML file) instead of replacing it whole."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_dicts(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(cls: type[T], path: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) and ``--set`` overrides."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " + --set"
    return from_dict(cls, apply_overrides(data, list(overrides)), source)


def to_dict(config) -> dict:
    """Plain-data form (tuples as lists) for writing the resolved config to a run folder."""
    def plain(x):
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(dataclasses.asdict(config))


def save_config(config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True))


def resolve_path(value: str, config_file: str | os.PathLike | None) -> Path:
    """A path from a config: as given if it exists, else relative to the config's folder."""
    path = Path(value)
    if path.is_absolute() or path.exists() or config_file is None:
        return path
    beside = Path(config_file).parent / path
    return beside if beside.exists() else path
