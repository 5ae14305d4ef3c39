"""Reward model = backbone + scalar head; export as *ForSequenceClassification and reload."""

import json

import numpy as np
import pytest
import torch
import transformers

from hf_models import build_hf_model, tiny_gpt2_config, tiny_llama_config, tiny_qwen2_config
from jaxrlhf.models import reward_model_from_pretrained, save_pretrained
from jaxrlhf.models.heads import last_token_index


def right_padded(lengths=(9, 4, 1), total=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), total), np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, 97, size=n)
        mask[row, :n] = 1
    return ids, mask


def test_last_token_index_left_and_right_padding():
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(last_token_index(mask)), [2, 4, 4])


@pytest.mark.parametrize("config", [
    lambda: tiny_llama_config(num_key_value_heads=2),
    lambda: tiny_qwen2_config(),
    lambda: tiny_gpt2_config(),
], ids=["llama", "qwen2", "gpt2"])
@pytest.mark.slow
def test_export_scores_the_same_in_transformers(config, tmp_path):
    build_hf_model(config(), tmp_path / "base")
    rm = reward_model_from_pretrained(tmp_path / "base", seed=3)
    ids, mask = right_padded()
    ours = np.asarray(rm(ids, mask))
    assert ours.shape == (3,) and np.isfinite(ours).all()
    # a padded row scores like the same tokens unpadded
    np.testing.assert_allclose(ours[1], np.asarray(rm(ids[1:2, :4], mask[1:2, :4]))[0], atol=1e-5)

    rm.normalization.set_value(np.array([2.0, -0.5], np.float32))
    out = save_pretrained(rm, tmp_path / "rm")
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["architectures"][0].endswith("ForSequenceClassification")
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert theirs.config.num_labels == 1
    with torch.no_grad():
        ref = theirs(input_ids=torch.from_numpy(ids).long(),
                     attention_mask=torch.from_numpy(mask).long()).logits[:, 0].numpy()
    # the gain is folded into score.weight (transformers' head has no bias: it is in config.json)
    np.testing.assert_allclose(2.0 * ours, ref, atol=1e-4)
    assert hf_config["reward_normalization"] == {"gain": 2.0, "bias": -0.5}

    again = reward_model_from_pretrained(out)
    np.testing.assert_allclose(np.asarray(again(ids, mask)), ours, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(again.normalization.get_value()), [2.0, -0.5])
    np.testing.assert_allclose(np.asarray(again.normalized(again(ids, mask))), 2.0 * ours - 0.5, atol=1e-5)


@pytest.mark.slow
def test_head_init_scale_and_lm_head_dropped(tmp_path):
    build_hf_model(tiny_llama_config(hidden_size=256, intermediate_size=64), tmp_path)
    rm = reward_model_from_pretrained(tmp_path, seed=0)
    assert rm.backbone.lm_head is None
    score = np.asarray(rm.score.get_value())
    assert abs(score.std() - 1 / np.sqrt(257)) < 0.2 / np.sqrt(257)
    zero = reward_model_from_pretrained(tmp_path, zero_init=True)
    assert not np.asarray(zero.score.get_value()).any()
