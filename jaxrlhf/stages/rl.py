"""RL from an SFT policy: ``jaxrlhf ppo`` (and its presets ``grpo``, ``dr_grpo``, ``rloo``,
``reinforce_pp``), one learner on the one trainer.

An iteration is rollout -> score -> select -> update, each a method of :class:`RLLearner`
that can be called and tested alone; the trainer (:mod:`jaxrlhf.trainer`) runs iterations as
its steps, so logging, the non-finite policy, eval cadence, checkpoints and resume are the
same as for every other stage. What the algorithm is (advantage estimator, KL placement, loss
aggregation, selection, averaging) is data: :class:`~jaxrlhf.algorithms.AlgorithmConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrlhf.algorithms import AlgorithmConfig
from jaxrlhf.config import ConfigError, ModelConfig, to_dict
from jaxrlhf.generate import SamplingConfig
from jaxrlhf.rewards import RewardSource
from jaxrlhf.sharding import MeshConfig, put_global, to_host
from jaxrlhf.steps.common import OptimConfig
from jaxrlhf.tracking import LoggingConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RLDataConfig:
    prompt_files: tuple[str, ...] = ()
    eval_prompt_files: tuple[str, ...] = ()  # held-out prompts for train.eval_every; empty: eval_fraction
    eval_fraction: float = 0.0  # of the prompt rows held out for eval (never used for rollouts)
    max_prompt_length: int = 256
    strict: bool = False

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {self.max_prompt_length}")


@dataclasses.dataclass(frozen=True)
class RLTrainConfig:
    iterations: int = 100
    batch_size: int = 16  # answers sampled per iteration (batch_size / samples_per_prompt prompts)
    samples_per_prompt: int = 1  # answers sampled from each prompt (adjacent rows)
    recompute_log_probs: bool = False  # True: the trainer recomputes the sampler's log-probs
    # [lo, hi]: a prompt's samples continue one shared prefix, a first sample cut at a fraction
    # U(lo, hi) of its length; only the continuations are trained (stages/ppo_branch.py)
    branch_at: tuple[float, float] | None = None
    eval_every: int = 0  # iterations between greedy evals on the held-out prompts; 0: at the end only
    eval_batch_size: int = 0  # prompts per eval batch; 0: batch_size / samples_per_prompt
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    max_nonfinite_steps: int = 3  # consecutive skipped iterations (NaN/Inf) before the run stops
    actor_optim: OptimConfig = OptimConfig(learning_rate=1e-6, schedule="constant")
    critic_optim: OptimConfig = OptimConfig(learning_rate=1e-5, schedule="constant")

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.samples_per_prompt < 1 or self.batch_size < 1 or self.batch_size % self.samples_per_prompt:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of samples_per_prompt "
                             f"{self.samples_per_prompt}")
        if self.branch_at is not None:
            if len(self.branch_at) != 2 or not 0.0 <= self.branch_at[0] < self.branch_at[1] <= 1.0:
                raise ValueError(f"branch_at must be [lo, hi] with 0 <= lo < hi <= 1, got {list(self.branch_at)}")
            if self.samples_per_prompt < 2:
                raise ValueError("branch_at samples several continuations of one prefix: it needs "
                                 "samples_per_prompt >= 2")
        for key in ("eval_every", "eval_batch_size", "save_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.keep_checkpoints < 1 or self.log_every < 1 or self.max_nonfinite_steps < 1:
            raise ValueError("keep_checkpoints, log_every and max_nonfinite_steps must be >= 1")

    @property
    def prompts_per_iteration(self) -> int:
        return self.batch_size // self.samples_per_prompt


@dataclasses.dataclass(frozen=True)
class RLConfig:
    seed: int = 0
    output_dir: str = "runs/ppo"
    tokenizer: str | None = None  # default: model.path
    reference_path: str | None = None  # default: model.path (the SFT policy)
    critic_path: str | None = None  # advantage gae: default the reward model if there is one, else model.path
    critic_zero_head: bool = True  # value head starts at zero; false keeps a reward model's head
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    data: RLDataConfig = RLDataConfig()
    rollout: SamplingConfig = SamplingConfig(max_new_tokens=64, temperature=1.0)
    algorithm: AlgorithmConfig = AlgorithmConfig()
    train: RLTrainConfig = RLTrainConfig()
    rewards: tuple[RewardSource, ...] = ()
    logging: LoggingConfig = LoggingConfig()  # TensorBoard (default) and W&B

    def __post_init__(self):
        if not self.model.path:
            raise ValueError("model.path is required: the SFT policy to start from")
        if not self.rewards:
            raise ValueError("rewards is empty: give a reward model ({kind: model, path: ...}) "
                             "and/or rules ({kind: rule, function: package.module:function})")
        if self.rollout.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 for RL (the update divides logits by it)")
        self.algorithm.check_group(self.train.samples_per_prompt)
        trained = self.trained_per_iteration
        if trained % self.algorithm.minibatches:
            raise ValueError(f"the {trained} trained answers per iteration (train.batch_size / samples_per_prompt "
                             f"x answers kept per prompt) are not a multiple of algorithm.minibatches "
                             f"{self.algorithm.minibatches}")

    @property
    def trained_per_prompt(self) -> int:
        return self.algorithm.selection.trained_per_prompt(self.train.samples_per_prompt)

    @property
    def trained_per_iteration(self) -> int:
        return self.train.prompts_per_iteration * self.trained_per_prompt


# presets: the defaults `jaxrlhf grpo` etc. start from (any key can still be set in the YAML)
PRESETS: dict[str, dict] = {
    "ppo": {},
    "grpo": {"algorithm": {"advantage": "grpo", "whiten_advantages": False, "loss_aggregation": "sequence_mean",
                           "kl": {"placement": "loss", "estimator": "k3", "coef": 0.04}},
             "train": {"samples_per_prompt": 4}},
    "dr_grpo": {"algorithm": {"advantage": "dr_grpo", "whiten_advantages": False, "loss_aggregation": "sequence_sum",
                              "kl": {"placement": "none", "coef": 0.0}},
                "train": {"samples_per_prompt": 4}},
    "rloo": {"algorithm": {"advantage": "rloo", "whiten_advantages": False, "kl": {"placement": "reward"}},
             "train": {"samples_per_prompt": 4}},
    "reinforce_pp": {"algorithm": {"advantage": "reinforce_pp", "kl": {"placement": "reward", "estimator": "k1"}}},
}


def init_rl_state(actor_params, actor_buffers, critic_params, critic_buffers, actor_tx, critic_tx,
                  *, kl_coef: float, seed: int, mesh, ema: bool = False):
    """The RL state materialised with explicit shardings (params by their logical axes, optimizer
    moments alongside, scalars replicated), and those shardings. ``ema``: the state also keeps a
    float32 moving average of the actor's params, starting at them."""
    from jaxrlhf.steps.common import init_train_state, train_state_shardings
    from jaxrlhf.steps.rl import RLState

    def init():
        return RLState(iteration=jnp.zeros((), jnp.int32),
                       actor=init_train_state(actor_params, actor_buffers, actor_tx, seed),
                       critic=(None if critic_params is None else
                               init_train_state(critic_params, critic_buffers, critic_tx, seed + 1)),
                       kl_coef=jnp.asarray(kl_coef, jnp.float32),
                       rng=jax.random.key_data(jax.random.key(seed)),
                       ema=(jax.tree.map(lambda p: p.astype(jnp.float32), actor_params) if ema else None))

    abstract = jax.eval_shape(init)
    replicated = NamedSharding(mesh, P())
    actor_sh = train_state_shardings(abstract.actor, mesh, actor_tx)
    shardings = RLState(iteration=replicated, actor=actor_sh,
                        critic=(None if critic_params is None else
                                train_state_shardings(abstract.critic, mesh, critic_tx)),
                        kl_coef=replicated, rng=replicated,
                        ema=actor_sh.params if ema else None)  # sharded like the params it averages
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return state, shardings


