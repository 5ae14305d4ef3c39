"""LoRA adapters <-> PEFT adapter folders (``adapter_config.json`` + ``adapter_model.safetensors``).

PEFT names an adapter after the module it adapts, in the transformers model wrapped by
``PeftModel``: ``base_model.model.<module>.lora_A.weight`` ``[r, in]`` and ``...lora_B.weight``
``[out, r]``. Module names come from the same tensor maps that export the base
(:mod:`jaxrlhf.models.hf`), so the adapter lands on the module whose kernel it updates.

GPT-2 fuses q, k and v in one ``c_attn``: our three adapters (a_i [E, r], b_i [r, E]) are one
PEFT adapter of rank 3r on c_attn, A = [a_q; a_k; a_v]^T and B block-diagonal, with
``alpha_pattern`` keeping alpha / r, which is exactly the sum of the three updates. Loading a
PEFT c_attn adapter gives each of q, k, v the whole A and its rows of B (exact as well).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxrlhf.config import LoRAConfig
from jaxrlhf.models.heads import ScalarHeadModel
from jaxrlhf.models.hf import TENSOR_MAPS, TensorMap
from jaxrlhf.models.lora import PROJECTIONS, LoRA, add_lora, place_adapters
from jaxrlhf.sharding import to_host

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
ADAPTER_DIR = "adapter"  # final/adapter: the PEFT folder beside the merged export


def _module_maps(model) -> dict[tuple, tuple[str, TensorMap, int]]:
    """Our Linear module path -> (HF module name, its kernel's tensor map, part index in it)."""
    prefix = ("backbone",) if isinstance(model, ScalarHeadModel) else ()
    out = {}
    for tm in TENSOR_MAPS[model.config.model_type](model.config):
        if not tm.hf_key.endswith(".weight"):
            continue
        for i, p in enumerate(tm.paths):
            if p[-1] == "kernel":
                out[prefix + tuple(p[:-1])] = (tm.hf_key[: -len(".weight")], tm, i)
    return out


def _part_rows(tm: TensorMap) -> list[int]:
    """First output row of each part in the HF module's output (GPT-2 c_attn: q, k, v thirds
    of the Conv1D weight's [in, out] second axis; one part: [0])."""
    n = len(tm.paths)
    if n == 1:
        return [0]
    size = tm.hf_shape[1] // n
    return [i * size for i in range(n)]


def _adapters(model) -> dict[tuple, LoRA]:
    return {tuple(path[:-1]): m for path, m in nnx.iter_graph(model)
            if isinstance(m, LoRA) and path and path[-1] == "lora"}


def _host(x) -> np.ndarray:
    return np.asarray(to_host(x)).astype(np.float32)


def adapter_tensors(model) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, float]]]:
    """PEFT tensors of ``model``'s adapters and each HF module's (rank, alpha)."""
    modules = _module_maps(model)
    by_hf: dict[str, list] = {}
    for path, lora in _adapters(model).items():
        hf_name, tm, part = modules[path]
        by_hf.setdefault(hf_name, []).append((part, tm, lora))
    tensors, ranks = {}, {}
    for hf_name, items in by_hf.items():
        items.sort(key=lambda it: it[0])
        tm = items[0][1]
        scales = {lora.scale for _, _, lora in items}
        if len(scales) != 1:
            raise ValueError(f"{hf_name}: fused projections with different LoRA scales {sorted(scales)}")
        rows = _part_rows(tm)
        a_parts = [_host(lora.a.get_value()) for _, _, lora in items]  # each [*in, r]
        b_parts = [_host(lora.b.get_value()) for _, _, lora in items]  # each [r, *out]
        rank = sum(a.shape[-1] for a in a_parts)
        out_total = tm.hf_shape[1] if len(tm.paths) > 1 else b_parts[0][0].size
        # B: [out_total, rank], block-diagonal over the fused parts (one part: plain [out, r])
        b_full = np.zeros((out_total, rank), np.float32)
        col = 0
        for (part, _, _), b in zip(items, b_parts):
            r = b.shape[0]
            b_full[rows[part]: rows[part] + b[0].size, col: col + r] = b.reshape(r, -1).T
            col += r
        tensors[f"{PREFIX}{hf_name}.lora_A.weight"] = np.concatenate(
            [a.reshape(-1, a.shape[-1]).T for a in a_parts], axis=0)  # [rank, in]
        tensors[f"{PREFIX}{hf_name}.lora_B.weight"] = b_full
        ranks[hf_name] = (rank, scales.pop() * rank)
    return tensors, ranks


def target_modules(adapted: set[str], modules: set[str]) -> list[str]:
    """PEFT's target_modules for the ``adapted`` HF module names: a leaf name (q_proj) where every
    module of that name is adapted, else the full names (GPT-2's attn.c_proj vs mlp.c_proj)."""
    leaves: dict[str, set[str]] = {}
    for name in modules:
        leaves.setdefault(name.rsplit(".", 1)[-1], set()).add(name)
    out = []
    for leaf, names in sorted(leaves.items()):
        chosen = names & adapted
        out += [leaf] if chosen == names else sorted(chosen)
    return out


