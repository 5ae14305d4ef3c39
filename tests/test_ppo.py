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


RULE = '{kind: rule, function: "jaxrlhf.rewards:target_length_tokens", kwargs: {target: 8}}'


def ppo_yaml(tmp_path, model, prompts, *, iterations, batch=32, minibatches=2, lr=3e-3, mesh="1, 1, 1",
             extra="", algorithm="", name=""):
    """An RL config on the toy rule task; ``extra``: more train keys, ``algorithm``: more algorithm keys
    (each line indented two spaces)."""
    d, f, t = mesh.split(",")
    path = tmp_path / f"ppo-{name}{iterations}-{mesh.replace(', ', 'x')}.yaml"
    path.write_text(f"""
model: {{path: {model}}}
mesh: {{data: {d}, fsdp: {f}, tensor: {t}}}
data: {{prompt_files: [{prompts}], max_prompt_length: 12}}
rollout: {{max_new_tokens: 16, temperature: 1.0}}
algorithm:
  kl: {{coef: 0.02}}
  epochs: 4
  minibatches: {minibatches}
{algorithm}
train:
  iterations: {iterations}
  batch_size: {batch}
  actor_optim: {{learning_rate: {lr}, schedule: constant}}
  critic_optim: {{learning_rate: {lr}, schedule: constant}}
{extra}
rewards:
  - {RULE}
""")
    return str(path)


def learned(history, start_below=0.4, end_at_least=0.75):
    start = np.mean([h["score"] for h in history[:3]])
    end = np.mean([h["score"] for h in history[-5:]])
    return start < start_below and end >= end_at_least, (start, end)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "rloo", "dr_grpo"])
def test_critic_free_algorithms_learn_the_rule_reward(setup, tmp_path, stage):
    """The presets (group baselines, no critic) learn the toy task as PPO does."""
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=40, extra="  samples_per_prompt: 4", name=stage)
    assert main([stage, "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    history = json.loads((tmp_path / "run" / "results.json").read_text())["history"]
    ok, scores = learned(history)
    assert ok, scores
    assert "value_loss" not in history[-1] and not (tmp_path / "run" / "critic").exists()
    # a group baseline makes the answers of every prompt sum to zero
    assert all(abs(h["shaped_score"]) < 1e-5 for h in history)
    assert (tmp_path / "run" / "stage").read_text().strip() == stage


@pytest.mark.slow
def test_critic_free_rl_learns_and_resumes_with_a_moving_average(setup, tmp_path):
    model, prompts = setup
    # with the moving average of the weights, which is part of the checkpointed state
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=50, extra="  samples_per_prompt: 4\n  save_every: 10",
                   algorithm="  advantage: rloo\n  averaging: {kind: ema, decay: 0.9}")
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    history = json.loads((tmp_path / "run" / "results.json").read_text())["history"]
    ok, scores = learned(history)
    assert ok, scores
    assert "value_loss" not in history[-1] and "critic_grad_norm" not in history[-1]
    assert all(abs(h["return_mean"]) < 1.0 for h in history)
    assert not (tmp_path / "run" / "critic").exists()
    assert not (tmp_path / "run" / "ppo_value_loss.png").exists()
    # a critic-free state (critic None) checkpoints and resumes: 50 -> 55 iterations, no step logged twice
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}",
                 "--set", "train.iterations=55", "--resume"]) == 0
    steps = [r["step"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "ppo"]
    assert steps == list(range(1, 56))


@pytest.mark.slow
def test_ema_exports_the_moving_average_of_the_actors_weights(setup, tmp_path):
    """final/ = 0.25 * start + 0.25 * after one iteration + 0.5 * after two at decay 0.5; the
    average does not change training (runs of 1 and 2 iterations without it give the iterates)."""
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=2, batch=8, extra="  samples_per_prompt: 4",
                   algorithm="  advantage: rloo")
    weights = {}
    for name, sets in (("one", ["train.iterations=1"]), ("two", []),
                       ("ema", ["algorithm.averaging.kind=ema", "algorithm.averaging.decay=0.5"])):
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
    # export rebuilds the same averaged weights from the checkpoint
    assert main(["export", str(tmp_path / "ema"), "--out", str(tmp_path / "exported")]) == 0
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    for key, value in weights["ema"].items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_group_estimators_need_several_samples_per_prompt(setup, tmp_path, capsys):
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=1)
    assert main(["rloo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}",
                 "--set", "train.samples_per_prompt=1"]) == 2
    assert "needs train.samples_per_prompt >= 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_nan_reward_stops_the_run_after_three_skipped_updates(setup, tmp_path, capsys):
    """A reward function returning NaN: each update is skipped loudly, the third in a row ends the
    run with one line (exit 2), and no checkpoint holds non-finite parameters."""
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=10, batch=8, extra="  save_every: 1")
    rewards = 'rewards=[{kind: rule, function: "rl_rewards:nan_after_two_calls"}]'
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}", "--set", rewards]) == 2
    err = capsys.readouterr().err
    assert "3 consecutive ppo steps with a non-finite" in err and "Traceback" not in err
    from jaxrlhf.checkpoint import Checkpointer
    steps = Checkpointer(tmp_path / "run" / "checkpoints").all_steps()
    assert steps and max(steps) <= 4
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    for key, value in load_file(tmp_path / "exported" / "model.safetensors").items():
        assert np.isfinite(value).all(), key