@dataclasses.dataclass
class Rollout:
    """One iteration's sampled answers on the host, a prompt's samples adjacent.

    input_ids, attention_mask: [B, P + N]; gen: the sampler's answers (tokens, log_probs, mask,
    train_mask [B, N], finished [B]); index: [B] prompt example of each row; cuts: [B] shared
    prefix lengths of branched rollouts, else None."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    gen: object
    index: np.ndarray
    cuts: np.ndarray | None
    seconds: float

    def take(self, rows) -> "Rollout":
        return Rollout(self.input_ids[rows], self.attention_mask[rows], self.gen.take(rows), self.index[rows],
                       None if self.cuts is None else self.cuts[rows], self.seconds)


def format_samples(answers: list[tuple[str, str, float, bool]]) -> str:
    """Sampled answers as Markdown text (TensorBoard renders it): one block per (prompt, answer,
    score, ended with EOS)."""
    blocks = []
    for prompt, answer, score, finished in answers:
        end = "EOS" if finished else "no EOS (cut at max_new_tokens)"
        blocks.append(f"**score {score:.4g}**, {end}\n\n    prompt: {prompt!r}\n    answer: {answer!r}")
    return "\n\n".join(blocks)


class RLLearner:
    """The jitted functions of an RL run and the four phases of an iteration."""

    def __init__(self, cfg: RLConfig, *, mesh, tokenizer, actor_graphdef, critic_graphdef, reference, scorer,
                 examples, actor_tx, critic_tx, state_shardings):
        from jaxrlhf.data import pad_id_of
        from jaxrlhf.generate import generate
        from jaxrlhf.steps.rl import make_experience, update_policy

        self.cfg, self.mesh, self.tokenizer, self.scorer, self.examples = cfg, mesh, tokenizer, scorer, examples
        self.reference = reference
        self.actor_graphdef, self.critic_graphdef = actor_graphdef, critic_graphdef
        self.eos_id, self.pad_id = tokenizer.eos_token_id, pad_id_of(tokenizer)
        self.prompt_len = cfg.data.max_prompt_length
        self.rows = NamedSharding(mesh, P(("data", "fsdp")))
        self.replicated = NamedSharding(mesh, P())
        static = dict(actor_graphdef=actor_graphdef, critic_graphdef=critic_graphdef, prompt_len=self.prompt_len,
                      temperature=cfg.rollout.temperature, algo=cfg.algorithm)
        self.sample = jax.jit(functools.partial(generate, actor_graphdef, config=cfg.rollout, eos_id=self.eos_id,
                                                pad_id=self.pad_id), static_argnames="group")
        greedy = dataclasses.replace(cfg.rollout, temperature=0.0, top_k=0, top_p=1.0)
        self.sample_greedy = jax.jit(functools.partial(generate, actor_graphdef, config=greedy, eos_id=self.eos_id,
                                                       pad_id=self.pad_id))
        self.experience_fn = jax.jit(functools.partial(make_experience, group_size=cfg.trained_per_prompt, **static))
        self.update_fn = jax.jit(functools.partial(update_policy, actor_tx=actor_tx, critic_tx=critic_tx, **static),
                                 out_shardings=(state_shardings, None), donate_argnums=0)
        self.last_samples: tuple[Rollout, np.ndarray] | None = None  # the last rollout and its scores, for log_samples

    # ------------------------------------------------------------------ the four phases

    def rollout(self, state, batch: dict, iteration: int) -> Rollout:
        """``samples_per_prompt`` answers to each prompt of ``batch`` (host arrays, a row per prompt)."""
        from jaxrlhf.stages.ppo_branch import Branched, branch_points, branch_prompts, join_branches

        t0 = time.perf_counter()
        group, cfg = self.cfg.train.samples_per_prompt, self.cfg
        key = jax.random.fold_in(jax.random.key(cfg.seed), iteration)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        params = (state.actor.params, state.actor.buffers)
        with jax.set_mesh(self.mesh):
            if cfg.train.branch_at is None:  # each prompt prefilled once, its cache repeated group times
                gen = self._host(self.sample(params, *self._put(ids, mask), key, group=group))
                gen, cuts = Branched(gen.tokens, gen.log_probs, gen.mask, gen.mask, gen.finished), None
            else:
                first_key, key = jax.random.split(key)
                first = self._host(self.sample(params, *self._put(ids, mask), first_key))
                rng = np.random.default_rng([cfg.seed, iteration])
                cuts = branch_points(first.mask, first.finished, tuple(cfg.train.branch_at), rng)
                branch_ids, branch_mask = branch_prompts(ids, mask, first.tokens, cuts, self.pad_id)
                cont = self._host(self.sample(params, *self._put(branch_ids, branch_mask), key, group=group))
                cuts = np.repeat(cuts, group)
                gen = join_branches(np.repeat(first.tokens, group, axis=0), cuts, cont.tokens, cont.log_probs,
                                    cont.mask, cont.finished, self.pad_id)
        prompt_ids, prompt_mask = np.repeat(ids, group, axis=0), np.repeat(mask, group, axis=0)
        return Rollout(np.concatenate([prompt_ids, gen.tokens], axis=1),
                       np.concatenate([prompt_mask, gen.mask], axis=1), gen,
                       np.repeat(batch["index"], group), cuts, time.perf_counter() - t0)

    def score(self, rollout: Rollout):
        """The rollout's :class:`~jaxrlhf.stages.ppo_scoring.ScoredBatch` (reward models on device,
        rules on the host)."""
        from jaxrlhf.data.prompts import prompt_meta

        texts = [self.examples[i].prompt for i in rollout.index]
        with jax.set_mesh(self.mesh):
            return self.scorer(*self._put(rollout.input_ids, rollout.attention_mask), self.prompt_len,
                               rollout.gen.mask, rollout.gen.finished, texts, prompt_meta(self.examples, rollout.index))

    def select(self, rollout: Rollout, scored):
        """The answers to train on (``algorithm.selection``): all, or each prompt's best and worst."""
        from jaxrlhf.steps.rl import max_variance_subset

        selection = self.cfg.algorithm.selection
        if selection.kind == "all":
            return rollout, scored
        keep = max_variance_subset(scored.total, self.cfg.train.samples_per_prompt, selection.keep)
        return rollout.take(keep), scored.take(keep)

    def update(self, state, rollout: Rollout, scored):
        """Experience (behaviour / reference log-probs, values, advantages) and the updates."""
        from jaxrlhf.steps.rl import adaptive_kl_coef

        kl = self.cfg.algorithm.kl
        sampler_log_probs = None if self.cfg.train.recompute_log_probs else rollout.gen.log_probs
        arrays = self._put(rollout.input_ids, rollout.attention_mask, rollout.gen.train_mask, scored.terminal,
                           rollout.gen.finished, sampler_log_probs)
        with jax.set_mesh(self.mesh):
            reference = self.reference(state) if callable(self.reference) else self.reference
            experience, metrics = self.experience_fn(state, reference, *arrays, scored.dense)
            state, train_metrics = self.update_fn(state, experience)
            state = state.replace(kl_coef=adaptive_kl_coef(state.kl_coef, metrics["kl"], target=kl.target,
                                                           horizon=kl.horizon, batch_size=self.cfg.train.batch_size))
            train_metrics = jax.block_until_ready(train_metrics)
        # an update on a non-finite advantage is skipped whatever its loss says
        train_metrics = dict(train_metrics, skipped=jnp.maximum(train_metrics["skipped"],
                                                                metrics["nonfinite_advantages"]))
        return state, {**metrics, **train_metrics}

    def iteration(self, state, step_input):
        """The trainer's step: rollout -> score -> select -> update."""
        iteration, batch = step_input
        rollout = self.rollout(state, batch, iteration)
        t1 = time.perf_counter()
        scored = self.score(rollout)
        self.last_samples = (rollout, scored.total)
        sampled = {"score": float(np.mean(scored.total)), "score_std": float(np.std(scored.total)),
                   "response_length": float(rollout.gen.mask.sum(axis=1).mean())}
        rollout_all = rollout
        rollout, scored_trained = self.select(rollout, scored)
        if rollout is not rollout_all:
            sampled["trained_score"] = float(np.mean(scored_trained.total))
        t2 = time.perf_counter()
        nonfinite = not np.isfinite(scored_trained.total).all()
        if nonfinite:
            bad = ", ".join(k for k, v in scored.metrics.items() if not np.isfinite(v)) or "the combined score"
            log.warning("iteration %d: non-finite reward from %s; the update is skipped", iteration + 1, bad)
        state, metrics = self.update(state, rollout, scored_trained)
        t3 = time.perf_counter()
        metrics = {**jax.tree.map(lambda x: float(to_host(x)), metrics), **scored.metrics, **sampled,
                   "rollout_seconds": rollout.seconds, "score_seconds": t2 - t1, "train_seconds": t3 - t2,
                   "generated_tokens_per_second": float(rollout_all.gen.train_mask.sum()) / max(rollout.seconds, 1e-9)}
        if nonfinite:
            metrics["skipped"] = 1.0
        if rollout.cuts is not None:  # the shared prefix
            metrics["branch_prefix_length"] = float(rollout.cuts.mean())
        return state, metrics

    def log_samples(self, info, *, count: int = 4) -> None:
        """A trainer hook: ``count`` answers of the last rollout as text (prompt, answer, score), to
        TensorBoard / W&B as ``<stage>/samples``."""
        if self.last_samples is None or info.trainer.metrics_log is None:
            return
        rollout, scores = self.last_samples
        rows = np.unique(np.linspace(0, len(scores) - 1, min(count, len(scores))).astype(int))
        gen = rollout.gen
        answers = []
        for row in rows:
            n = int(gen.mask[row].sum()) - int(gen.finished[row])  # tokens before EOS
            answers.append((self.examples[rollout.index[row]].prompt,
                            self.tokenizer.decode(gen.tokens[row, :n], skip_special_tokens=True),
                            float(scores[row]), bool(gen.finished[row])))
        info.trainer.metrics_log.write_text(info.position.steps, f"{info.trainer.settings.prefix}/samples",
                                            format_samples(answers))

    # ------------------------------------------------------------------ eval and export

    def exported_params(self, state):
        """The weights final/ holds: the moving average when averaging is on, else the last iterate."""
        if state.ema is None:
            return state.actor.params
        return jax.tree.map(lambda e, p: e.astype(p.dtype), state.ema, state.actor.params)

    def evaluate(self, state, prompts, batch_size: int) -> dict[str, float]:
        """Greedy answers to every held-out prompt from the exported weights, scored by the same
        reward sources as the rollouts."""
        params = (self.exported_params(state), state.actor.buffers)
        totals, lengths, finished, parts = [], [], [], {}
        for start in range(0, len(prompts), batch_size):
            rows = np.arange(start, min(start + batch_size, len(prompts)))
            n = len(rows)
            rows = np.concatenate([rows, np.full(batch_size - n, rows[0])])  # fixed shape: one compilation
            batch = prompts.take(rows).as_dict()
            with jax.set_mesh(self.mesh):
                gen = self._host(self.sample_greedy(params, *self._put(batch["input_ids"], batch["attention_mask"]),
                                                    jax.random.key(0)))
            from jaxrlhf.stages.ppo_branch import Branched
            rollout = Rollout(np.concatenate([batch["input_ids"], gen.tokens], axis=1),
                              np.concatenate([batch["attention_mask"], gen.mask], axis=1),
                              Branched(gen.tokens, gen.log_probs, gen.mask, gen.mask, gen.finished),
                              batch["index"], None, 0.0)
            scored = self.score(rollout)
            totals.append(scored.total[:n])
            lengths.append(gen.mask.sum(axis=1)[:n])
            finished.append(gen.finished[:n])
            for key, value in scored.metrics.items():
                parts.setdefault(key, []).append(value * n)
        count = len(prompts)
        return {"score": float(np.mean(np.concatenate(totals))), "response_length": float(np.mean(np.concatenate(lengths))),
                "eos_fraction": float(np.mean(np.concatenate(finished))), "prompts": float(count),
                **{k: float(sum(v)) / count for k, v in parts.items()}}

    # ------------------------------------------------------------------ host <-> mesh

    def _put(self, *arrays):
        """Host arrays (the same on every process) as global arrays, rows sharded over the
        data-parallel axes where they divide evenly (else replicated); None stays None."""
        def put(a):
            a = np.asarray(a)
            shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
            return put_global(a, self.rows if a.shape[0] % shards == 0 else self.replicated)
        return tuple(None if a is None else put(a) for a in arrays)

    @staticmethod
    def _host(gen):
        return jax.tree.map(to_host, gen)


