"""PPO end to end: sampler/trainer log-prob agreement, learning a rule reward, sharded ==
single device, SIGKILL + resume == uninterrupted."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from rm_fixtures import copy_rows, tiny_model_folder, write_jsonl
from jaxrlhf.cli import main
from jaxrlhf.generate import SamplingConfig, generate
from jaxrlhf.losses import token_log_probs
from jaxrlhf.models import from_pretrained


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    model = tiny_model_folder(root / "model")
    prompts = write_jsonl([{"prompt": r["prompt"]} for r in copy_rows(64)], root / "prompts.jsonl")
    return model, prompts


@pytest.fixture(scope="module")
def random_rm(setup, tmp_path_factory):
    """A randomly initialised reward model on the tiny policy's backbone: (folder, model)."""
    from jaxrlhf.models import reward_model_from_pretrained, save_pretrained

    folder = tmp_path_factory.mktemp("ppo-rm") / "rm"
    save_pretrained(reward_model_from_pretrained(setup[0], seed=2), folder)
    return folder, reward_model_from_pretrained(folder)


def score_rollout(sources, rm, ids, mask, response_mask, finished):
    """The Scorer's ScoredBatch for a 2-row rollout whose prompts are 3 tokens."""
    from jaxrlhf.sharding import MeshConfig, make_mesh
    from jaxrlhf.stages.ppo_scoring import Scorer
    from rm_fixtures import char_tokenizer

    scorer = Scorer(sources, tokenizer=char_tokenizer(), policy_vocab=rm.config.vocab_size,
                    mesh=make_mesh(MeshConfig(1, 1, 1)), dtype="float32")
    return scorer(jax.numpy.asarray(ids), jax.numpy.asarray(mask), 3, response_mask, finished, ["a", "b"], [{}, {}])


def ppo_yaml(tmp_path, model, prompts, *, iterations, batch=32, minibatches=2, lr=3e-3, mesh="1, 1, 1",
             extra=""):
    d, f, t = mesh.split(",")
    path = tmp_path / f"ppo-{iterations}-{mesh.replace(', ', 'x')}.yaml"
    path.write_text(f"""
model: {{path: {model}}}
mesh: {{data: {d}, fsdp: {f}, tensor: {t}}}
data: {{prompt_files: [{prompts}], max_prompt_length: 12}}
rollout: {{max_new_tokens: 16, temperature: 1.0}}
kl: {{coef: 0.02}}
train:
  iterations: {iterations}
  batch_size: {batch}
  epochs: 4
  minibatches: {minibatches}
  actor_optim: {{learning_rate: {lr}, schedule: constant}}
  critic_optim: {{learning_rate: {lr}, schedule: constant}}
{extra}
rewards:
  - {{kind: rule, name: target_length_tokens, kwargs: {{target: 8}}}}
""")
    return str(path)


def test_sampler_log_probs_equal_trainer_log_probs(setup):
    model_dir, _ = setup
    model = from_pretrained(model_dir)
    graphdef, state = nnx.split(model)
    ids = np.array([[0, 0, 20, 21, 22], [0, 23, 24, 25, 26], [27, 28, 29, 30, 4]], np.int32)
    mask = (ids != 0).astype(np.int32)
    for temperature in (1.0, 0.7):
        config = SamplingConfig(max_new_tokens=10, temperature=temperature)
        gen = jax.jit(functools.partial(generate, graphdef, config=config, eos_id=2, pad_id=0))(
            state, ids, mask, jax.random.key(3))
        full = np.concatenate([ids, np.asarray(gen.tokens)], axis=1)
        full_mask = np.concatenate([mask, np.asarray(gen.mask)], axis=1)
        recomputed = np.asarray(token_log_probs(model(full, full_mask).logits, full, temperature))[:, 5:]
        valid = np.asarray(gen.mask).astype(bool)
        assert valid.sum() > 10
        np.testing.assert_allclose(np.asarray(gen.log_probs)[valid], recomputed[valid], atol=1e-5)


