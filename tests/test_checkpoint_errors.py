"""Broken or mismatched HF folders give one-line errors naming the file and key."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_models import build_hf_model, tiny_gpt2_config, tiny_llama_config
from jaxrlhf.models import CheckpointError, from_pretrained, save_pretrained


@pytest.fixture
def llama_dir(tmp_path):
    build_hf_model(tiny_llama_config(num_key_value_heads=2), tmp_path)
    return tmp_path


def rewrite(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def assert_one_line(err: pytest.ExceptionInfo, *needles):
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_tensor(llama_dir):
    path = rewrite(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError) as err:
        from_pretrained(llama_dir)
    assert_one_line(err, str(path), "missing tensor", "'model.layers.1.mlp.up_proj.weight'")


def test_wrong_shape(llama_dir):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 64), np.float32)
    path = rewrite(llama_dir, edit)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(llama_dir)
    assert_one_line(err, str(path), "'model.layers.0.self_attn.k_proj.weight'", "[8, 64]", "[32, 64]")


def test_unexpected_tensor(llama_dir):
    def edit(t):
        t["model.layers.2.mlp.up_proj.weight"] = np.zeros((112, 64), np.float32)
    path = rewrite(llama_dir, edit)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(llama_dir)
    assert_one_line(err, str(path), "unexpected tensor", "'model.layers.2.mlp.up_proj.weight'")


def test_config_disagrees_with_weights(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        from_pretrained(llama_dir)
    assert_one_line(err, "model.safetensors", "missing tensor", "'model.layers.2.")


@pytest.mark.parametrize("model_type", ["mamba", None])
def test_unknown_architecture(llama_dir, model_type):
    config = json.loads((llama_dir / "config.json").read_text())
    config["model_type"] = model_type
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        from_pretrained(llama_dir)
    assert_one_line(err, str(llama_dir / "config.json"), "unknown architecture", repr(model_type))


def test_corrupt_safetensors_and_json(llama_dir):
    (llama_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(llama_dir)
    assert_one_line(err, str(llama_dir / "model.safetensors"), "cannot read")
    (llama_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(llama_dir)
    assert_one_line(err, "config.json", "invalid JSON")


def test_pickle_only_folder_is_refused(tmp_path, llama_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((llama_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(folder)
    assert_one_line(err, "pytorch_model.bin", "pickle")


def test_sharded_export_round_trip(llama_dir, tmp_path):
    model = from_pretrained(llama_dir)
    out = save_pretrained(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = from_pretrained(out)
    ids = np.array([[5, 6, 7]])
    np.testing.assert_array_equal(np.asarray(model(ids, np.ones_like(ids)).logits),
                                  np.asarray(again(ids, np.ones_like(ids)).logits))


def test_bare_backbone_key_names(tmp_path):
    """The original GPT-2 checkpoints name tensors ``h.0...`` rather than ``transformer.h.0...``."""
    build_hf_model(tiny_gpt2_config(), tmp_path)
    rewrite(tmp_path, lambda t: t.update({k.removeprefix("transformer."): t.pop(k) for k in list(t)}))
    model = from_pretrained(tmp_path)
    assert model.config.n_layer == 2


def test_tokenizer_travels_with_the_model(llama_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from jaxrlhf.models import load_tokenizer

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate("abcdefgh")}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    out = save_pretrained(from_pretrained(llama_dir), tmp_path / "with-tok", tokenizer=tok)
    loaded = load_tokenizer(out)
    assert loaded("cab")["input_ids"] == [5, 3, 4]
    assert loaded.pad_token_id == 0 and loaded.eos_token_id == 2


def test_tokenizer_folder_missing_or_empty(tmp_path):
    # transformers would read a missing local path as a hub repo id: a traceback about repo names
    from jaxrlhf.models import load_tokenizer
    with pytest.raises(CheckpointError) as err:
        load_tokenizer(tmp_path / "nope")
    assert_one_line(err, str(tmp_path / "nope"), "not found")
    with pytest.raises(CheckpointError) as err:
        load_tokenizer(tmp_path)
    assert_one_line(err, str(tmp_path), "no tokenizer files")


def test_eval_cli_names_missing_model_folder(tmp_path, capsys):
    from jaxrlhf.cli import main
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"prompt": "请将这段描述浓缩成5字的要义。今天天气很好。"}) + "\n")
    code = main(["eval", "length-control", "--model", str(tmp_path / "final"), "--data", str(data),
                 "--out", str(tmp_path / "out.jsonl")])
    assert code == 2
    assert f"{tmp_path / 'final'}: tokenizer folder not found" in capsys.readouterr().err
