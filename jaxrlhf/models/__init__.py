"""Model ports and their Hugging Face folder I/O.

``from_pretrained(path)`` reads a local HF folder (config.json + safetensors) into our NNX
module, sharded over a mesh as it loads; ``save_pretrained(model, path)`` writes a folder
that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm
from jax.sharding import Mesh

from jaxrlhf.models.base import ArchConfig, CausalLM, CausalLMOutput, as_dtype
from jaxrlhf.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxrlhf.models.hf import TENSOR_MAPS, CheckpointError, iter_hf_tensors, write_safetensors
from jaxrlhf.models.layers import KVCache
from jaxrlhf.models.llama import LlamaConfig, LlamaForCausalLM, Qwen2Config
from jaxrlhf.sharding import MeshConfig, create_sharded, make_mesh, state_shardings

__all__ = ["ARCHITECTURES", "ArchConfig", "CausalLM", "CausalLMOutput", "CheckpointError",
           "GPT2Config", "GPT2LMHeadModel", "KVCache", "LlamaConfig", "LlamaForCausalLM",
           "Qwen2Config", "config_from_hf", "create_model", "from_pretrained", "load_tokenizer",
           "read_config", "save_pretrained"]

# model_type in config.json -> (config class, module class)
ARCHITECTURES: dict[str, tuple[type[ArchConfig], type[CausalLM]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, LlamaForCausalLM),
    "gpt2": (GPT2Config, GPT2LMHeadModel),
}


def config_from_hf(hf: dict, *, strict: bool = False, source: str = "config") -> ArchConfig:
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(f"{source}: unknown architecture model_type={model_type!r} "
                              f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    try:
        return ARCHITECTURES[model_type][0].from_hf(hf, strict=strict, source=source)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        message = str(e)
        raise CheckpointError(message if message.startswith(source) else f"{source}: {message}") from None


def read_config(path: str | os.PathLike) -> ArchConfig:
    config_file = Path(path) / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{config_file}: not found (is {path} a Hugging Face model folder?)")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: invalid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return config_from_hf(hf, source=str(config_file))


def _model_factory(config: ArchConfig, *, dtype, param_dtype, remat: bool, seed: int):
    module_cls = ARCHITECTURES[config.model_type][1]
    return lambda: module_cls(config, dtype=dtype, param_dtype=param_dtype, remat=remat,
                              rngs=nnx.Rngs(seed))


def _default_mesh(mesh: Mesh | None) -> Mesh:
    return mesh if mesh is not None else make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])


def create_model(config: ArchConfig, *, dtype="float32", param_dtype="float32", remat: bool = False,
                 mesh: Mesh | None = None, seed: int = 0) -> CausalLM:
    """A randomly initialised model, created directly in its sharded layout on ``mesh``."""
    factory = _model_factory(config, dtype=dtype, param_dtype=param_dtype, remat=remat, seed=seed)
    return create_sharded(factory, _default_mesh(mesh))


def from_pretrained(path: str | os.PathLike, *, dtype="float32", param_dtype="float32",
                    remat: bool = False, mesh: Mesh | None = None, progress: bool = False) -> CausalLM:
    """Load a local HF causal-LM folder into our port of its architecture.

    Weights are read tensor by tensor from safetensors and placed shard by shard on the
    mesh (``jax.make_array_from_callback``), so no device holds a full unsharded copy.
    Raises :class:`CheckpointError` naming the file and key for a missing tensor, an
    unexpected tensor, a wrong shape or an unknown architecture.
    """
    config = read_config(path)
    mesh = _default_mesh(mesh)
    param_dtype = as_dtype(param_dtype)
    factory = _model_factory(config, dtype=dtype, param_dtype=param_dtype, remat=remat, seed=0)
    graphdef, abstract_state = nnx.split(nnx.eval_shape(factory))
    shardings = state_shardings(abstract_state, mesh)
    variables = dict(nnx.to_flat_state(abstract_state))
    sharding_of = dict(nnx.to_flat_state(shardings))
    maps = TENSOR_MAPS[config.model_type](config)
    loaded = set()
    tensors = iter_hf_tensors(path, maps, tied=config.tie_word_embeddings)
    for tm, hf_array in tqdm(tensors, total=len(maps), desc=f"loading {Path(path).name}",
                             unit="tensor", disable=not progress):
        for p, array in zip(tm.paths, tm.to_ours(hf_array)):
            variable = variables[p]
            expected = variable.get_value().shape
            assert array.shape == expected, (tm.hf_key, p, array.shape, expected)
            host = np.asarray(array, dtype=param_dtype)
            value = jax.make_array_from_callback(expected, sharding_of[p].get_value(),
                                                 lambda idx, host=host: host[idx])
            variable.set_value(value)
            loaded.add(p)
    missing = set(variables) - loaded
    assert not missing, f"tensor maps for {config.model_type} do not cover {sorted(missing)}"
    return nnx.merge(graphdef, abstract_state)


def _host_value(array: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not array.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def save_pretrained(model: CausalLM, path: str | os.PathLike, *, dtype=None, tokenizer=None,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write ``model`` as an HF folder (config.json + safetensors [+ tokenizer]).

    ``dtype`` (e.g. ``"bfloat16"``) converts the weights on the way out; default keeps the
    parameter dtype. Only process 0 writes in a multi-host run.
    """
    path = Path(path)
    config = model.config
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors = {}
    for tm in TENSOR_MAPS[config.model_type](config):
        hf = tm.to_hf(*(_host_value(flat[p].get_value()) for p in tm.paths))
        tensors[tm.hf_key] = hf.astype(as_dtype(dtype)) if dtype is not None else hf
    if jax.process_index() == 0:
        path.mkdir(parents=True, exist_ok=True)
        hf_config = config.to_hf()
        hf_config["dtype"] = str(np.dtype(next(iter(tensors.values())).dtype))
        (path / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
        write_safetensors(tensors, path, max_shard_bytes=max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    return path


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in an HF folder (never runs code from the folder)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