# --------------------------------------------------------------------------- the run


def lora_reference(adapters):
    """The LoRA reference: ``state -> (starting adapters, the actor's own buffers)``, i.e. the
    same base arrays the actor uses (no second copy), with the adapters it started from."""
    return lambda state: (adapters, state.actor.buffers)


def load_rl_models(cfg: RLConfig, mesh, *, reference: bool = True):
    """(actor, reference or None, critic or None) as the config names them."""
    from jaxrlhf.models import from_pretrained, reward_model_from_pretrained

    from jaxrlhf.stages.common import with_attention, with_logits_path, with_lora

    common = dict(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, mesh=mesh)
    actor = with_lora(from_pretrained(cfg.model.path, remat=cfg.model.remat, **common), cfg.model, mesh=mesh,
                      seed=cfg.seed)
    # the reference runs through the actor's graphdef, so it follows the actor's attention backend
    # and logits path; so does the sampler
    actor = with_logits_path(with_attention(actor, cfg.model), cfg.model)
    if cfg.model.lora is not None:  # the reference is the actor's base with its starting adapters
        if cfg.reference_path not in (None, cfg.model.path):
            raise ConfigError("with model.lora the reference is model.path with the starting adapters: "
                              "leave reference_path unset")
        reference = False
    if reference:
        reference = from_pretrained(cfg.reference_path or cfg.model.path, **common)
    critic = None
    if cfg.algorithm.uses_critic:
        model_rewards = [r for r in cfg.rewards if r.kind == "model"]
        critic_path = cfg.critic_path or (model_rewards[0].path if model_rewards else cfg.model.path)
        critic = reward_model_from_pretrained(critic_path, remat=cfg.model.remat, zero_init=True, seed=cfg.seed,
                                              **common)
        if cfg.critic_zero_head:  # a reward model's head predicts scores, not returns: start from zero
            critic.score.set_value(jnp.zeros_like(critic.score.get_value()))
        # LoRA: the critic (a reward model's weights, not the actor's) gets its own adapters on its own
        # frozen base; its fresh adapters, never a PEFT folder meant for the actor
        lora = cfg.model.lora and dataclasses.replace(cfg.model.lora, adapter=None)
        critic = with_lora(critic, dataclasses.replace(cfg.model, lora=lora), mesh=mesh, seed=cfg.seed + 1)
        critic = with_attention(critic, cfg.model)
    return actor, reference or None, critic


