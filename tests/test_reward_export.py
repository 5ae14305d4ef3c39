"""The RM export meets a transformers user with PPO's rewards, and `jaxrlhf score` scores as training
and PPO do (issue 31, defect 8)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from rm_fixtures import ranked_rows, rm_config_yaml, tiny_model_folder, write_jsonl
from jaxrlhf.cli import main
from jaxrlhf.models import CheckpointError, load_tokenizer, reward_model_from_pretrained, save_pretrained
from jaxrlhf.models.reward_head import CONFIG_KEY, HEAD_FILE
from jaxrlhf.scoring import layout_pairs, score_pairs

GAIN_BIAS = [2.5, -0.7]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def exported(base_dir, tmp_path_factory):
    """(the reward model in memory, its export): a random head with a normalisation set."""
    rm = reward_model_from_pretrained(base_dir, seed=3)
    rm.normalization.set_value(jnp.asarray(GAIN_BIAS, jnp.float32))
    rm.append_eos = True
    out = tmp_path_factory.mktemp("export") / "rm"
    save_pretrained(rm, out, tokenizer=load_tokenizer(base_dir))
    return rm, out


def _batch(folder):
    tok = load_tokenizer(folder)
    return layout_pairs(["q: abc", "q: hello there"], ["zz yes", "no"], tok, append_eos=True)


def _transformers_logits(folder, input_ids, attention_mask):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(input_ids).long(),
                     attention_mask=torch.from_numpy(attention_mask).long()).logits[:, 0].numpy()


@pytest.mark.slow
def test_transformers_scores_the_normalised_reward(exported):
    rm, out = exported
    ids, mask = _batch(out)
    raw = np.asarray(rm(ids, mask))
    normalised = np.asarray(rm.normalized(rm(ids, mask)))
    logits = _transformers_logits(out, ids, mask)
    config = json.loads((out / "config.json").read_text())
    assert config[CONFIG_KEY] == {"gain": GAIN_BIAS[0], "bias": pytest.approx(GAIN_BIAS[1])}
    assert config["reward_layout"] == {"append_eos": True}
    # the gain is in score.weight; the bias (transformers' score layer has none) is added from config.json
    np.testing.assert_allclose(logits, GAIN_BIAS[0] * raw, atol=1e-5)
    np.testing.assert_allclose(logits + config[CONFIG_KEY]["bias"], normalised, atol=1e-5)
    assert not np.allclose(logits, raw, atol=1e-3), "the gain must change what transformers outputs"


@pytest.mark.slow
def test_our_loader_restores_the_raw_head_bit_for_bit(exported):
    rm, out = exported
    back = reward_model_from_pretrained(out)
    np.testing.assert_array_equal(np.asarray(back.score.get_value()), np.asarray(rm.score.get_value()))
    np.testing.assert_array_equal(np.asarray(back.normalization.get_value()), np.float32(GAIN_BIAS))
    assert back.append_eos is True
    ids, mask = _batch(out)
    np.testing.assert_array_equal(np.asarray(back(ids, mask)), np.asarray(rm(ids, mask)))
    np.testing.assert_array_equal(np.asarray(back.normalized(back(ids, mask))),
                                  np.asarray(rm.normalized(rm(ids, mask))))
    # and the re-export of the loaded model is the same folder, tensor for tensor
    again = out.parent / "again"
    save_pretrained(back, again)
    for name in ("model.safetensors", HEAD_FILE):
        first, second = load_file(out / name), load_file(again / name)
        assert first.keys() == second.keys()
        for key in first:
            np.testing.assert_array_equal(first[key], second[key], err_msg=f"{name}:{key}")


@pytest.mark.slow
def test_without_the_raw_head_file_the_gain_is_divided_out(exported, tmp_path):
    import shutil
    rm, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / HEAD_FILE).unlink()
    back = reward_model_from_pretrained(copy)
    np.testing.assert_allclose(np.asarray(back.score.get_value()), np.asarray(rm.score.get_value()), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.normalization.get_value()), np.float32(GAIN_BIAS))


@pytest.mark.slow
def test_a_head_trained_further_elsewhere_is_refused(exported, tmp_path):
    import shutil
    _, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    tensors = load_file(copy / "model.safetensors")
    tensors["score.weight"] = tensors["score.weight"] + 0.01
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not the gain .* raw head") as e:
        reward_model_from_pretrained(copy)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_score_equals_rm_eval_rewards_and_ppo_scorer(base_dir, tmp_path, caplog):
    """`jaxrlhf score` on the RM's own eval rows gives the rewards the RM stage computed for them
    (its tokenisation, its scoring function) and the rewards PPO's scorer gives the same tokens."""
    from jaxrlhf.config import load_config
    from jaxrlhf.rewards import RewardSource
    from jaxrlhf.sharding import MeshConfig, make_mesh
    from jaxrlhf.stages.ppo_scoring import Scorer
    from jaxrlhf.stages.rm import RMConfig, load_data
    from jaxrlhf.steps.rm import score_responses

    train = write_jsonl(ranked_rows(40, k=3, seed=1), tmp_path / "train.jsonl")
    held_out = ranked_rows(6, k=3, seed=2)
    eval_file = write_jsonl(held_out, tmp_path / "eval.jsonl")
    cfg_file = rm_config_yaml(tmp_path, base_dir, train)
    assert main(["rm", "--config", cfg_file, "--set", "train.max_steps=3", "--set", f"data.eval_files=[{eval_file}]"]) == 0
    final = tmp_path / "run" / "final"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    norm = results["reward_normalization"]
    assert norm["eval_answers"] == 18 and "fewer than 32" in norm["warning"]
    assert any("fewer than 32" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)

    # the RM stage's eval rewards: its own tokenised eval rows through its scoring function
    cfg = load_config(RMConfig, cfg_file, [f"data.eval_files=[{eval_file}]"])
    _, eval_data, _ = load_data(cfg, load_tokenizer(base_dir))
    rm = reward_model_from_pretrained(final)
    graphdef, params, buffers = nnx.split(rm, nnx.Param, ...)
    stage_raw = np.asarray(score_responses(params, buffers, graphdef, eval_data.input_ids,
                                           eval_data.attention_mask)).reshape(-1)  # [N * K], K = 3 everywhere

    rows = [{"prompt": r["prompt"], "completion": a[0], "limit": 3} for r in held_out for a in r["response"]]
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(final), "--data", str(data), "--out", str(out), "--batch-size", "4"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["limit"] for s in scored] == [3] * len(rows)  # other fields kept
    raw = np.asarray([s["raw_reward"] for s in scored])
    reward = np.asarray([s["reward"] for s in scored])
    np.testing.assert_allclose(raw, stage_raw, atol=1e-5)
    np.testing.assert_allclose(reward, norm["gain"] * stage_raw + norm["bias"], atol=1e-5)
    np.testing.assert_allclose([reward.mean(), reward.std()], [0.0, 1.0], atol=1e-4)  # eval rewards normalised

    # PPO's scorer on the same tokens: the prompt left-padded, the answer and EOS after it
    tok = load_tokenizer(final)
    prompt_len, answer_len = 16, 16
    prompt_ids = tok([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    answer_ids = tok([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
    n = len(rows)
    input_ids = np.zeros((n, prompt_len + answer_len), np.int32)
    attention_mask = np.zeros_like(input_ids)
    response_mask = np.zeros((n, answer_len), np.int32)
    for i, (p, a) in enumerate(zip(prompt_ids, answer_ids)):
        a = a + [tok.eos_token_id]
        input_ids[i, prompt_len - len(p):prompt_len] = p
        input_ids[i, prompt_len:prompt_len + len(a)] = a
        attention_mask[i, prompt_len - len(p):prompt_len + len(a)] = 1
        response_mask[i, :len(a)] = 1
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    scorer = Scorer([RewardSource(path=str(final))], tokenizer=tok, policy_vocab=rm.config.vocab_size, mesh=mesh,
                    dtype="float32")
    ppo = scorer(jnp.asarray(input_ids), jnp.asarray(attention_mask), prompt_len, response_mask,
                 np.ones(n, bool), [r["prompt"] for r in rows], [{}] * n)
    np.testing.assert_allclose(ppo.total, reward, atol=1e-5)

    # the Python call gives the same numbers
    direct = score_pairs(final, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    np.testing.assert_allclose(direct.reward, reward, atol=1e-6)


def test_score_bad_input_is_one_line(exported, base_dir, tmp_path, capsys):
    _, out = exported
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "q: a", "completion": "b"}\n{"prompt": "q: c"}\n')
    assert main(["score", str(out), "--data", str(data), "--out", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{data}:2: missing answer" in err
    # a causal LM folder is no reward model (its score head would be random)
    data.write_text('{"prompt": "q: a", "completion": "b"}\n')
    assert main(["score", str(base_dir), "--data", str(data), "--out", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a reward model" in err
