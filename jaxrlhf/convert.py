"""Convert a GGUF checkpoint into a Hugging Face safetensors folder our ports load.

transformers reads GGUF files (with the ``gguf`` and ``accelerate`` packages installed) and
dequantises every tensor to float32; this module saves that model as ``config.json`` +
``model.safetensors`` (+ the tokenizer) with the GGUF ``quantization_config`` removed, so the
folder is an ordinary float32 checkpoint for :func:`jaxrlhf.models.from_pretrained` and for
transformers alike. Usage::

    python -m jaxrlhf.convert gguf gemma-3-270m-q4_k_m.gguf out/gemma3-270m

Bad input (missing file, not a GGUF file, an architecture our ports lack, missing extras,
an output folder that is not empty) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

GGUF_MAGIC = b"GGUF"
REQUIRED = ("gguf", "accelerate", "torch")


class ConversionError(ValueError):
    """Input that cannot be converted; the message is one line naming the file."""


def _check_input(file: Path, out: Path) -> None:
    if not file.is_file():
        raise ConversionError(f"{file}: no such file")
    with file.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ConversionError(f"{file}: not a GGUF file (bad magic bytes)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: output exists and is not an empty folder")
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise ConversionError(f"{file}: reading GGUF needs {', '.join(missing)} "
                              "(pip install 'jaxrlhf[real,test]')")


def _strip_quantization(folder: Path) -> dict:
    """Remove the GGUF ``quantization_config`` from config.json: the weights are float32 now."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("quantization_config", None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    return config


def convert_gguf(file: str | Path, out: str | Path, *, tokenizer: bool = True) -> Path:
    """Dequantise ``file`` (GGUF) to float32 and write it to ``out`` as safetensors.

    Returns ``out``. Raises :class:`ConversionError` (one line) for bad input.
    """
    file, out = Path(file), Path(out)
    _check_input(file, out)
    import torch
    import transformers

    from jaxrlhf.models import ARCHITECTURES

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(file.parent), gguf_file=file.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{file}: transformers cannot read it ({first_line})") from None
    if model.config.model_type not in ARCHITECTURES:
        raise ConversionError(f"{file}: architecture {model.config.model_type!r} has no port "
                              f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    # GGUF loading leaves a quantizer on the model; its weights are plain float32 tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    _strip_quantization(out)
    if tokenizer:
        transformers.AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxrlhf convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="format", required=True)
    gguf = sub.add_parser("gguf", help="GGUF file -> float32 safetensors folder")
    gguf.add_argument("file", type=Path, help="the .gguf file")
    gguf.add_argument("out", type=Path, help="output folder (new or empty)")
    gguf.add_argument("--no-tokenizer", action="store_true", help="do not write the tokenizer")
    args = parser.parse_args(argv)
    try:
        folder = convert_gguf(args.file, args.out, tokenizer=not args.no_tokenizer)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