def abstract_rl_state(cfg: RLConfig, actor, critic):
    """((actor graphdef, critic graphdef or None), the RL state's shapes) for restoring a checkpoint."""
    from jaxrlhf.models.lora import split_trained
    from jaxrlhf.steps.common import init_train_state, make_optimizer
    from jaxrlhf.steps.rl import RLState

    actor_graphdef, actor_params, actor_buffers = split_trained(actor)
    actor_tx = make_optimizer(cfg.train.actor_optim, 1)  # the state's structure only
    critic_graphdef, critic_state = None, None
    if critic is not None:
        critic_graphdef, critic_params, critic_buffers = split_trained(critic)
        critic_tx = make_optimizer(cfg.train.critic_optim, 1)
        critic_state = lambda: init_train_state(critic_params, critic_buffers, critic_tx, cfg.seed + 1)
    ema = cfg.algorithm.averaging.kind == "ema"
    abstract = jax.eval_shape(lambda: RLState(
        iteration=jnp.zeros((), jnp.int32), actor=init_train_state(actor_params, actor_buffers, actor_tx, cfg.seed),
        critic=critic_state() if critic_state else None, kl_coef=jnp.zeros((), jnp.float32),
        rng=jax.random.key_data(jax.random.key(cfg.seed)),
        ema=jax.tree.map(lambda p: p.astype(jnp.float32), actor_params) if ema else None))
    return (actor_graphdef, critic_graphdef), abstract


