"""``jaxrlhf ppo``: RLHF with PPO against a learned reward model and/or rule rewards.

Per iteration: rollout (KV-cache sampler) -> score (reward model on the same token ids,
rules on the decoded text) -> per-token KL penalty to the frozen reference -> GAE ->
several epochs of clipped policy and value updates over minibatches -> adaptive KL.
Rollout, scoring and training are separate functions; the loop here only sequences them,
logs, plots and checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jaxrlhf.config import ConfigError, ModelConfig
from jaxrlhf.generate import SamplingConfig
from jaxrlhf.rewards import RewardSource
from jaxrlhf.sharding import MeshConfig
from jaxrlhf.stages.ppo_scoring import Scorer
from jaxrlhf.steps.common import OptimConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PPODataConfig:
    prompt_files: tuple[str, ...] = ()
    max_prompt_length: int = 256
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class KLConfig:
    coef: float = 0.05  # beta, the initial KL coefficient
    target: float | None = None  # adaptive: the per-sequence KL to aim for; None: fixed beta
    horizon: float = 10000.0
    estimator: str = "k1"  # k1 | k3

    def __post_init__(self):
        if self.estimator not in ("k1", "k3"):
            raise ValueError(f"estimator must be k1 or k3, got {self.estimator!r}")


@dataclasses.dataclass(frozen=True)
class PPOTrainConfig:
    iterations: int = 100
    batch_size: int = 16  # responses per iteration (batch_size / samples_per_prompt prompts)
    samples_per_prompt: int = 1  # responses sampled from each prompt
    group_baseline: bool = False  # score minus the mean of the prompt's other responses (RLOO)
    # and divided by the std of the prompt's scores (GRPO): every prompt's contrast counts alike,
    # however finely the reward separates its answers
    group_std_scale: bool = False
    use_critic: bool = True  # False: no value model (needs group_baseline); saves ~40% of a step
    recompute_log_probs: bool = False  # True: the trainer recomputes the sampler's log-probs
    # [lo, hi]: a prompt's samples continue one shared prefix, a first sample cut at a fraction
    # U(lo, hi) of its length; only the continuations are trained (stages/ppo_branch.py)
    branch_at: tuple[float, float] | None = None
    # train on this many of each prompt's samples: its keep/2 best and keep/2 worst by score
    # (max-variance down-sampling); None trains on all of them. batch_size counts samples drawn
    keep_per_prompt: int | None = None
    # the exported policy (final/) is the exponential moving average of the actor's weights
    # over iterations, ema <- d * ema + (1 - d) * actor after each; None exports the last iterate
    ema_decay: float | None = None
    epochs: int = 4  # PPO epochs over each rollout
    minibatches: int = 4
    clip_ratio: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = -1.0
    score_clip: float = 0.0
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    actor_optim: OptimConfig = OptimConfig(learning_rate=1e-6, schedule="constant")
    critic_optim: OptimConfig = OptimConfig(learning_rate=1e-5, schedule="constant")

    def __post_init__(self):
        if self.samples_per_prompt < 1 or self.batch_size % self.samples_per_prompt:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of samples_per_prompt "
                             f"{self.samples_per_prompt}")
        if self.group_baseline and self.samples_per_prompt < 2:
            raise ValueError("group_baseline compares a prompt's responses: it needs samples_per_prompt >= 2")
        if self.group_std_scale and not self.group_baseline:
            raise ValueError("group_std_scale divides the group-centred scores by the group's std: "
                             "it needs group_baseline=true")
        if self.branch_at is not None:
            if len(self.branch_at) != 2 or not 0.0 <= self.branch_at[0] < self.branch_at[1] <= 1.0:
                raise ValueError(f"branch_at must be [lo, hi] with 0 <= lo < hi <= 1, got {list(self.branch_at)}")
            if self.samples_per_prompt < 2:
                raise ValueError("branch_at samples several continuations of one prefix: it needs "
                                 "samples_per_prompt >= 2")
        if self.keep_per_prompt is not None:
            k = self.keep_per_prompt
            if k < 2 or k % 2 or k >= self.samples_per_prompt:
                raise ValueError(f"keep_per_prompt must be even, >= 2 and below samples_per_prompt "
                                 f"({self.samples_per_prompt}), got {k}")
            trained = self.batch_size // self.samples_per_prompt * k
            if trained % self.minibatches:
                raise ValueError(f"the {trained} trained answers per iteration (batch_size / samples_per_prompt "
                                 f"x keep_per_prompt) are not a multiple of minibatches {self.minibatches}")
        elif self.batch_size % self.minibatches:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of minibatches {self.minibatches}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (or null for no averaging), got {self.ema_decay}")
        if not self.use_critic and not self.group_baseline:
            raise ValueError("use_critic=false leaves the prompt's other responses as the only baseline: "
                             "it needs group_baseline=true (and samples_per_prompt >= 2)")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    seed: int = 0
    output_dir: str = "runs/ppo"
    tokenizer: str | None = None  # default: model.path
    reference_path: str | None = None  # default: model.path (the SFT policy)
    critic_path: str | None = None  # default: the reward model if there is one, else model.path
    #                                 (unused with train.use_critic false)
    critic_zero_head: bool = True  # value head starts at zero; false keeps a reward model's head
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    data: PPODataConfig = PPODataConfig()
    rollout: SamplingConfig = SamplingConfig(max_new_tokens=64, temperature=1.0)
    kl: KLConfig = KLConfig()
    train: PPOTrainConfig = PPOTrainConfig()
    rewards: tuple[RewardSource, ...] = ()

    def __post_init__(self):
        if not self.model.path:
            raise ValueError("model.path is required: the SFT policy to start from")
        if not self.rewards:
            raise ValueError("rewards is empty: give a reward model ({kind: model, path: ...}) "
                             "and/or rules ({kind: rule, name: ...})")
        if self.rollout.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 for PPO")


# --------------------------------------------------------------------------- the run


def _sample_rollout(sample, params, batch: dict, group: int, key, branch_at, rng: np.random.Generator,
                    pad_id: int):
    """``group`` responses per prompt of ``batch`` (one row per prompt) as a host-side
    :class:`~jaxrlhf.stages.ppo_branch.Branched`, and the shared prefix lengths (None
    unless branched). Plain: independent samples, every token trained. Branched: see
    :mod:`jaxrlhf.stages.ppo_branch`."""
    from jaxrlhf.stages.ppo_branch import Branched, branch_points, branch_prompts, join_branches

    ids, mask = batch["input_ids"], batch["attention_mask"]
    if branch_at is None:
        # each prompt prefilled once, its cache repeated group times
        gen = jax.block_until_ready(sample(params, ids, mask, key, group=group))  # stays on device
        return Branched(gen.tokens, gen.log_probs, gen.mask, gen.mask, gen.finished), None
    first_key, key = jax.random.split(key)
    first = jax.device_get(sample(params, ids, mask, first_key))
    cuts = branch_points(first.mask, first.finished, tuple(branch_at), rng)
    branch_ids, branch_mask = branch_prompts(ids, mask, first.tokens, cuts, pad_id)
    cont = jax.device_get(sample(params, branch_ids, branch_mask, key, group=group))
    cuts = np.repeat(cuts, group)
    return join_branches(np.repeat(first.tokens, group, axis=0), cuts, cont.tokens, cont.log_probs, cont.mask,
                         cont.finished, pad_id), cuts


def init_ppo_state(actor_params, actor_buffers, critic_params, critic_buffers, actor_tx, critic_tx,
                   *, kl_coef: float, seed: int, mesh, ema: bool = False):
    """The PPO state materialised with explicit shardings (params by their logical axes,
    optimizer moments alongside, scalars replicated), and those shardings. ``ema``: the state
    also keeps a float32 moving average of the actor's params, starting at them."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxrlhf.steps.common import init_train_state, train_state_shardings
    from jaxrlhf.steps.ppo import PPOState

    def init():
        return PPOState(iteration=jnp.zeros((), jnp.int32),
                        actor=init_train_state(actor_params, actor_buffers, actor_tx, seed),
                        critic=(None if critic_params is None else
                                init_train_state(critic_params, critic_buffers, critic_tx, seed + 1)),
                        kl_coef=jnp.asarray(kl_coef, jnp.float32),
                        rng=jax.random.key_data(jax.random.key(seed)),
                        ema=(jax.tree.map(lambda p: p.astype(jnp.float32), actor_params) if ema else None))

    abstract = jax.eval_shape(init)
    replicated = NamedSharding(mesh, P())
    actor_sh = train_state_shardings(abstract.actor, mesh, actor_tx)
    shardings = PPOState(iteration=replicated, actor=actor_sh,
                         critic=(None if critic_params is None else
                                 train_state_shardings(abstract.critic, mesh, critic_tx)),
                         kl_coef=replicated, rng=replicated,
                         ema=actor_sh.params if ema else None)  # sharded like the params it averages
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return state, shardings


