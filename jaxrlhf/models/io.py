"""Reading and writing Hugging Face folders: causal LMs and reward models.

Weights are read tensor by tensor from safetensors and placed shard by shard on the mesh
(``jax.make_array_from_callback``), so no device ever holds a full unsharded copy. The
name/layout mapping itself lives in :mod:`jaxrlhf.models.hf`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxrlhf.models.base import ArchConfig, CausalLM, as_dtype
from jaxrlhf.models.gemma3 import Gemma3Config, Gemma3ForCausalLM
from jaxrlhf.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxrlhf.models.heads import ScalarHeadModel
from jaxrlhf.models import reward_head
from jaxrlhf.models.hf import (TENSOR_MAPS, CheckpointError, TensorMap, iter_hf_tensors,
                               text_tower_config, text_tower_maps, write_safetensors)
from jaxrlhf.models.llama import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen3Config
from jaxrlhf.sharding import MeshConfig, create_sharded, make_mesh, state_shardings

# model_type in config.json -> (config class, module class)
ARCHITECTURES: dict[str, tuple[type[ArchConfig], type[CausalLM]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, LlamaForCausalLM),
    "qwen3": (Qwen3Config, LlamaForCausalLM),
    "gemma3_text": (Gemma3Config, Gemma3ForCausalLM),
    "gpt2": (GPT2Config, GPT2LMHeadModel),
}
SEQ_CLS_SUFFIX = "ForSequenceClassification"
# where the reward model's class name is not the causal LM's with the suffix swapped
# (Gemma3ForSequenceClassification is the multimodal model's)
SEQ_CLS_PREFIX = {"gemma3_text": "Gemma3Text"}


def config_from_hf(hf: dict, *, strict: bool = False, source: str = "config") -> ArchConfig:
    """Our config for an HF config dict (an image-text ``gemma3`` config gives its text tower's)."""
    hf = text_tower_config(hf)
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


def read_hf_config(path: str | os.PathLike) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{config_file}: not found (is {path} a Hugging Face model folder?)")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: invalid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return hf


def read_config(path: str | os.PathLike) -> ArchConfig:
    return config_from_hf(read_hf_config(path), source=str(Path(path) / "config.json"))


def _default_mesh(mesh: Mesh | None) -> Mesh:
    return mesh if mesh is not None else make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])


def _backbone_factory(config: ArchConfig, *, dtype, param_dtype, remat: bool, seed: int):
    module_cls = ARCHITECTURES[config.model_type][1]
    return lambda: module_cls(config, dtype=dtype, param_dtype=param_dtype, remat=remat,
                              rngs=nnx.Rngs(seed))


def _reward_factory(config: ArchConfig, *, dtype, param_dtype, remat: bool, seed: int,
                    zero_init: bool = False):
    backbone = _backbone_factory(config, dtype=dtype, param_dtype=param_dtype, remat=remat, seed=seed)
    return lambda: ScalarHeadModel(backbone(), rngs=nnx.Rngs(seed + 1), zero_init=zero_init)


def create_model(config: ArchConfig, *, dtype="float32", param_dtype="float32", remat: bool = False,
                 mesh: Mesh | None = None, seed: int = 0) -> CausalLM:
    """A randomly initialised causal LM, created directly in its sharded layout on ``mesh``."""
    factory = _backbone_factory(config, dtype=dtype, param_dtype=param_dtype, remat=remat, seed=seed)
    return create_sharded(factory, _default_mesh(mesh))


def create_reward_model(config: ArchConfig, *, dtype="float32", param_dtype="float32",
                        remat: bool = False, mesh: Mesh | None = None, seed: int = 0) -> ScalarHeadModel:
    factory = _reward_factory(config, dtype=dtype, param_dtype=param_dtype, remat=remat, seed=seed)
    return create_sharded(factory, _default_mesh(mesh))


def _prefixed(maps: list[TensorMap], prefix: tuple) -> list[TensorMap]:
    return [dataclasses.replace(tm, paths=tuple(prefix + p for p in tm.paths)) for tm in maps]


def _without_lm_head(maps: list[TensorMap]) -> list[TensorMap]:
    return [tm for tm in maps if tm.hf_key != "lm_head.weight"]


def score_map(hidden_size: int) -> TensorMap:
    """transformers' ``score`` Linear ``[1, E]`` (no bias) <-> our ``score`` ``[E]``."""
    return TensorMap("score.weight", (1, hidden_size), (("score",),), lambda w: (w[0],),
                     lambda s: s[None, :])


