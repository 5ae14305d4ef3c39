"""A sharded index may only name files inside its own model folder."""

import json

import pytest
from safetensors.numpy import load_file

from hf_models import build_hf_model, tiny_llama_config
from jaxrlhf.models import CheckpointError, from_pretrained


@pytest.mark.parametrize("shard", ["../other/model.safetensors", "sub/../../other/model.safetensors",
                                   "/ABS/other/model.safetensors"])
def test_index_pointing_outside_the_folder_is_refused(tmp_path, shard):
    model = tmp_path / "model"
    build_hf_model(tiny_llama_config(), model)
    other = tmp_path / "other"
    other.mkdir()
    (model / "model.safetensors").rename(other / "model.safetensors")
    shard = shard.replace("/ABS", str(tmp_path))
    keys = load_file(other / "model.safetensors").keys()
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: shard for k in keys}}))
    with pytest.raises(CheckpointError) as err:
        from_pretrained(model)
    message = str(err.value)
    assert "\n" not in message and str(index) in message and "lies outside" in message and repr(shard) in message


def test_index_naming_its_own_files_loads(tmp_path):
    model = tmp_path / "model"
    build_hf_model(tiny_llama_config(), model)
    (model / "model.safetensors").rename(model / "model-00001-of-00001.safetensors")
    keys = load_file(model / "model-00001-of-00001.safetensors").keys()
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "./model-00001-of-00001.safetensors" for k in keys}}))
    from_pretrained(model)
