"""Hugging Face ids where configs take folders: ``model.path: Qwen/Qwen3-0.6B``,
``data.train_files: [org/dataset]`` (``org/dataset:split`` picks a split).

A name that exists locally is a local path and is used as it is. Otherwise a name shaped
like a hub id is looked up in the local Hugging Face cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``) with huggingface_hub's
``snapshot_download(local_files_only=True)``; only when that misses and the user is online
(``HF_HUB_OFFLINE`` unset) is it downloaded, into that same cache. Only the files a stage
reads are fetched: safetensors weights, configs and tokenizer files; data files for a
dataset. A miss is one line that says where it looked.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from jaxrlhf.config import ConfigError

MODEL_FILES = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
               "tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "*.model",
               "chat_template.*", "added_tokens.json"]
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
DATA_FILES = ["*.parquet", "*.jsonl", "*.json", "**/*.parquet", "**/*.jsonl", "**/*.json"]
# owner/name as the hub spells them: letters, digits, -, _, . (no leading/trailing - or .)
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_PART}/{_PART}$")


class HubError(ConfigError):
    """A name that is neither a local path nor a hub id we can resolve; one line (a config
    error: the CLI prints it as one)."""


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def cache_dir() -> Path:
    """The hub cache huggingface_hub uses, read from the environment at call time (tests and
    users set HF_HUB_CACHE / HF_HOME after huggingface_hub may have been imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def _snapshot(repo_id: str, repo_type: str, patterns: list[str], what: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = cache_dir()
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, cache_dir=cache, local_files_only=True,
                                      allow_patterns=patterns))
    except LocalEntryNotFoundError:
        pass
    where = f"not a local path, and not in the Hugging Face cache {cache}"
    if offline():
        raise HubError(f"{repo_id}: {where} (HF_HUB_OFFLINE is set, so the hub was not asked)")
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, cache_dir=cache, allow_patterns=patterns))
    except (HfHubHTTPError, OSError, ValueError) as e:  # not found, gated, no network
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{repo_id}: {where}, and the hub gave no {what}: {first}") from None


def resolve_model_path(name: str | os.PathLike) -> Path:
    """A local model/tokenizer folder as it is, else the cached (or downloaded) snapshot of hub id ``name``."""
    path = Path(name)
    if path.exists() or not is_repo_id(str(name)):
        return path  # a missing local path is reported by the loader that reads it
    return _snapshot(str(name), "model", MODEL_FILES, "model")


def split_of(name: str, default: str) -> tuple[str, str]:
    """``("org/data", "test")`` from ``org/data:test``; ``default`` without a ``:split``."""
    repo, sep, split = str(name).partition(":")
    return (repo, split) if sep and split else (repo, default)


def resolve_data_files(name: str, split: str = "train") -> list[str]:
    """The data files of ``split`` in dataset ``name`` (a hub id), by the hub's naming
    conventions (``data/train-*.parquet``, ``train.jsonl``, ``train/*``...) as datasets
    reads them; a local path is returned as the only file."""
    if Path(name).exists() or not is_repo_id(name) or Path(name).suffix in DATA_SUFFIXES:
        return [str(name)]  # a local file (a missing one is reported by the loader that reads it)
    from datasets.data_files import get_data_patterns

    root = _snapshot(name, "dataset", DATA_FILES, "dataset")
    try:
        patterns = get_data_patterns(str(root))
    except Exception as e:  # datasets raises EmptyDatasetError and friends for a folder without data
        raise HubError(f"{name}: no data files in {root} ({type(e).__name__})") from None
    if split not in patterns:
        raise HubError(f"{name}: no split {split!r} in {root} (splits: {', '.join(patterns)}); "
                       f"pick one as {name}:SPLIT")
    files = sorted({f for p in patterns[split] for f in glob.glob(str(root / p), recursive=True)
                    if Path(f).suffix in DATA_SUFFIXES})
    if not files:
        raise HubError(f"{name}: split {split!r} in {root} has no .parquet, .jsonl or .json file")
    return files