@pytest.mark.parametrize("function, message", [
    ("no_such_module_xyz:fn", "cannot import module"),
    ("rl_rewards:missing", "has no 'missing'"),
    ("rl_rewards", "package.module:function"),
    ("rl_rewards:wrong_shape", "returned shape [3], expected [8]"),
])
@pytest.mark.slow
def test_bad_rule_functions_are_one_line_errors(setup, tmp_path, capsys, function, message):
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=1, batch=8)
    rewards = f'rewards=[{{kind: rule, function: "{function}"}}]'
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}", "--set", rewards]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert message in err and "Traceback" not in err and len(errors) == 1, err


@pytest.mark.slow
def test_rollout_from_sampler_log_probs_equals_recomputed(setup):
    from jaxrlhf.algorithms import AlgorithmConfig
    from jaxrlhf.stages.rl import init_rl_state
    from jaxrlhf.steps.rl import make_experience
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
    state, _ = init_rl_state(params, buffers, None, None, tx, None, kl_coef=0.1, seed=0, mesh=mesh)
    algo = AlgorithmConfig(advantage="rloo")
    full = np.concatenate([ids, np.asarray(gen.tokens)], axis=1)
    full_mask = np.concatenate([mask, np.asarray(gen.mask)], axis=1)
    # the reference differs from the actor so that the KL terms are not zero
    ref_params = jax.tree.map(lambda x: x * 1.05, params)
    scores = np.array([0.2, 0.9, 0.5, 0.1], np.float32)
    fn = functools.partial(make_experience, state, (ref_params, buffers), full, full_mask, gen.mask, scores,
                           gen.finished, actor_graphdef=graphdef, critic_graphdef=None, prompt_len=5,
                           temperature=0.8, group_size=2, algo=algo)
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
                   extra="  samples_per_prompt: 4")  # 30 answers are not 7.5 prompts x 4
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) != 0


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_dense_reward_model_scores_every_answer_prefix(random_rm):
    from jaxrlhf.rewards import RewardSource

    folder, rm = random_rm
    ids = np.array([[0, 20, 21, 5, 6, 2, 0], [22, 23, 24, 7, 8, 9, 10]], np.int32)  # prompt 3 + response 4
    mask = (ids != 0).astype(np.int32)
    response_mask, finished = mask[:, 3:], np.array([True, False])  # row 1 ran out without EOS
    rule = RewardSource(kind="rule", function="jaxrlhf.rewards:target_length_tokens", kwargs={"target": 2}, weight=0.5)
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
        RewardSource(kind="rule", function="jaxrlhf.rewards:target_length_tokens", dense=True)


@pytest.mark.slow
def test_ppo_with_a_dense_reward_model_logs_the_same_sequence_scores(setup, random_rm, tmp_path):
    """Dense (prefix-shaped) and terminal use of one reward model sample the same first rollout
    and log the same sequence scores; only the per-token credit, hence the update, differs."""
    model, prompts = setup
    folder, _ = random_rm
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=2, extra="  samples_per_prompt: 4",
                   algorithm="  advantage: rloo")
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


@pytest.mark.slow
def test_ppo_trains_on_each_prompts_best_and_worst_samples(setup, tmp_path):
    model, prompts = setup
    cfg = ppo_yaml(tmp_path, model, prompts, iterations=30, batch=64, extra="  samples_per_prompt: 8",
                   algorithm="  advantage: rloo\n  selection: {kind: max_variance, keep: 4}")
    assert main(["ppo", "--config", cfg, "--set", f"output_dir={tmp_path / 'run'}"]) == 0
    history = json.loads((tmp_path / "run" / "results.json").read_text())["history"]
    ok, scores = learned(history)
    assert ok, scores
    # the kept half is centred on its own mean; the score is logged over all 64 samples
    assert all(abs(h["shaped_score"]) < 1e-5 for h in history)
    assert all("trained_score" in h for h in history)


@pytest.mark.slow
def test_held_out_greedy_eval_on_prompts_never_rolled_out(setup, tmp_path):
    """data.eval_fraction holds prompts out of the rollouts; train.eval_every scores greedy answers to
    them with the same rewards, logged as eval and saved as results.json["eval"]."""
    from jaxrlhf.config import load_config
    from jaxrlhf.models import load_tokenizer
    from jaxrlhf.stages.rl import RLConfig, load_rl_prompts

    model, prompts = setup
    cfg_file = ppo_yaml(tmp_path, model, prompts, iterations=4, batch=8,
                        extra="  eval_every: 2\n  eval_batch_size: 8")
    sets = ["data.eval_fraction=0.25"]
    args = ["ppo", "--config", cfg_file, "--set", f"output_dir={tmp_path / 'run'}"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval"]["prompts"] == 16.0  # a quarter of the 64 prompts
    assert results["eval"]["score"] == evals[-1]["score"] and 0.0 <= results["eval"]["score"] <= 1.0
    assert "score" in results["last_rollout"]
    # the held-out rows are not among the rollout prompts
    cfg = load_config(RLConfig, cfg_file, sets)
    examples, rollout, held_out, _ = load_rl_prompts(cfg, load_tokenizer(model))
    assert len(held_out) == 16 and len(rollout) == 48
    assert not set(rollout.index.tolist()) & set(held_out.index.tolist())