def _load(path, factory: Callable[[], nnx.Module], maps: list[TensorMap], *, mesh: Mesh | None,
          tied: bool, ignore: set[str] = frozenset(), progress: bool = False,
          keep_initialised: bool = False, ignore_prefixes: tuple[str, ...] = ()) -> nnx.Module:
    """Fill the parameters of ``factory()``'s module from an HF folder, shard by shard.

    ``keep_initialised``: parameters no map covers keep their (sharded) random init, e.g. a
    new reward head on a base LM; otherwise every parameter must be covered.
    """
    mesh = _default_mesh(mesh)
    if keep_initialised:
        model = create_sharded(factory, mesh)
        graphdef, state = nnx.split(model)
    else:
        graphdef, state = nnx.split(nnx.eval_shape(factory))
    shardings = dict(nnx.to_flat_state(state_shardings(state, mesh)))
    variables = dict(nnx.to_flat_state(state))
    loaded = set()
    tensors = iter_hf_tensors(path, maps, tied=tied, ignore=ignore, ignore_prefixes=ignore_prefixes)
    for tm, hf_array in tqdm(tensors, total=len(maps), desc=f"loading {Path(path).name}",
                             unit="tensor", disable=not progress):
        for p, array in zip(tm.paths, tm.to_ours(hf_array)):
            variable = variables[p]
            expected = variable.get_value().shape
            assert array.shape == expected, (tm.hf_key, p, array.shape, expected)
            host = np.asarray(array, dtype=variable.get_value().dtype)
            variable.set_value(jax.make_array_from_callback(
                expected, shardings[p].get_value(), lambda idx, host=host: host[idx]))
            loaded.add(p)
    if not keep_initialised:
        missing = {p for p, v in variables.items() if isinstance(v, nnx.Param)} - loaded
        assert not missing, f"tensor maps do not cover {sorted(missing)}"
    return nnx.merge(graphdef, state)


def from_pretrained(path: str | os.PathLike, *, dtype="float32", param_dtype="float32",
                    remat: bool = False, mesh: Mesh | None = None, progress: bool = False) -> CausalLM:
    """Load a local HF causal-LM folder into our port of its architecture.

    Raises :class:`CheckpointError` naming the file and key for a missing tensor, an
    unexpected tensor, a wrong shape or an unknown architecture. An image-text ``gemma3``
    folder loads its text tower (the vision tower is left out).
    """
    hf = read_hf_config(path)
    config = config_from_hf(hf, source=str(Path(path) / "config.json"))
    factory = _backbone_factory(config, dtype=dtype, param_dtype=as_dtype(param_dtype), remat=remat, seed=0)
    maps, left_out = text_tower_maps(hf, TENSOR_MAPS[config.model_type](config))
    return _load(path, factory, maps, mesh=mesh, tied=config.tie_word_embeddings, progress=progress,
                 ignore_prefixes=left_out)


def reward_model_from_pretrained(path: str | os.PathLike, *, dtype="float32", param_dtype="float32",
                                 remat: bool = False, mesh: Mesh | None = None, seed: int = 0,
                                 zero_init: bool = False, progress: bool = False) -> ScalarHeadModel:
    """A reward model from an HF folder.

    From a ``*ForSequenceClassification`` folder (e.g. our export) every tensor, the score
    head included, is loaded; from a causal-LM folder the backbone is loaded, its LM head
    dropped, and the score head initialised N(0, 1/(E+1)) (zeros with ``zero_init``).
    """
    hf = read_hf_config(path)
    config = config_from_hf(hf, source=str(Path(path) / "config.json"))
    is_seq_cls = any(a.endswith(SEQ_CLS_SUFFIX) for a in hf.get("architectures") or [])
    maps = _prefixed(_without_lm_head(TENSOR_MAPS[config.model_type](config)), ("backbone",))
    if is_seq_cls:
        num_labels = hf.get("num_labels", len(hf.get("id2label") or {0: 0}))
        if num_labels != 1:
            raise CheckpointError(f"{Path(path) / 'config.json'}: a reward model needs num_labels=1, "
                                  f"got {num_labels}")
        maps.append(score_map(config.hidden_size))
    factory = _reward_factory(config, dtype=dtype, param_dtype=as_dtype(param_dtype), remat=remat,
                              seed=seed, zero_init=zero_init)
    model = _load(path, factory, maps, mesh=mesh, tied=config.tie_word_embeddings,
                  ignore={"lm_head.weight"}, progress=progress, keep_initialised=True)
    if is_seq_cls:  # our export holds the gain folded into score.weight: back to the raw head
        from jaxrlhf.models.hf import SafetensorsFolder
        try:
            raw, normalization = reward_head.read_head(path, hf, SafetensorsFolder(path).read("score.weight"))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        score = model.score.get_value()
        host = raw.astype(score.dtype)
        model.score.set_value(jax.make_array_from_callback(host.shape, score.sharding, lambda idx: host[idx]))
        model.normalization.set_value(jax.numpy.asarray(normalization))
        model.append_eos = (hf.get(reward_head.LAYOUT_KEY) or {}).get("append_eos")
    return model