def load_rl_prompts(cfg: RLConfig, tokenizer):
    """(examples, rollout prompts, eval prompts or None, reports) with eval rows never rolled out."""
    from jaxrlhf.data import split_train_eval
    from jaxrlhf.data.prompts import load_prompts, tokenize_prompts

    def load(files):
        examples, report = load_prompts(list(files), tokenizer=tokenizer, strict=cfg.data.strict)
        return examples, tokenize_prompts(examples, tokenizer, max_length=cfg.data.max_prompt_length,
                                          report=report), report

    if not cfg.data.prompt_files:
        raise ConfigError("data.prompt_files is empty: give at least one JSONL/JSON/parquet file of prompts")
    examples, prompts, report = load(cfg.data.prompt_files)
    reports = {"prompts": report}
    eval_prompts = None
    if cfg.data.eval_prompt_files:
        eval_examples, eval_prompts, reports["eval_prompts"] = load(cfg.data.eval_prompt_files)
        # one example list, eval rows after the rollout rows: a row's index names its example
        eval_prompts.index = eval_prompts.index + len(examples)
        examples = examples + eval_examples
    elif cfg.data.eval_fraction > 0:
        prompts, eval_prompts = split_train_eval(prompts, cfg.data.eval_fraction, cfg.seed)
    for split, r in reports.items():
        log.info("%s: %s", split, r.summary())
    return examples, prompts, eval_prompts, reports


