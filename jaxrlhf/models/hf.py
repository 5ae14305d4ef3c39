"""The one place that knows Hugging Face tensor names and layouts.

A :class:`TensorMap` ties one HF tensor (name, shape) to one or more of our parameters
(paths into the NNX state) with the layout change both ways. Loading checks that every
tensor of the checkpoint is used and every shape matches, and names the file and key
otherwise. Only safetensors are read or written (never pickle).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

Path_ = tuple  # a path into the NNX state, e.g. ("layers", 0, "mlp", "up_proj", "kernel")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and key."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    hf_key: str
    hf_shape: tuple[int, ...]
    paths: tuple[Path_, ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]


def same(hf_key: str, path: Path_, shape) -> TensorMap:
    shape = tuple(shape)
    return TensorMap(hf_key, shape, (path,), lambda w: (w,), lambda w: w)


def torch_linear(hf_key: str, path: Path_, in_shape, out_shape) -> TensorMap:
    """``nn.Linear`` weight ``[out, in]`` <-> our kernel ``in_shape + out_shape``."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    return TensorMap(hf_key, (n_out, n_in), (path,),
                     lambda w: (w.T.reshape(in_shape + out_shape),),
                     lambda k: k.reshape(n_in, n_out).T)


def conv1d(hf_key: str, path: Path_, in_shape, out_shape) -> TensorMap:
    """GPT-2 ``Conv1D`` weight ``[in, out]`` <-> our kernel ``in_shape + out_shape``."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    return TensorMap(hf_key, (n_in, n_out), (path,),
                     lambda w: (w.reshape(in_shape + out_shape),),
                     lambda k: k.reshape(n_in, n_out))


def bias(hf_key: str, path: Path_, out_shape) -> TensorMap:
    out_shape = tuple(out_shape)
    n = math.prod(out_shape)
    return TensorMap(hf_key, (n,), (path,), lambda b: (b.reshape(out_shape),), lambda b: b.reshape(n))


def fused_split(hf_key: str, paths: tuple[Path_, ...], hf_shape, part_shapes, axis: int) -> TensorMap:
    """One HF tensor holding several of ours concatenated along ``axis`` (GPT-2 ``c_attn``)."""
    hf_shape = tuple(hf_shape)

    def to_ours(w):
        return tuple(p.reshape(s) for p, s in zip(np.split(w, len(paths), axis=axis), part_shapes))

    def to_hf(*ours):
        flat = [o.reshape(hf_shape[:axis] + (-1,) + hf_shape[axis + 1:]) for o in ours]
        return np.concatenate(flat, axis=axis)

    return TensorMap(hf_key, hf_shape, tuple(paths), to_ours, to_hf)


# --------------------------------------------------------------------------- per architecture


def llama_tensor_maps(config) -> list[TensorMap]:
    e, h, k, d, m, v = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                        config.head_dim, config.intermediate_size, config.vocab_size)
    maps = [same("model.embed_tokens.weight", ("embed_tokens", "embedding"), (v, e)),
            same("model.norm.weight", ("final_norm", "weight"), (e,))]
    for i in range(config.num_hidden_layers):
        hf, ours = f"model.layers.{i}", ("layers", i)
        att, mlp = ours + ("self_attn",), ours + ("mlp",)
        maps += [
            same(f"{hf}.input_layernorm.weight", ours + ("input_layernorm", "weight"), (e,)),
            same(f"{hf}.post_attention_layernorm.weight", ours + ("post_attention_layernorm", "weight"), (e,)),
            torch_linear(f"{hf}.self_attn.q_proj.weight", att + ("q_proj", "kernel"), (e,), (h, d)),
            torch_linear(f"{hf}.self_attn.k_proj.weight", att + ("k_proj", "kernel"), (e,), (k, d)),
            torch_linear(f"{hf}.self_attn.v_proj.weight", att + ("v_proj", "kernel"), (e,), (k, d)),
            torch_linear(f"{hf}.self_attn.o_proj.weight", att + ("o_proj", "kernel"), (h, d), (e,)),
            torch_linear(f"{hf}.mlp.gate_proj.weight", mlp + ("gate_proj", "kernel"), (e,), (m,)),
            torch_linear(f"{hf}.mlp.up_proj.weight", mlp + ("up_proj", "kernel"), (e,), (m,)),
            torch_linear(f"{hf}.mlp.down_proj.weight", mlp + ("down_proj", "kernel"), (m,), (e,)),
        ]
        if getattr(config, "qk_norm", False):
            maps += [same(f"{hf}.self_attn.{p}_norm.weight", att + (f"{p}_norm", "weight"), (d,))
                     for p in "qk"]
        if config.qkv_bias:
            maps += [bias(f"{hf}.self_attn.{p}_proj.bias", att + (f"{p}_proj", "bias"), (n, d))
                     for p, n in (("q", h), ("k", k), ("v", k))]
        if config.o_bias:
            maps.append(bias(f"{hf}.self_attn.o_proj.bias", att + ("o_proj", "bias"), (e,)))
        if config.mlp_bias:
            maps += [bias(f"{hf}.mlp.{p}.bias", mlp + (p, "bias"), (n,))
                     for p, n in (("gate_proj", m), ("up_proj", m), ("down_proj", e))]
    if not config.tie_word_embeddings:
        maps.append(torch_linear("lm_head.weight", ("lm_head", "kernel"), (e,), (v,)))
    return maps


def gemma3_tensor_maps(config) -> list[TensorMap]:
    """Gemma 3 text: Llama's names plus q/k norms and pre/post-feedforward norms; every
    norm weight is stored zero-centred in both layouts (the model adds 1)."""
    e, h, k, d, m, v = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                        config.head_dim, config.intermediate_size, config.vocab_size)
    maps = [same("model.embed_tokens.weight", ("embed_tokens", "embedding"), (v, e)),
            same("model.norm.weight", ("final_norm", "weight"), (e,))]
    for i in range(config.num_hidden_layers):
        hf, ours = f"model.layers.{i}", ("layers", i)
        att, mlp = ours + ("self_attn",), ours + ("mlp",)
        maps += [same(f"{hf}.{n}.weight", ours + (n, "weight"), (e,))
                 for n in ("input_layernorm", "post_attention_layernorm",
                           "pre_feedforward_layernorm", "post_feedforward_layernorm")]
        maps += [same(f"{hf}.self_attn.{n}.weight", att + (n, "weight"), (d,)) for n in ("q_norm", "k_norm")]
        maps += [
            torch_linear(f"{hf}.self_attn.q_proj.weight", att + ("q_proj", "kernel"), (e,), (h, d)),
            torch_linear(f"{hf}.self_attn.k_proj.weight", att + ("k_proj", "kernel"), (e,), (k, d)),
            torch_linear(f"{hf}.self_attn.v_proj.weight", att + ("v_proj", "kernel"), (e,), (k, d)),
            torch_linear(f"{hf}.self_attn.o_proj.weight", att + ("o_proj", "kernel"), (h, d), (e,)),
            torch_linear(f"{hf}.mlp.gate_proj.weight", mlp + ("gate_proj", "kernel"), (e,), (m,)),
            torch_linear(f"{hf}.mlp.up_proj.weight", mlp + ("up_proj", "kernel"), (e,), (m,)),
            torch_linear(f"{hf}.mlp.down_proj.weight", mlp + ("down_proj", "kernel"), (m,), (e,)),
        ]
    if not config.tie_word_embeddings:
        maps.append(torch_linear("lm_head.weight", ("lm_head", "kernel"), (e,), (v,)))
    return maps


def gpt2_tensor_maps(config) -> list[TensorMap]:
    e, h, d, m, v = config.n_embd, config.n_head, config.head_dim, config.intermediate_size, config.vocab_size
    maps = [same("transformer.wte.weight", ("wte", "embedding"), (v, e)),
            same("transformer.wpe.weight", ("wpe", "embedding"), (config.n_positions, e)),
            same("transformer.ln_f.weight", ("final_norm", "weight"), (e,)),
            same("transformer.ln_f.bias", ("final_norm", "bias"), (e,))]
    for i in range(config.n_layer):
        hf, ours = f"transformer.h.{i}", ("layers", i)
        att, mlp = ours + ("attn",), ours + ("mlp",)
        qkv = tuple(att + (f"{p}_proj",) for p in "qkv")
        maps += [
            same(f"{hf}.ln_1.weight", ours + ("ln_1", "weight"), (e,)),
            same(f"{hf}.ln_1.bias", ours + ("ln_1", "bias"), (e,)),
            same(f"{hf}.ln_2.weight", ours + ("ln_2", "weight"), (e,)),
            same(f"{hf}.ln_2.bias", ours + ("ln_2", "bias"), (e,)),
            fused_split(f"{hf}.attn.c_attn.weight", tuple(p + ("kernel",) for p in qkv),
                        (e, 3 * e), [(e, h, d)] * 3, axis=1),
            fused_split(f"{hf}.attn.c_attn.bias", tuple(p + ("bias",) for p in qkv),
                        (3 * e,), [(h, d)] * 3, axis=0),
            conv1d(f"{hf}.attn.c_proj.weight", att + ("o_proj", "kernel"), (h, d), (e,)),
            bias(f"{hf}.attn.c_proj.bias", att + ("o_proj", "bias"), (e,)),
            conv1d(f"{hf}.mlp.c_fc.weight", mlp + ("c_fc", "kernel"), (e,), (m,)),
            bias(f"{hf}.mlp.c_fc.bias", mlp + ("c_fc", "bias"), (m,)),
            conv1d(f"{hf}.mlp.c_proj.weight", mlp + ("c_proj", "kernel"), (m,), (e,)),
            bias(f"{hf}.mlp.c_proj.bias", mlp + ("c_proj", "bias"), (e,)),
        ]
    if not config.tie_word_embeddings:
        maps.append(torch_linear("lm_head.weight", ("lm_head", "kernel"), (e,), (v,)))
    return maps


TENSOR_MAPS = {"llama": llama_tensor_maps, "qwen2": llama_tensor_maps, "qwen3": llama_tensor_maps,
               "gemma3_text": gemma3_tensor_maps, "gpt2": gpt2_tensor_maps}

# Image-text folders whose text tower we load: model_type -> (text model_type, prefix of the
# tower's weights as saved files name them, prefixes of the weights left out). transformers
# 5 keeps ``model.language_model.*`` in memory but saves ``language_model.model.*`` (the hub's
# layout); both are read (PREFIX_ALIASES).
TEXT_TOWERS = {"gemma3": ("gemma3_text", "language_model.model.",
                          ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                           "model.multi_modal_projector."))}
PREFIX_ALIASES = {"language_model.model.": "model.language_model."}


def text_tower_config(hf: dict) -> dict:
    """The text tower's config of an image-text folder (``gemma3``); other configs as they are."""
    if hf.get("model_type") not in TEXT_TOWERS:
        return hf
    text = dict(hf.get("text_config") or {})
    text["model_type"] = TEXT_TOWERS[hf["model_type"]][0]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
        if key in hf and key not in text:
            text[key] = hf[key]
    return text


