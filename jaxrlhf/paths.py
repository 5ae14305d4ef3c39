"""Output paths that never overwrite a command's own inputs.

A command that writes ``--out`` checks it first: an output that is one of the command's
input files, that lies inside a model folder the command reads, or that is a non-empty
folder jaxrlhf did not write is refused with one line unless ``--overwrite`` is given. A
folder written by jaxrlhf carries ``MARKER`` so that re-running a command may replace it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from jaxrlhf.config import ConfigError

MARKER = "jaxrlhf_output.json"  # in every folder a checked command wrote

# what a Hugging Face model folder written by save_pretrained (or left by an earlier tool)
# may hold; replacing a folder removes these so no stale shard, index or config survives
MODEL_FOLDER_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                         "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                         "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model",
                         "chat_template.jinja", "jaxrlhf_config.yaml", MARKER)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(out: str | os.PathLike, *, inputs: Iterable = (), input_model_dirs: Iterable = (),
                 overwrite: bool = False, folder: bool = False) -> Path:
    """``out`` if writing it is safe, else one-line ConfigError.

    inputs: files the command reads; input_model_dirs: folders it reads a model or
    tokenizer from; folder: ``out`` is a folder (else a file). ``overwrite`` lifts every
    refusal except writing a file over a folder.
    """
    out = Path(out)
    target = out.resolve()
    if not folder and out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give the file to write")
    if folder and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give the folder to write")
    if overwrite:
        return out
    hint = "choose another --out (or pass --overwrite)"
    for path in inputs:
        if path is not None and Path(path).resolve() == target:
            raise ConfigError(f"--out {out}: is also an input of this command ({path}); {hint}")
    for model_dir in input_model_dirs:
        if model_dir is not None and _inside(target, Path(model_dir).resolve()):
            raise ConfigError(f"--out {out}: lies inside the model folder {model_dir} this command "
                              f"reads; {hint}")
    if folder and out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"--out {out}: a non-empty folder that jaxrlhf did not write; {hint}")
    return out


def replace_folder(new: Path, out: Path, **info) -> Path:
    """Move the files of the freshly written folder ``new`` into ``out``, first removing
    the model files an earlier content of ``out`` left (other files stay), and mark it."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in MODEL_FOLDER_PATTERNS:
        for stale in out.glob(pattern):
            if stale.is_file():
                stale.unlink()
    for item in new.iterdir():
        shutil.move(str(item), str(out / item.name))
    new.rmdir()
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return out