def run_rl(cfg: RLConfig, *, resume: bool = False, stage: str = "ppo") -> dict:
    from jaxrlhf.data import batches_per_epoch, iterate_batches
    from jaxrlhf.models import load_tokenizer, save_pretrained
    from jaxrlhf.models.lora import reference_adapters, split_trained
    from jaxrlhf.rewards import resolve_rules
    from jaxrlhf.sharding import make_mesh
    from jaxrlhf.stages.common import prepare_run_dir, restore_or_start
    from jaxrlhf.stages.ppo_scoring import Scorer
    from jaxrlhf.stages.rl_plots import plot_curves
    from jaxrlhf.steps.common import learning_rate_schedule, make_optimizer
    from jaxrlhf.tokenizer_check import check_stage_tokenizer
    from jaxrlhf.trainer import LoopSettings, Trainer

    resolve_rules(cfg.rewards)  # a missing rule function is a one-line error before any model loads
    out, checkpointer = prepare_run_dir(cfg, resume=resume, stage=stage)
    mesh = make_mesh(cfg.mesh)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    check_stage_tokenizer(tokenizer, cfg.model, cfg.tokenizer or cfg.model.path,
                          extra_models=[cfg.reference_path, cfg.critic_path])
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token: RL needs one to end answers")
    examples, prompts, eval_prompts, reports = load_rl_prompts(cfg, tokenizer)
    per_iteration = cfg.train.prompts_per_iteration
    per_epoch = batches_per_epoch(len(prompts), per_iteration)
    if per_epoch == 0:
        raise ConfigError(f"{len(prompts)} prompts are fewer than the {per_iteration} one iteration needs "
                          f"(train.batch_size / train.samples_per_prompt)")
    if cfg.train.branch_at is not None and jax.process_count() > 1:
        raise ConfigError("train.branch_at builds the branched prompts on the host: it runs on one host only")

    actor, reference, critic = load_rl_models(cfg, mesh)
    scorer = Scorer(cfg.rewards, tokenizer=tokenizer, policy_vocab=actor.config.vocab_size, mesh=mesh,
                    dtype=cfg.model.dtype)
    algo = cfg.algorithm
    updates = cfg.train.iterations * algo.epochs * algo.minibatches
    actor_tx = make_optimizer(cfg.train.actor_optim, updates)
    critic_tx = make_optimizer(cfg.train.critic_optim, updates) if critic is not None else None
    # LoRA: adapters (and the critic's head) are trained, each frozen base rides in its state's buffers
    actor_graphdef, actor_params, actor_buffers = split_trained(actor)
    critic_graphdef, critic_params, critic_buffers = (split_trained(critic) if critic is not None
                                                      else (None, None, None))
    state, state_sh = init_rl_state(actor_params, actor_buffers, critic_params, critic_buffers, actor_tx, critic_tx,
                                    kl_coef=algo.kl.coef, seed=cfg.seed, mesh=mesh,
                                    ema=algo.averaging.kind == "ema")
    del actor, critic, actor_params, critic_params, actor_buffers, critic_buffers  # the state holds copies now
    if reference is None:  # LoRA: the starting adapters (taken before a resume) on the actor's own base
        reference = lora_reference(reference_adapters(state.actor.params))
    else:
        reference = tuple(nnx.split(reference, nnx.Param, ...)[1:])
    state, start = restore_or_start(checkpointer, state, resume=resume)
    learner = RLLearner(cfg, mesh=mesh, tokenizer=tokenizer, actor_graphdef=actor_graphdef,
                        critic_graphdef=critic_graphdef, reference=reference, scorer=scorer,
                        examples=examples, actor_tx=actor_tx, critic_tx=critic_tx, state_shardings=state_sh)

    def batches(epoch: int, start_batch: int):
        for i, batch in iterate_batches(prompts, per_iteration, seed=cfg.seed, epoch=epoch, start_batch=start_batch):
            yield epoch * per_epoch + i, batch

    schedule = learning_rate_schedule(cfg.train.actor_optim, updates)
    settings = LoopSettings(total_steps=cfg.train.iterations, steps_per_epoch=per_epoch,
                            log_every=cfg.train.log_every, eval_every=cfg.train.eval_every,
                            save_every=cfg.train.save_every, max_nonfinite_steps=cfg.train.max_nonfinite_steps,
                            desc=stage, unit="it", prefix=stage, postfix=("score", "kl"))
    trainer = Trainer(settings, out=out, checkpointer=checkpointer, logging_config=cfg.logging,
                      run_config=to_dict(cfg),
                      learning_rate=lambda it: float(schedule(it * algo.epochs * algo.minibatches)))
    eval_batch = cfg.train.eval_batch_size or per_iteration
    evaluate = (None if eval_prompts is None or len(eval_prompts) == 0 else
                functools.partial(learner.evaluate, prompts=eval_prompts, batch_size=eval_batch))
    trainer.add_hook(learner.log_samples, every=cfg.train.log_every)
    result = trainer.fit(state, learner.iteration, batches, start, evaluate=evaluate)
    state = result.state

    if averaged := state.ema is not None:
        log.info("final/ holds the moving average of the actor's weights (decay %g)", algo.averaging.decay)
    save_pretrained(nnx.merge(actor_graphdef, learner.exported_params(state), state.actor.buffers), out / "final",
                    tokenizer=tokenizer)
    if state.critic is not None:
        save_pretrained(nnx.merge(critic_graphdef, state.critic.params, state.critic.buffers), out / "critic")
    results = {"steps": cfg.train.iterations, "iterations": cfg.train.iterations, "history": result.history,
               "eval": result.last_eval, "last_rollout": result.history[-1] if result.history else {},
               "data": {k: r.as_dict() for k, r in reports.items()}, "final_model": str(out / "final"),
               "final_weights": f"ema {algo.averaging.decay:g}" if averaged else "last iterate"}
    if jax.process_index() == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        plot_curves(out, stage)
    checkpointer.close()
    return results