def test_group_sampling_equals_sampling_repeated_prompts(setup):
    """generate(group=g) prefills each prompt once and repeats its cache: the same rows,
    tokens and log-probs as generating from np.repeat(prompts, g) with the same key."""
    model_dir, _ = setup
    graphdef, state = nnx.split(from_pretrained(model_dir))
    ids = np.array([[0, 0, 20, 21, 22], [0, 23, 24, 25, 26], [27, 28, 29, 30, 4]], np.int32)
    mask = (ids != 0).astype(np.int32)
    for temperature in (0.0, 1.0):
        sample = jax.jit(functools.partial(generate, graphdef, config=SamplingConfig(max_new_tokens=12,
                                                                                     temperature=temperature),
                                           eos_id=2, pad_id=0), static_argnames="group")
        grouped = sample(state, ids, mask, jax.random.key(5), group=4)
        repeated = sample(state, np.repeat(ids, 4, axis=0), np.repeat(mask, 4, axis=0), jax.random.key(5))
        assert grouped.tokens.shape == (12, 12)
        np.testing.assert_array_equal(np.asarray(grouped.tokens), np.asarray(repeated.tokens))
        np.testing.assert_array_equal(np.asarray(grouped.mask), np.asarray(repeated.mask))
        np.testing.assert_allclose(np.asarray(grouped.log_probs), np.asarray(repeated.log_probs), atol=1e-5)
        if temperature:  # a prompt's samples differ from each other
            assert len({tuple(row) for row in np.asarray(grouped.tokens)[:4]}) > 1


def test_ppo_learns_a_rule_reward(setup, tmp_path):
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=40)
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    history = results["history"]
    start = np.mean([h["score"] for h in history[:3]])
    end = np.mean([h["score"] for h in history[-5:]])
    assert start < 0.4 and end >= 0.75, (start, end)
    kls = [h["kl"] for h in history]
    assert np.isfinite(kls).all() and max(kls) > 0
    for key in ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "kl_coef",
                "rollout_seconds", "train_seconds", "generated_tokens_per_second", "response_length"):
        assert key in history[-1]
    for name in ("score", "kl", "policy_loss", "value_loss"):
        assert (tmp_path / "run" / f"ppo_{name}.png").stat().st_size > 1000
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_ppo_with_several_samples_per_prompt_and_a_group_baseline_learns(setup, tmp_path):
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=30,
                   extra="  samples_per_prompt: 4\n  group_baseline: true")
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    history = json.loads((tmp_path / "run" / "results.json").read_text())["history"]
    start = np.mean([h["score"] for h in history[:3]])
    end = np.mean([h["score"] for h in history[-5:]])
    assert start < 0.4 and end >= 0.75, (start, end)
    # the group-centred score has mean 0 in every batch
    assert all(abs(h["shaped_score"]) < 1e-5 for h in history)


def test_critic_free_ppo_learns_and_resumes_without_a_value_model(setup, tmp_path):
    model, prompts = setup
    # with the moving average of the weights, which is part of the checkpointed state
    extra = "  samples_per_prompt: 4\n  group_baseline: true\n  use_critic: false\n  save_every: 10\n  ema_decay: 0.9"
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=50, extra=extra)
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    history = json.loads((tmp_path / "run" / "results.json").read_text())["history"]
    start = np.mean([h["score"] for h in history[:3]])
    end = np.mean([h["score"] for h in history[-5:]])
    assert start < 0.4 and end >= 0.75, (start, end)
    assert "value_loss" not in history[-1] and "critic_grad_norm" not in history[-1]
    assert all(abs(h["return_mean"]) < 1.0 for h in history)
    assert not (tmp_path / "run" / "critic").exists()
    assert not (tmp_path / "run" / "ppo_value_loss.png").exists()
    # a critic-free state (critic None) checkpoints and resumes: 50 -> 55 iterations
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}",
                 "--set", "train.iterations=55", "--resume"]) == 0


