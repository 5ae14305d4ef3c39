"""What fixes a run's data order and shapes, recorded at its first start and checked on
``--resume``.

Exact resume replays batches as a pure function of (seed, epoch, batch index) over the same
rows; a resume whose data files, seed, batch sizes, lengths, mesh or stage differ from the
saved run would silently train on other batches (or spin on a batch index past the new
epoch's end). The record is built generically from the config dataclass by field name, so it
follows stage configs as they change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from jaxrlhf.config import ConfigError

RECORD_FILE = "run_record.json"

# Fields (at any depth of the config) whose change alters which rows form which batch, or the
# shapes the checkpoint was saved with. Everything else (log/eval/save cadence, epochs,
# max_steps, iterations) may change on resume.
FIXED_FIELDS = frozenset({
    "seed", "batch_size", "micro_batch_size", "max_length", "max_prompt_length",
    "min_prompt_tokens", "num_slots", "eval_fraction", "packing", "pairs", "samples_per_prompt",
    "group_by_length", "pad_to_multiple", "mesh",
})


def file_sha256(path: str | Path) -> str | None:
    """Hex SHA-256 of a file's bytes, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _walk(config: Any, prefix: str = ""):
    """(dotted key, field name, value) of every field, depth first."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        yield key, f.name, value
        if dataclasses.is_dataclass(value) and f.name not in FIXED_FIELDS:
            yield from _walk(value, key + ".")


def record_for(cfg: Any, stage: str) -> dict:
    """The keys fixing ``cfg``'s data order and shapes: {"stage", dotted key: value, ...},
    with each data file list (``*_files``) as [{"path", "sha256"}, ...]; with LoRA also the
    frozen base's files (``model.frozen_base_files``)."""
    record: dict[str, Any] = {"stage": stage}
    for key, name, value in _walk(cfg):
        if name in FIXED_FIELDS:
            record[key] = _plain(value)
        elif name.endswith("_files") and isinstance(value, (tuple, list)):
            record[key] = [{"path": str(p), "sha256": file_sha256(p)} for p in value]
    base = frozen_base_files(cfg)
    if base:
        record["model.frozen_base_files"] = [{"path": str(p), "sha256": file_sha256(p)} for p in base]
    return record


def frozen_base_files(cfg: Any) -> list[Path]:
    """The weight files a LoRA run reads its frozen models from, which its checkpoints leave out:
    model.path's (the policy's base), the starting adapter's, and for RL the critic's and reward
    models' folders. A resume rebuilds these from disk, so they must be the files the run began
    with. Empty without LoRA (or for a base built from model.arch and the seed)."""
    model = getattr(cfg, "model", None)
    lora = getattr(model, "lora", None)
    if lora is None:
        return []
    folders = [model.path, lora.adapter, getattr(cfg, "critic_path", None)]
    folders += [r.path for r in getattr(cfg, "rewards", ()) or () if getattr(r, "kind", None) == "model"]
    files: list[Path] = []
    for folder in dict.fromkeys(f for f in folders if f):
        folder = Path(folder)
        files += sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder]
    return files


def _comparable(key: str, value: Any) -> Any:
    # a data file list is the same when its contents are, wherever the files now lie
    if key.endswith("_files") and isinstance(value, list):
        return [v.get("sha256") if isinstance(v, dict) else v for v in value]
    return value


def _shown(key: str, value: Any) -> str:
    if key.endswith("_files") and isinstance(value, list):
        parts = [f"{v.get('path')} (sha256 {(v.get('sha256') or 'unreadable')[:12]})"
                 if isinstance(v, dict) else str(v) for v in value]
        return "[" + ", ".join(parts) + "]"
    return json.dumps(value)


def changed_keys(saved: dict, current: dict) -> list[str]:
    return sorted(k for k in set(saved) | set(current)
                  if _comparable(k, saved.get(k)) != _comparable(k, current.get(k)))


def check_resume(saved: dict, current: dict) -> None:
    """Raise ConfigError (one line, every changed key with both values) when ``current``
    would train a resumed run on other batches or shapes than ``saved`` did."""
    changed = changed_keys(saved, current)
    if changed:
        diffs = "; ".join(f"{k}: {_shown(k, saved.get(k))} -> {_shown(k, current.get(k))}"
                          for k in changed)
        raise ConfigError(f"--resume with a config that changes the run's data order, shapes or frozen base "
                          f"({diffs}): resume with the saved values, or start a new output_dir")


def config_changes(old: dict, new: dict, prefix: str = "") -> dict[str, list]:
    """{dotted key: [old, new]} between two plain config dicts (what a resume changed)."""
    changes: dict[str, list] = {}
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(config_changes(a, b, dotted + "."))
        elif a != b:
            changes[dotted] = [a, b]
    return changes


def read_record(path: Path) -> dict | None:
    """The saved record, or None when the run predates records; ConfigError when unreadable."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the run record ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("fixed"), dict):
        raise ConfigError(f"{path}: not a run record (expected a JSON object with 'fixed')")
    return record