def save_adapter(model, folder: str | os.PathLike, *, base_model: str | None = None,
                 default: tuple[int, float] | None = None) -> Path:
    """Write ``model``'s adapters as a PEFT folder that ``PeftModel.from_pretrained`` loads.

    ``default`` (rank, alpha) is written as r / lora_alpha; modules that differ (fused GPT-2
    c_attn, adapters loaded with other ranks) are listed in rank_pattern / alpha_pattern."""
    folder = Path(folder)
    tensors, ranks = adapter_tensors(model)
    if not tensors:
        raise ValueError("the model has no LoRA adapters to save")
    counts: dict[tuple[int, float], int] = {}
    for v in ranks.values():
        counts[v] = counts.get(v, 0) + 1
    rank, alpha = default if default is not None else max(counts, key=counts.get)
    targets = target_modules(set(ranks), {hf_name for hf_name, _, _ in _module_maps(model).values()})
    seq_cls = isinstance(model, ScalarHeadModel)
    config = {
        "peft_type": "LORA", "task_type": "SEQ_CLS" if seq_cls else "CAUSAL_LM",
        "base_model_name_or_path": base_model, "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": targets, "bias": "none", "fan_in_fan_out": model.config.model_type == "gpt2",
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "modules_to_save": ["score"] if seq_cls else None,
        "rank_pattern": {k: r for k, (r, a) in ranks.items() if r != rank},
        "alpha_pattern": {k: a for k, (r, a) in ranks.items() if a != alpha},
    }
    if seq_cls:  # the trained head goes with the adapter (as PEFT's modules_to_save does)
        from jaxrlhf.models.reward_head import export_head
        score, _, _ = export_head(_host(model.score.get_value()),
                                              _host(model.normalization.get_value()), np.float32)
        tensors[f"{PREFIX}score.weight"] = score
    if jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        # safetensors writes an array's raw buffer: transposed (Fortran-ordered) views must be made C-ordered
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, folder / WEIGHTS_FILE,
                  metadata={"format": "pt"})
    return folder


def read_adapter(folder: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config.json, tensors) with one-line errors for what we cannot load."""
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: not a PEFT adapter folder ({name} is missing)")
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{folder / CONFIG_FILE}: peft_type {config.get('peft_type')!r}, only LORA is supported")
    for flag in ("use_rslora", "use_dora"):
        if config.get(flag):
            raise ValueError(f"{folder / CONFIG_FILE}: {flag}=true is not supported")
    return config, load_file(str(folder / WEIGHTS_FILE))


def _pattern(patterns: dict, hf_name: str, default):
    # PEFT matches a pattern key as the end of the module name (after a dot)
    for key, value in (patterns or {}).items():
        if hf_name == key or hf_name.endswith("." + key):
            return value
    return default


def load_adapter(model, folder: str | os.PathLike, *, mesh=None) -> list[tuple]:
    """Put the PEFT adapter of ``folder`` on ``model`` (no adapters yet), in place: its rank,
    alpha and targets come from adapter_config.json. Returns the adapted paths."""
    config, tensors = read_adapter(folder)
    modules = _module_maps(model)
    by_hf: dict[str, list] = {}
    for path, (hf_name, tm, part) in modules.items():
        by_hf.setdefault(hf_name, []).append((part, path, tm))
    used, ranks, values, names = set(), {}, {}, set()
    for hf_name, entries in by_hf.items():
        key_a, key_b = f"{PREFIX}{hf_name}.lora_A.weight", f"{PREFIX}{hf_name}.lora_B.weight"
        if key_a not in tensors:
            continue
        if key_b not in tensors:
            raise ValueError(f"{folder / WEIGHTS_FILE}: {key_a} has no {key_b}")
        a, b = tensors[key_a].astype(np.float32), tensors[key_b].astype(np.float32)  # [R, in], [out, R]
        rank = a.shape[0]
        alpha = float(_pattern(config.get("alpha_pattern"), hf_name, config["lora_alpha"]))
        if _pattern(config.get("rank_pattern"), hf_name, config["r"]) != rank:
            raise ValueError(f"{folder}: {key_a} has rank {rank}, adapter_config.json says otherwise")
        used.update((key_a, key_b))
        for part, path, tm in entries:
            linear = _linear_at(model, path)
            row, out = _part_rows(tm)[part], math.prod(linear.out_shape)
            # each fused part gets the whole A and its own rows of B: the same update, exactly
            ranks[path] = (rank, alpha / rank)
            values[path] = (a.T.reshape(linear.in_shape + (rank,)),
                            b[row: row + out].T.reshape((rank,) + linear.out_shape))
            names.add(PROJECTIONS[path[-1]])
    left = sorted(k for k in tensors if k not in used and not k.startswith(f"{PREFIX}score."))
    if left:
        raise ValueError(f"{folder / WEIGHTS_FILE}: tensor {left[0]} matches no projection of this model")
    if not values:
        raise ValueError(f"{folder / WEIGHTS_FILE}: no lora_A/lora_B tensor matches this model")
    lora_cfg = LoRAConfig(rank=config["r"], alpha=float(config["lora_alpha"]), targets=tuple(sorted(names)))
    adapted = add_lora(model, lora_cfg, ranks=ranks)
    for path in adapted:
        if path not in values:  # a layer the adapter leaves out: zero-initialised like a fresh one
            continue
        a, b = values[path]
        lora = _linear_at(model, path).lora
        lora.a.set_value(jax.numpy.asarray(a, lora.a.get_value().dtype))
        lora.b.set_value(jax.numpy.asarray(b, lora.b.get_value().dtype))
    if mesh is not None:
        place_adapters(model, mesh)
    return adapted


def _linear_at(model, path: tuple):
    node = model
    for p in path:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return node


def attach_lora(model, lora_cfg: LoRAConfig, *, seed: int, mesh=None):
    """``model`` with the adapters ``model.lora`` asks for: a PEFT folder's, or fresh ones."""
    if lora_cfg.adapter:
        load_adapter(model, lora_cfg.adapter, mesh=mesh)
    else:
        add_lora(model, lora_cfg, seed=seed, mesh=mesh)
    return model