def test_ema_decay_exports_the_moving_average_of_the_actors_weights(setup, tmp_path):
    """final/ = 0.25 * start + 0.25 * after one iteration + 0.5 * after two at decay 0.5; the
    average does not change training (runs of 1 and 2 iterations without it give the iterates)."""
    model, prompts = setup
    extra = "  samples_per_prompt: 4\n  group_baseline: true\n  use_critic: false"
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=2, batch=8, extra=extra)
    weights = {}
    for name, sets in (("one", ["train.iterations=1"]), ("two", []), ("ema", ["train.ema_decay=0.5"])):
        args = ["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / name}"]
        assert main(args + [a for s in sets for a in ("--set", s)]) == 0
        weights[name] = load_file(tmp_path / name / "final" / "model.safetensors")
    results = json.loads((tmp_path / "ema" / "results.json").read_text())
    assert results["final_weights"] == "ema 0.5"
    start = load_file(os.path.join(model, "model.safetensors"))
    moved = 0
    for key, value in weights["ema"].items():
        expected = 0.25 * start[key] + 0.25 * weights["one"][key] + 0.5 * weights["two"][key]
        np.testing.assert_allclose(value, expected, atol=1e-6, err_msg=key)
        moved += not np.allclose(weights["two"][key], start[key])
    assert moved > 0  # the policy did train


def test_critic_free_ppo_needs_the_group_baseline(setup, tmp_path):
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=1, extra="  use_critic: false")
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) != 0


def test_group_std_scale_needs_the_group_baseline():
    from jaxrlhf.stages.ppo import PPOTrainConfig

    with pytest.raises(ValueError, match="needs group_baseline=true"):
        PPOTrainConfig(samples_per_prompt=4, group_std_scale=True)
    assert PPOTrainConfig(samples_per_prompt=4, group_baseline=True, group_std_scale=True).group_std_scale


def test_rollout_from_sampler_log_probs_equals_recomputed(setup):
    from jaxrlhf.steps.ppo import PPOHyper, make_rollout
    from jaxrlhf.stages.ppo import init_ppo_state
    from jaxrlhf.sharding import MeshConfig, make_mesh
    from jaxrlhf.steps.common import OptimConfig, make_optimizer

    model_dir, _ = setup
    model = from_pretrained(model_dir)
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
    ids = np.array([[0, 0, 20, 21, 22], [0, 23, 24, 25, 26], [27, 28, 29, 30, 4], [0, 0, 0, 31, 32]], np.int32)
    mask = (ids != 0).astype(np.int32)
    gen = jax.jit(functools.partial(generate, graphdef, config=SamplingConfig(max_new_tokens=8, temperature=0.8),
                                    eos_id=2, pad_id=0))((params, buffers), ids, mask, jax.random.key(5))
    tx = make_optimizer(OptimConfig(learning_rate=1e-3), 1)
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    state, _ = init_ppo_state(params, buffers, None, None, tx, None, kl_coef=0.1, seed=0, mesh=mesh)
    hyper = PPOHyper(temperature=0.8, group_size=2, group_baseline=True)
    full = np.concatenate([ids, np.asarray(gen.tokens)], axis=1)
    full_mask = np.concatenate([mask, np.asarray(gen.mask)], axis=1)
    # the reference differs from the actor so that the KL terms are not zero
    ref_params = jax.tree.map(lambda x: x * 1.05, params)
    scores = np.array([0.2, 0.9, 0.5, 0.1], np.float32)
    fn = functools.partial(make_rollout, state, (ref_params, buffers), full, full_mask, gen.mask, scores,
                           gen.finished, actor_graphdef=graphdef, critic_graphdef=None, prompt_len=5, hyper=hyper)
    recomputed, m1 = fn(None)
    reused, m2 = fn(gen.log_probs)
    for name in ("old_log_probs", "advantages", "returns"):
        np.testing.assert_allclose(getattr(reused, name), getattr(recomputed, name), atol=1e-5, err_msg=name)
    assert np.all(np.asarray(reused.values) == 0)
    np.testing.assert_allclose(m2["kl"], m1["kl"], atol=1e-5)
    assert m1["entropy"] > 0 and m2["entropy"] > 0  # exact vs Monte-Carlo: both positive, not equal