def _host_value(array: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not array.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def save_pretrained(model: CausalLM | ScalarHeadModel, path: str | os.PathLike, *, dtype=None,
                    tokenizer=None, max_shard_bytes: int = 5 * 2**30, base_model: str | None = None) -> Path:
    """Write ``model`` as an HF folder (config.json + safetensors [+ tokenizer]).

    A causal LM is written for ``AutoModelForCausalLM``; a reward model for
    ``AutoModelForSequenceClassification`` (num_labels=1; the normalisation gain folded into
    ``score.weight``, gain and bias in config.json, the raw head in ``reward_head.HEAD_FILE``:
    see :mod:`jaxrlhf.models.reward_head`). ``dtype`` (e.g. ``"bfloat16"``) converts weights on the way out. Only
    process 0 writes in a multi-host run. A model with LoRA adapters is written merged, and its
    adapters as a PEFT folder in ``path/adapter`` (``base_model``: its base_model_name_or_path).
    """
    path = Path(path)
    from jaxrlhf.models.lora import has_lora, merge_lora
    if has_lora(model):  # LoRA: the adapter as a PEFT folder beside the merged model
        from jaxrlhf.peft_io import ADAPTER_DIR, save_adapter
        save_adapter(model, path / ADAPTER_DIR, base_model=base_model)
        model = merge_lora(model)
    config = model.config
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    maps = TENSOR_MAPS[config.model_type](config)
    hf_config = config.to_hf()
    if isinstance(model, ScalarHeadModel):
        maps = _prefixed(_without_lm_head(maps), ("backbone",)) + [score_map(config.hidden_size)]
        arch = hf_config["architectures"][0].replace("ForCausalLM", "").replace("LMHeadModel", "")
        arch = SEQ_CLS_PREFIX.get(config.model_type, arch)
        hf_config.update(architectures=[arch + SEQ_CLS_SUFFIX], num_labels=1,
                         id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    tensors = {}
    for tm in maps:
        hf = tm.to_hf(*(_host_value(flat[p].get_value()) for p in tm.paths))
        tensors[tm.hf_key] = hf.astype(as_dtype(dtype)) if dtype is not None else hf
    head = None
    if isinstance(model, ScalarHeadModel):  # the gain folded into score.weight, the raw head kept beside it
        score = tensors["score.weight"]
        tensors["score.weight"], entries, head = reward_head.export_head(
            _host_value(model.score.get_value()), _host_value(model.normalization.get_value()), score.dtype)
        hf_config.update(entries)
        if model.append_eos is not None:
            hf_config[reward_head.LAYOUT_KEY] = {"append_eos": bool(model.append_eos)}
    if jax.process_index() == 0:
        path.mkdir(parents=True, exist_ok=True)
        hf_config["dtype"] = str(np.dtype(next(iter(tensors.values())).dtype))
        if hf_config.get("pad_token_id") is None and tokenizer is not None:
            hf_config["pad_token_id"] = tokenizer.pad_token_id
        (path / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
        write_safetensors(tensors, path, max_shard_bytes=max_shard_bytes)
        if head is not None:
            save_file(head, path / reward_head.HEAD_FILE, metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    return path


# files AutoTokenizer builds a tokenizer from (tokenizer_config.json alone names a class)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in an HF folder (never runs code from the folder).

    A local folder only: a missing folder or one without tokenizer files is a
    :class:`CheckpointError` naming it (transformers would read the path as a hub repo id)."""
    from transformers import AutoTokenizer
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: tokenizer folder not found (expected a local Hugging Face folder)")
    if not any((folder / name).exists() for name in _TOKENIZER_FILES):
        raise CheckpointError(f"{folder}: no tokenizer files (none of {', '.join(_TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load the tokenizer: {e}") from None