def run_ppo(cfg: PPOConfig, *, resume: bool = False) -> dict:
    from jaxrlhf.data import batches_per_epoch, iterate_batches, pad_id_of
    from jaxrlhf.data.prompts import load_prompts, prompt_meta, tokenize_prompts
    from jaxrlhf.generate import generate
    from jaxrlhf.loop import MetricsLog, to_floats
    from jaxrlhf.models import from_pretrained, load_tokenizer, reward_model_from_pretrained, save_pretrained
    from jaxrlhf.sharding import make_mesh
    from jaxrlhf.stages.common import prepare_run_dir
    from jaxrlhf.steps.common import make_optimizer
    from jaxrlhf.steps.ppo import PPOHyper, adaptive_kl_coef, make_rollout, max_variance_subset, ppo_update

    out, checkpointer = prepare_run_dir(cfg, resume=resume, stage="ppo")
    mesh = make_mesh(cfg.mesh)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    examples, report = load_prompts(list(cfg.data.prompt_files), tokenizer=tokenizer, strict=cfg.data.strict)
    prompts = tokenize_prompts(examples, tokenizer, max_length=cfg.data.max_prompt_length, report=report)
    log.info("prompts: %s", report.summary())
    group = cfg.train.samples_per_prompt
    prompts_per_iteration = cfg.train.batch_size // group
    per_epoch = batches_per_epoch(len(prompts), prompts_per_iteration)
    if per_epoch == 0:
        raise ConfigError(f"{len(prompts)} prompts are fewer than the {prompts_per_iteration} one "
                          f"iteration needs (train.batch_size / train.samples_per_prompt)")
    eos_id, pad_id = tokenizer.eos_token_id, pad_id_of(tokenizer)
    if eos_id is None:
        raise ConfigError("the tokenizer has no EOS token: PPO needs one to end responses")

    common = dict(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, mesh=mesh)
    actor = from_pretrained(cfg.model.path, remat=cfg.model.remat, **common)
    reference = from_pretrained(cfg.reference_path or cfg.model.path, **common)
    model_rewards = [r for r in cfg.rewards if r.kind == "model"]
    critic_path = cfg.critic_path or (model_rewards[0].path if model_rewards else cfg.model.path)
    critic = None
    if cfg.train.use_critic:
        critic = reward_model_from_pretrained(critic_path, remat=cfg.model.remat, zero_init=True, seed=cfg.seed,
                                              **common)
        if cfg.critic_zero_head:  # a reward model's head predicts scores, not returns: start from zero
            critic.score.set_value(jnp.zeros_like(critic.score.get_value()))
    scorer = Scorer(cfg.rewards, tokenizer=tokenizer, policy_vocab=actor.config.vocab_size,
                    mesh=mesh, dtype=cfg.model.dtype)

    if cfg.train.branch_at is not None and jax.process_count() > 1:
        raise ConfigError("train.branch_at builds the branched prompts on the host: it runs on one host only")
    if cfg.train.keep_per_prompt and jax.process_count() > 1:
        raise ConfigError("train.keep_per_prompt selects rows on the host: it runs on one host only")
    iterations = cfg.train.iterations
    updates = iterations * cfg.train.epochs * cfg.train.minibatches
    actor_tx = make_optimizer(cfg.train.actor_optim, updates)
    critic_tx = make_optimizer(cfg.train.critic_optim, updates) if critic is not None else None
    actor_graphdef, actor_params, actor_buffers = nnx.split(actor, nnx.Param, ...)
    critic_graphdef, critic_params, critic_buffers = (nnx.split(critic, nnx.Param, ...) if critic is not None
                                                      else (None, None, None))
    _, ref_params, ref_buffers = nnx.split(reference, nnx.Param, ...)
    ref = (ref_params, ref_buffers)
    state, state_sh = init_ppo_state(actor_params, actor_buffers, critic_params, critic_buffers,
                                     actor_tx, critic_tx, kl_coef=cfg.kl.coef, seed=cfg.seed, mesh=mesh,
                                     ema=cfg.train.ema_decay is not None)
    if resume and checkpointer.latest_step() is not None:
        state, meta = checkpointer.restore(None, state)
        log.info("resumed at iteration %d", int(state.iteration))

    hyper = PPOHyper(temperature=cfg.rollout.temperature, kl_estimator=cfg.kl.estimator,
                     gamma=cfg.train.gamma, lam=cfg.train.lam, clip_ratio=cfg.train.clip_ratio,
                     clip_value=cfg.train.clip_value, vf_coef=cfg.train.vf_coef,
                     entropy_coef=cfg.train.entropy_coef, epochs=cfg.train.epochs,
                     minibatches=cfg.train.minibatches, whiten_advantages=cfg.train.whiten_advantages,
                     missing_eos_penalty=cfg.train.missing_eos_penalty, score_clip=cfg.train.score_clip,
                     group_size=cfg.train.keep_per_prompt or group, group_baseline=cfg.train.group_baseline,
                     group_std_scale=cfg.train.group_std_scale, ema_decay=cfg.train.ema_decay)
    prompt_len = cfg.data.max_prompt_length
    sample = jax.jit(functools.partial(generate, actor_graphdef, config=cfg.rollout, eos_id=eos_id,
                                       pad_id=pad_id), static_argnames="group")
    rollout_fn = jax.jit(functools.partial(make_rollout, actor_graphdef=actor_graphdef,
                                           critic_graphdef=critic_graphdef, prompt_len=prompt_len,
                                           hyper=hyper))
    update_fn = jax.jit(functools.partial(ppo_update, actor_graphdef=actor_graphdef,
                                          critic_graphdef=critic_graphdef, actor_tx=actor_tx,
                                          critic_tx=critic_tx, prompt_len=prompt_len, hyper=hyper),
                        out_shardings=(state_sh, None), donate_argnums=0)

    metrics_log = MetricsLog(out)
    history: list[dict] = []
    start = int(state.iteration)
    bar = tqdm(total=iterations, initial=start, desc="ppo", unit="it", disable=jax.process_index() != 0)
    base_key = jax.random.key(cfg.seed)
    for it in range(start, iterations):
        epoch, index = divmod(it, per_epoch)
        _, batch = next(iterate_batches(prompts, prompts_per_iteration, seed=cfg.seed, epoch=epoch,
                                        start_batch=index))
        t0 = time.perf_counter()
        with jax.set_mesh(mesh):
            gen, cuts = _sample_rollout(sample, (state.actor.params, state.actor.buffers), batch, group,
                                        jax.random.fold_in(base_key, it), cfg.train.branch_at,
                                        np.random.default_rng([cfg.seed, it]), pad_id)
        batch = {k: np.repeat(v, group, axis=0) for k, v in batch.items()}  # a prompt's samples are adjacent
        t1 = time.perf_counter()
        input_ids = jnp.concatenate([jnp.asarray(batch["input_ids"]), gen.tokens], axis=1)
        attention_mask = jnp.concatenate([jnp.asarray(batch["attention_mask"]), gen.mask], axis=1)
        texts = [examples[i].prompt for i in batch["index"]]
        with jax.set_mesh(mesh):
            scored = scorer(input_ids, attention_mask, prompt_len, gen.mask, gen.finished, texts,
                            prompt_meta(examples, batch["index"]))
        sampled_metrics = {"score": float(scored.total.mean()), "score_std": float(scored.total.std()),
                           "response_length": float(gen.mask.sum(axis=1).mean())}
        if cfg.train.keep_per_prompt:
            keep = max_variance_subset(scored.total, group, cfg.train.keep_per_prompt)
            gen, scored = gen.take(keep), scored.take(keep)
            input_ids, attention_mask = input_ids[keep], attention_mask[keep]
            cuts = None if cuts is None else cuts[keep]
            sampled_metrics["trained_score"] = float(scored.total.mean())
        t2 = time.perf_counter()
        with jax.set_mesh(mesh):
            rollout, rollout_metrics = rollout_fn(state, ref, input_ids, attention_mask, jnp.asarray(gen.train_mask),
                                                  jnp.asarray(scored.terminal), jnp.asarray(gen.finished),
                                                  None if cfg.train.recompute_log_probs else jnp.asarray(gen.log_probs),
                                                  scored.dense)
            state, train_metrics = update_fn(state, rollout)
            kl = rollout_metrics["kl"]
            state = state.replace(kl_coef=adaptive_kl_coef(state.kl_coef, kl, target=cfg.kl.target,
                                                           horizon=cfg.kl.horizon,
                                                           batch_size=cfg.train.batch_size))
            train_metrics = jax.block_until_ready(train_metrics)
        t3 = time.perf_counter()
        metrics = {**to_floats(rollout_metrics), **to_floats(train_metrics), **scored.metrics,
                   # over every sampled answer, dense parts included (rollout_metrics saw the terminal
                   # part of the trained ones)
                   **sampled_metrics,
                   "rollout_seconds": t1 - t0, "score_seconds": t2 - t1, "train_seconds": t3 - t2,
                   "generated_tokens_per_second": float(gen.train_mask.sum()) / max(t1 - t0, 1e-9)}
        if cuts is not None:  # the shared prefix
            metrics.update(branch_prefix_length=float(cuts.mean()))
        if metrics["skipped"] > 0:
            log.warning("iteration %d: non-finite loss or gradient; those updates were skipped", it + 1)
        history.append({"iteration": it + 1, **metrics})
        if (it + 1) % cfg.train.log_every == 0 or it + 1 == iterations:
            metrics_log.write(it + 1, metrics, "ppo")
        bar.update(1)
        bar.set_postfix(score=f"{metrics['score']:.3f}", kl=f"{metrics['kl']:.3f}")
        if cfg.train.save_every and (it + 1) % cfg.train.save_every == 0 and it + 1 < iterations:
            checkpointer.save(it + 1, state, {"iteration": it + 1})
    bar.close()
    metrics_log.close()
    if checkpointer.latest_step() != iterations:
        checkpointer.save(iterations, state, {"iteration": iterations})
    checkpointer.wait()

    final_params = state.actor.params
    if state.ema is not None:  # the averaged weights, in the params' own dtypes
        final_params = jax.tree.map(lambda e, p: e.astype(p.dtype), state.ema, state.actor.params)
        log.info("final/ holds the moving average of the actor's weights (decay %g)", cfg.train.ema_decay)
    final = nnx.merge(actor_graphdef, final_params, state.actor.buffers)
    save_pretrained(final, out / "final", tokenizer=tokenizer)
    if state.critic is not None:
        save_pretrained(nnx.merge(critic_graphdef, state.critic.params, state.critic.buffers), out / "critic")
    results = {"steps": iterations, "iterations": iterations, "history": history,
               "data": {"prompts": report.as_dict()}, "final_model": str(out / "final"),
               "final_weights": "last iterate" if state.ema is None else f"ema {cfg.train.ema_decay:g}"}
    if history:
        last = history[-1]
        results["eval"] = {k: last[k] for k in ("score", "kl", "response_length", "policy_loss", "value_loss")
                           if k in last}
    if jax.process_index() == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        plot_curves(history, out)
    checkpointer.close()
    return results


def plot_curves(history: list[dict], out: Path) -> list[Path]:
    """PNG curves of reward, KL, policy loss and value loss (with a critic) over iterations (all iterations
    of this process's history; a resumed run plots from metrics.jsonl)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = history
    jsonl = out / "metrics.jsonl"
    if jsonl.exists():  # include iterations logged before a resume
        rows = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r.get("split") == "ppo"]
        rows = list({r["step"]: r for r in rows}.values())
        for r in rows:
            r["iteration"] = r["step"]
    written = []
    for key, title in (("score", "reward (score)"), ("kl", "KL to reference"),
                       ("policy_loss", "policy loss"), ("value_loss", "value loss")):
        xs = [r["iteration"] for r in rows if key in r]
        ys = [r[key] for r in rows if key in r]
        if not xs:  # e.g. value_loss of a critic-free run
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot(xs, ys, lw=1.5)
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"ppo_{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