def test_samples_per_prompt_must_divide_the_batch(setup, tmp_path):
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=1, batch=30, minibatches=2,
                   extra="  samples_per_prompt: 4")
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) != 0


def test_sharded_iteration_equals_single_device(setup, tmp_path):
    model, prompts = setup
    finals = []
    for mesh in ("1, 1, 1", "2, 2, 2"):
        out = tmp_path / mesh.replace(", ", "x")
        cfg = ppo_yaml(tmp_path, model, prompts, iterations=2, batch=8, lr=1e-3, mesh=mesh)
        assert main(["ppo", "--config", cfg, "--set", f"output_dir={out}"]) == 0
        finals.append((load_file(out / "final" / "model.safetensors"),
                       json.loads((out / "results.json").read_text())["history"]))
    (single, h1), (sharded, h8) = finals
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], atol=1e-5, err_msg=key)
    for a, b in zip(h1, h8):
        np.testing.assert_allclose([a["score"], a["kl"], a["policy_loss"]],
                                   [b["score"], b["kl"], b["policy_loss"]], atol=1e-5)


def test_sigkill_and_resume_equals_uninterrupted(setup, tmp_path):
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=60, batch=8, extra="  save_every: 5")
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'straight'}"]) == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "jaxrlhf.cli", "ppo", "--config", cfg,
                             "--set", f"output_dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpts = killed / "checkpoints"
        if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 10 for p in ckpts.iterdir()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={killed}", "--resume"]) == 0
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(killed / "final" / "model.safetensors")
    for key in straight:
        np.testing.assert_allclose(resumed[key], straight[key], atol=1e-6, err_msg=key)


def test_generate_command_keeps_every_row(setup, tmp_path, capsys):
    model, _ = setup
    rows = [{"prompt": "q: abc ", "limit": 3}, {"prompt": "q: zzz yy "}, {"prompt": "q: é€ unseen"}]
    prompts = write_jsonl(rows, tmp_path / "p.jsonl")
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(model), "--prompts", str(prompts), "--out", str(out),
                 "--max-new-tokens", "6", "--batch-size", "2", "--mesh", "data=1,fsdp=1,tensor=1"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["prompt"] for w in written] == [r["prompt"] for r in rows]
    assert written[0]["limit"] == 3 and all(0 <= w["response_tokens"] <= 6 for w in written)
    assert "wrote 3 rows" in capsys.readouterr().out


def test_reward_model_scorer_reads_at_eos_or_last_answer_token(random_rm):
    from jaxrlhf.rewards import RewardSource

    folder, rm = random_rm
    ids = np.array([[0, 20, 21, 5, 6, 2, 0], [22, 23, 24, 7, 8, 9, 2]], np.int32)  # prompt 3 + response 4
    mask = (ids != 0).astype(np.int32)
    mask[0, 6] = 0
    response_mask, finished = mask[:, 3:], np.array([True, True])
    scores = {}
    for include_eos in (True, False):
        scored = score_rollout([RewardSource(kind="model", path=str(folder), normalize=False, include_eos=include_eos)],
                               rm, ids, mask, response_mask, finished)
        scores[include_eos] = scored.total
        np.testing.assert_array_equal(scored.terminal, scored.total)
        assert scored.dense is None
    np.testing.assert_allclose(scores[True], np.asarray(rm(ids, mask)), atol=1e-5)
    without_eos = mask.copy()
    without_eos[0, 5], without_eos[1, 6] = 0, 0
    np.testing.assert_allclose(scores[False], np.asarray(rm(ids, without_eos)), atol=1e-5)