def text_tower_maps(hf: dict, maps: list[TensorMap]) -> tuple[list[TensorMap], tuple[str, ...]]:
    """Maps renamed to where an image-text folder keeps its text tower, and the prefixes of
    the tensors to leave out; unchanged for a text-only folder."""
    if hf.get("model_type") not in TEXT_TOWERS:
        return maps, ()
    _, prefix, left_out = TEXT_TOWERS[hf["model_type"]]
    renamed = [dataclasses.replace(tm, hf_key=prefix + tm.hf_key[len("model."):])
               if tm.hf_key.startswith("model.") else tm for tm in maps]
    return renamed, left_out


# Buffers some checkpoints carry that are not parameters (recomputed by every port).
IGNORED_KEYS = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias)$")
# Key prefixes that checkpoints of the bare backbone lack (``wte.weight`` for ``transformer.wte.weight``).
OPTIONAL_PREFIXES = ("transformer.", "model.")


# --------------------------------------------------------------------------- safetensors files


class SafetensorsFolder:
    """The tensors of an HF folder: ``model.safetensors``, a sharded index, or bare shards."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
            # shards are names inside the folder; checked lexically (not resolved), because the
            # HF cache links snapshot files to blobs elsewhere
            for name in weight_map.values() if isinstance(weight_map, dict) else ():
                if (not isinstance(name, str) or os.path.isabs(name)
                        or os.path.normpath(name).split(os.sep)[0] == os.pardir):
                    raise CheckpointError(f"{index}: shard {name!r} lies outside {self.folder}; "
                                          "an index may only name files in its own folder")
            files = sorted(set(weight_map.values()))
        elif single.exists():
            files = [single.name]
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not files:
            pickles = [p.name for p in self.folder.glob("*.bin")] + [p.name for p in self.folder.glob("*.pt")]
            hint = (f" (found {', '.join(pickles)}: pickle checkpoints are not loaded; convert them "
                    "to safetensors first)") if pickles else ""
            raise CheckpointError(f"{self.folder}: no *.safetensors weights{hint}")
        self.key_to_file: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name in files:
            path = self.folder / name
            if not path.exists():
                raise CheckpointError(f"{index}: lists shard {name!r}, which does not exist")
            try:
                with safe_open(path, framework="numpy") as f:
                    for key in f.keys():
                        self.key_to_file[key] = path
                        self.shapes[key] = tuple(f.get_slice(key).get_shape())
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None

    def where(self, key: str) -> str:
        return str(self.key_to_file.get(key, self.folder / "model.safetensors"))

    def read(self, key: str) -> np.ndarray:
        path = self.key_to_file[key]
        try:
            with safe_open(path, framework="numpy") as f:
                return f.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor {key!r} ({e})") from None


def resolve_keys(folder: SafetensorsFolder, maps: list[TensorMap]) -> dict[str, str]:
    """Map each expected HF key to the key present in the files (handles bare-backbone names)."""
    present = set(folder.shapes)
    resolved = {}
    for tm in maps:
        candidates = [tm.hf_key] + [tm.hf_key[len(p):] for p in OPTIONAL_PREFIXES if tm.hf_key.startswith(p)]
        candidates += [alias + tm.hf_key[len(p):] for p, alias in PREFIX_ALIASES.items()
                       if tm.hf_key.startswith(p)]
        found = next((c for c in candidates if c in present), None)
        if found is None:
            raise CheckpointError(f"{folder.where(tm.hf_key)}: missing tensor {tm.hf_key!r}")
        if folder.shapes[found] != tm.hf_shape:
            raise CheckpointError(
                f"{folder.where(found)}: tensor {found!r} has shape {list(folder.shapes[found])}, "
                f"expected {list(tm.hf_shape)} from config.json")
        resolved[tm.hf_key] = found
    return resolved


def check_all_used(folder: SafetensorsFolder, used: Iterable[str], *, tied: bool,
                   ignore: Iterable[str] = (), ignore_prefixes: tuple[str, ...] = ()) -> None:
    unused = sorted(k for k in set(folder.shapes) - set(used) - set(ignore)
                    if not k.startswith(ignore_prefixes))
    unused = [k for k in unused if not IGNORED_KEYS.search(k)
              and not (tied and k == "lm_head.weight")]  # a tied head may be stored redundantly
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise CheckpointError(f"{folder.where(unused[0])}: unexpected tensor {unused[0]!r}{more}; "
                              "the checkpoint does not match config.json")


def iter_hf_tensors(folder: str | os.PathLike, maps: list[TensorMap], *, tied: bool,
                    ignore: Iterable[str] = (), ignore_prefixes: tuple[str, ...] = ()):
    """Yield ``(TensorMap, hf_array)`` for every map, after checking names and shapes.

    ``ignore``: tensors that may be present and go unused (an LM head under a reward model);
    ``ignore_prefixes``: whole sub-models left out (the vision tower of an image-text folder).
    """
    files = SafetensorsFolder(folder)
    resolved = resolve_keys(files, maps)
    check_all_used(files, resolved.values(), tied=tied, ignore=ignore, ignore_prefixes=ignore_prefixes)
    for tm in maps:
        yield tm, files.read(resolved[tm.hf_key])


def write_safetensors(tensors: dict[str, np.ndarray], folder: str | os.PathLike,
                      max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Write ``model.safetensors`` or, above ``max_shard_bytes``, shards plus an index."""
    folder = Path(folder)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = np.ascontiguousarray(array)
        size += array.nbytes
    metadata = {"format": "pt"}  # transformers refuses safetensors files without a format
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata=metadata)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, folder / name, metadata=metadata)
        weight_map.update({k: name for k in shard})
    total = sum(a.nbytes for a in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names