def test_dense_reward_model_scores_every_answer_prefix(random_rm):
    from jaxrlhf.rewards import RewardSource

    folder, rm = random_rm
    ids = np.array([[0, 20, 21, 5, 6, 2, 0], [22, 23, 24, 7, 8, 9, 10]], np.int32)  # prompt 3 + response 4
    mask = (ids != 0).astype(np.int32)
    response_mask, finished = mask[:, 3:], np.array([True, False])  # row 1 ran out without EOS
    rule = RewardSource(kind="rule", name="target_length_tokens", kwargs={"target": 2}, weight=0.5)
    scored, plain = (score_rollout([RewardSource(kind="model", path=str(folder), normalize=False, include_eos=False,
                                                 dense=dense, weight=2.0), rule], rm, ids, mask, response_mask, finished)
                     for dense in (True, False))
    np.testing.assert_allclose(scored.total, plain.total, atol=1e-5)  # the same sequence scores
    rule_part = 0.5 * np.array([1.0, 0.0])  # row 0: 2 tokens then EOS; row 1: no EOS
    np.testing.assert_allclose(scored.terminal, rule_part, atol=1e-6)  # only the rule is paid at the end
    # each answer token earns 2 x (score of the prefix through it - score of the prefix before it)
    prefix = np.array([[float(rm(ids[r:r + 1, :j], mask[r:r + 1, :j])[0]) for j in range(3, 8)] for r in range(2)])
    dense = np.asarray(scored.dense)
    np.testing.assert_allclose(dense[0], [2 * (prefix[0, 1] - prefix[0, 0]), 2 * (prefix[0, 2] - prefix[0, 1]), 0, 0],
                               atol=1e-5)
    np.testing.assert_allclose(dense[1], 2 * np.diff(prefix[1]), atol=1e-5)
    np.testing.assert_allclose(dense.sum(axis=1) + 2 * prefix[:, 0] + rule_part, scored.total, atol=1e-5)


def test_dense_reward_needs_a_reward_model_read_without_eos():
    from jaxrlhf.rewards import RewardSource

    with pytest.raises(ValueError, match="include_eos: false"):
        RewardSource(kind="model", path="rm", dense=True)
    with pytest.raises(ValueError, match="kind: model"):
        RewardSource(kind="rule", name="length_control", dense=True)


def test_ppo_with_a_dense_reward_model_logs_the_same_sequence_scores(setup, random_rm, tmp_path):
    """Dense (prefix-shaped) and terminal use of one reward model sample the same first rollout
    and log the same sequence scores; only the per-token credit, hence the update, differs."""
    model, prompts = setup
    folder, _ = random_rm
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=2, extra="  samples_per_prompt: 4\n  group_baseline: true")
    histories = {}
    for dense in ("false", "true"):
        out = tmp_path / f"run-{dense}"
        rewards = f"rewards=[{{kind: model, path: {folder}, include_eos: false, dense: {dense}}}]"
        assert main(["ppo", "--config", cfg, "--set", f"output_dir={out}", "--set", rewards]) == 0
        histories[dense] = json.loads((out / "results.json").read_text())["history"]
    plain, dense = histories["false"][0], histories["true"][0]
    assert dense["score"] == pytest.approx(plain["score"], abs=1e-5)
    assert dense["score_std"] == pytest.approx(plain["score_std"], abs=1e-5)
    assert dense["response_length"] == plain["response_length"]
    assert abs(plain["shaped_score"]) < 1e-5  # group-centred RM score at the last token
    assert dense["policy_loss"] != pytest.approx(plain["policy_loss"], abs=1e-6)
    assert np.isfinite([h["policy_loss"] for h in histories["true"]]).all()


def test_ppo_trains_on_each_prompts_best_and_worst_samples(setup, tmp_path):
    model, prompts = setup
    extra = "  samples_per_prompt: 8\n  keep_per_prompt: 4\n  group_baseline: true"
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=30, batch=64, extra=extra)
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    history = json.loads((tmp_path / "run" / "results.json").read_text())["history"]
    start = np.mean([h["score"] for h in history[:3]])
    end = np.mean([h["score"] for h in history[-5:]])
    assert start < 0.4 and end >= 0.75, (start, end)
    # the kept half is centred on its own mean; the score is logged over all 64 samples
    assert all(abs(h["shaped_score"]) < 1e-5 for h in history)
    assert all("trained_score" in h for h in history)
