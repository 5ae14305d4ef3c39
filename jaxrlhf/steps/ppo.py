"""PPO for RLHF as pure functions: score a rollout, shape rewards, GAE, and several epochs
of clipped policy + value updates over minibatches (a ``lax.scan`` inside jit).

Roles are separate parameter trees: the actor and critic are trained (each with its own
optimizer state); the reference policy is a frozen argument, never differentiated.

Token alignment: a rollout row is ``prompt [P] (left-padded) + response [N]``. Response
token j sits at position P + j; its log-prob comes from the logits at P + j - 1 and its
value (the state before emitting it) from the critic at P + j - 1.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrlhf.losses import (compute_gae, entropy_from_logits, kl_penalty, masked_mean,
                            masked_whiten, ppo_policy_loss, ppo_value_loss, token_log_probs)
from jaxrlhf.steps.common import TrainState, apply_gradients


@dataclasses.dataclass(frozen=True)
class PPOHyper:
    """The PPO knobs the jitted update needs (static)."""

    temperature: float = 1.0
    kl_estimator: str = "k1"  # k1 | k3
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    epochs: int = 4
    minibatches: int = 4
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = -1.0  # added to the score of responses without EOS
    score_clip: float = 0.0  # > 0: clip scores to [-score_clip, score_clip]
    group_size: int = 1  # consecutive rows sampled from the same prompt
    group_baseline: bool = False  # subtract the mean score of the prompt's other samples (RLOO)
    group_std_scale: bool = False  # then divide by the std of the prompt's scores (GRPO)
    ema_decay: float | None = None  # keep ema <- d * ema + (1 - d) * actor after every update

    def __post_init__(self):
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
        if self.temperature <= 0:
            raise ValueError("PPO samples with temperature > 0")
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError("epochs and minibatches must be >= 1")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.group_baseline and self.group_size < 2:
            raise ValueError("group_baseline needs group_size >= 2 (samples per prompt)")
        if self.group_std_scale and not self.group_baseline:
            raise ValueError("group_std_scale scales the group-centred scores: it needs group_baseline")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


@flax.struct.dataclass
class PPOState:
    iteration: jax.Array  # [] int32
    actor: TrainState
    critic: TrainState | None  # None: critic-free, advantages are KL-shaped returns-to-go
    kl_coef: jax.Array  # [] float32, adapted by the KL controller
    rng: jax.Array  # [2] uint32
    # float32 exponential moving average of the actor's params (Polyak averaging); None: off
    ema: nnx.State | None = None


@flax.struct.dataclass
class Rollout:
    """One batch of experience; every array has batch dimension B."""

    input_ids: jax.Array  # [B, P + N] prompt (left-padded) + response
    attention_mask: jax.Array  # [B, P + N]
    response_mask: jax.Array  # [B, N] 1 on generated tokens up to and including EOS
    old_log_probs: jax.Array  # [B, N] actor log-probs of the behaviour policy
    ref_log_probs: jax.Array  # [B, N]
    values: jax.Array  # [B, N] (zeros without a critic)
    advantages: jax.Array  # [B, N]
    returns: jax.Array  # [B, N]


def adaptive_kl_coef(kl_coef: jax.Array, observed_kl: jax.Array, *, target: float | None,
                     horizon: float, batch_size: int) -> jax.Array:
    """Ziegler et al. (2019): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon).

    ``target`` None keeps beta fixed.
    """
    if target is None:
        return kl_coef
    error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + error * batch_size / horizon)


def response_log_probs_and_entropy(params, buffers, graphdef, input_ids, attention_mask,
                                   prompt_len: int, temperature: float):
    """Log-probs and entropies [B, N] of the response tokens under the policy at ``temperature``."""
    model = nnx.merge(graphdef, params, buffers)
    logits = model(input_ids, attention_mask).logits
    log_probs = token_log_probs(logits, input_ids, temperature)[:, prompt_len:]
    entropy = entropy_from_logits(logits[:, prompt_len - 1:-1] / temperature)
    return log_probs, entropy


def response_values(params, buffers, graphdef, input_ids, attention_mask, prompt_len: int):
    """Critic values [B, N] of the states before each response token."""
    critic = nnx.merge(graphdef, params, buffers)
    return critic.token_values(input_ids, attention_mask)[:, prompt_len - 1:-1]


def leave_one_out_baseline(scores, group_size: int):
    """Each row's score minus the mean score of the other rows sampled from its prompt
    (RLOO, Ahmadian et al. 2024). scores: [B], rows grouped contiguously by prompt."""
    groups = scores.reshape(-1, group_size)  # [B / G, G]
    others = (groups.sum(axis=1, keepdims=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def group_std(scores, group_size: int, eps: float = 1e-4):
    """[B]: the std of the scores of each row's prompt (its ``group_size`` consecutive rows),
    plus ``eps`` so that a prompt whose answers all score alike divides by eps, not 0."""
    groups = scores.reshape(-1, group_size)  # [B / G, G]
    return jnp.repeat(groups.std(axis=1) + eps, group_size)


def max_variance_subset(scores, group_size: int, keep: int):
    """Row indices that keep, of each prompt's ``group_size`` consecutive samples, the
    ``keep // 2`` best and ``keep // 2`` worst by score (in their original order): the subset
    whose scores vary most, so the trained batch carries the clearest contrast for what it
    costs to train on (max-variance down-sampling, PODS, Xu et al. 2025). Sampling is cheap
    next to a training pass; this spends more samples per trained answer.
    scores: [B] host array -> int64 [B / group_size * keep]."""
    import numpy as np

    groups = np.asarray(scores).reshape(-1, group_size)  # [prompts, G]
    order = np.argsort(groups, axis=1, kind="stable")
    half = keep // 2
    chosen = np.sort(np.concatenate([order[:, :half], order[:, group_size - half:]], axis=1), axis=1)
    return (chosen + group_size * np.arange(groups.shape[0])[:, None]).reshape(-1)


def prefix_shaping(potentials, answer_mask):
    """Potential-based reward shaping (Ng, Harada & Russell 1999) with a reward model's score of
    each answer prefix as the potential: answer token j earns phi(answer[:j+1]) - phi(answer[:j]),
    EOS and padding earn 0, so a response's rewards sum to phi(answer) - phi(empty answer), its
    sequence score up to a constant of the prompt (the optimal policy is unchanged, gamma = 1).
    What changes is the credit: a token's return-to-go is phi(answer) - phi(answer so far), how
    the finished answer compares with stopping at that token, which is exactly the signal for
    where to stop and close to zero-mean for tokens that do not move the score.

    potentials: [B, N + 1] (column j: the prefix of j response tokens); answer_mask: [B, N]
    (1 on response tokens that are not EOS) -> rewards [B, N].
    """
    return (potentials[:, 1:] - potentials[:, :-1]) * answer_mask.astype(potentials.dtype)


def shape_rewards(scores, log_probs, ref_log_probs, response_mask, finished, kl_coef, hyper: PPOHyper,
                  dense_rewards=None):
    """Per-token rewards [B, N]: -beta * KL_t on every token, plus the (penalised, clipped,
    optionally group-centred) sequence score at the last real token, plus ``dense_rewards``
    [B, N] (e.g. :func:`prefix_shaping`) where given. scores, finished: [B]."""
    mask = response_mask.astype(jnp.float32)
    kl = kl_penalty(log_probs, ref_log_probs, hyper.kl_estimator) * mask
    if hyper.missing_eos_penalty is not None:
        scores = jnp.where(finished, scores, scores + hyper.missing_eos_penalty)
    if hyper.score_clip > 0:
        scores = jnp.clip(scores, -hyper.score_clip, hyper.score_clip)
    if hyper.group_baseline:
        # what a prompt's answers share (its limit, its paragraph) cancels: only how this
        # answer did against its siblings remains for the critic and policy to explain
        centred = leave_one_out_baseline(scores, hyper.group_size)
        # GRPO's scaling: a prompt whose answers the reward tells apart by only a little (a reward
        # model that is flat at some limits) then pulls as hard as one with a large spread
        scores = centred / group_std(scores, hyper.group_size) if hyper.group_std_scale else centred
    # the last trained token; the mask need not start at 0 (branched rollouts train a suffix)
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)
    at_last = jax.nn.one_hot(last, mask.shape[1]) * mask
    rewards = -kl_coef * kl + scores[:, None] * at_last
    if dense_rewards is not None:
        rewards = rewards + dense_rewards * mask
    return rewards, kl, scores


def make_rollout(state: PPOState, reference: tuple, input_ids, attention_mask, response_mask,
                 scores, finished, sampler_log_probs=None, dense_rewards=None, *, actor_graphdef, critic_graphdef,
                 prompt_len: int, hyper: PPOHyper) -> tuple[Rollout, dict]:
    """Everything PPO needs about a batch of sampled responses, and its metrics.

    input_ids, attention_mask: [B, P + N]; response_mask: [B, N]; scores, finished: [B];
    sampler_log_probs: [B, N] or None. The sampler's log-probs are the behaviour policy's
    (same weights, same temperature, unfiltered softmax); given, they save one actor
    forward, and the entropy metric is their Monte-Carlo estimate (E[-log p(x)] over the
    sampled tokens). None: recomputed here, with the exact entropy. dense_rewards: [B, N]
    per-token rewards added to the KL-shaped ones (the scores then carry only the terminal part).
    """
    fwd = functools.partial(response_log_probs_and_entropy, input_ids=input_ids,
                            attention_mask=attention_mask, prompt_len=prompt_len,
                            temperature=hyper.temperature)
    mask = response_mask.astype(jnp.float32)
    metrics = {}
    if sampler_log_probs is None:
        old_log_probs, entropy = fwd(state.actor.params, state.actor.buffers, actor_graphdef)
        metrics["entropy"] = masked_mean(entropy, mask)
    else:
        old_log_probs = sampler_log_probs * mask
        metrics["entropy"] = -masked_mean(old_log_probs, mask)
    ref_log_probs, _ = fwd(jax.lax.stop_gradient(reference[0]), reference[1], actor_graphdef)
    rewards, kl, shaped_scores = shape_rewards(scores, old_log_probs, ref_log_probs, response_mask,
                                               finished, state.kl_coef, hyper, dense_rewards)
    if state.critic is not None:
        values = response_values(state.critic.params, state.critic.buffers, critic_graphdef,
                                 input_ids, attention_mask, prompt_len)
        advantages, returns = compute_gae(rewards, values, response_mask, hyper.gamma, hyper.lam)
    else:  # REINFORCE with the group baseline: every token gets its KL-shaped return-to-go
        values = jnp.zeros_like(rewards)
        advantages, returns = compute_gae(rewards, values, response_mask, hyper.gamma, 1.0)
    if hyper.whiten_advantages:
        advantages = masked_whiten(advantages, response_mask)
    rollout = Rollout(input_ids, attention_mask, response_mask, old_log_probs, ref_log_probs,
                      values, advantages, returns)
    metrics.update({
        "score": scores.mean(), "score_std": scores.std(), "shaped_score": shaped_scores.mean(),
        "kl": (kl.sum(axis=1)).mean(), "response_length": mask.sum(axis=1).mean(),
        "eos_fraction": finished.mean(), "kl_coef": state.kl_coef,
        "return_mean": masked_mean(returns, mask),
    })
    if state.critic is not None:
        metrics["value_mean"] = masked_mean(values, mask)
    return rollout, metrics


def update_ema(ema, params, decay: float | None):
    """ema <- decay * ema + (1 - decay) * params (float32); None stays None.

    Why: a policy-gradient iterate jitters around what it has learnt (on the length-control
    demo the greedy score of checkpoints 10 iterations apart moves by +-0.04); the average of
    the recent iterates (Polyak-Ruppert averaging) sits nearer the middle of that jitter."""
    if ema is None:
        return None
    if decay is None:
        raise ValueError("the PPO state keeps an EMA of the actor but hyper.ema_decay is None")
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(jnp.float32), ema, params)


def ppo_minibatch_losses(actor_params, critic_params, state: PPOState, batch: Rollout, *,
                         actor_graphdef, critic_graphdef, prompt_len: int, hyper: PPOHyper):
    """(policy loss, weighted value loss, metrics); the value loss is 0 without a critic
    (``critic_params`` None)."""
    log_probs, entropy = response_log_probs_and_entropy(
        actor_params, state.actor.buffers, actor_graphdef, batch.input_ids, batch.attention_mask,
        prompt_len, hyper.temperature)
    mask = batch.response_mask
    pg_loss, pg_metrics = ppo_policy_loss(log_probs, batch.old_log_probs, batch.advantages, mask,
                                          hyper.clip_ratio)
    entropy = masked_mean(entropy, mask)
    metrics = {"policy_loss": pg_loss, "policy_entropy": entropy, **pg_metrics}
    vf_loss = jnp.zeros((), jnp.float32)
    if critic_params is not None:
        values = response_values(critic_params, state.critic.buffers, critic_graphdef,
                                 batch.input_ids, batch.attention_mask, prompt_len)
        vf_loss, vf_metrics = ppo_value_loss(values, batch.values, batch.returns, mask, hyper.clip_value)
        metrics.update(value_loss=vf_loss, **vf_metrics)
    return pg_loss - hyper.entropy_coef * entropy, hyper.vf_coef * vf_loss, metrics


def ppo_update(state: PPOState, rollout: Rollout, *, actor_graphdef, critic_graphdef,
               actor_tx: optax.GradientTransformation, critic_tx: optax.GradientTransformation,
               prompt_len: int, hyper: PPOHyper) -> tuple[PPOState, dict]:
    """``hyper.epochs`` passes over the rollout in ``hyper.minibatches`` shuffled minibatches;
    a nested ``lax.scan`` (epochs x minibatches), not a Python loop, inside jit."""
    b = rollout.input_ids.shape[0]
    size = b // hyper.minibatches
    rng, perm_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    orders = jax.vmap(lambda k: jax.random.permutation(k, b))(jax.random.split(perm_key, hyper.epochs))
    orders = orders[:, : size * hyper.minibatches].reshape(hyper.epochs, hyper.minibatches, size)
    losses = functools.partial(ppo_minibatch_losses, actor_graphdef=actor_graphdef,
                               critic_graphdef=critic_graphdef, prompt_len=prompt_len, hyper=hyper)

    def minibatch_step(carry, index):
        actor, critic = carry
        batch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), rollout)
        current = state.replace(actor=actor, critic=critic)

        def joint_loss(params):
            # the policy loss depends only on the actor, the value loss only on the critic, so
            # one backward pass gives each tree exactly its own gradient
            pg, vf, m = losses(params[0], params[1], current, batch)
            return pg + vf, (pg, vf, m)

        critic_params = critic.params if critic is not None else None
        (_, (pg, vf, metrics)), (actor_grads, critic_grads) = jax.value_and_grad(
            joint_loss, has_aux=True)((actor.params, critic_params))
        actor, actor_update = apply_gradients(actor, actor_grads, pg, actor_tx)
        metrics = dict(metrics, actor_grad_norm=actor_update["grad_norm"], skipped=actor_update["skipped"])
        if critic is not None:
            critic, critic_update = apply_gradients(critic, critic_grads, vf, critic_tx)
            metrics.update(critic_grad_norm=critic_update["grad_norm"],
                           skipped=jnp.maximum(actor_update["skipped"], critic_update["skipped"]))
        return (actor, critic), metrics

    def epoch(carry, epoch_orders):
        return jax.lax.scan(minibatch_step, carry, epoch_orders)

    (actor, critic), metrics = jax.lax.scan(epoch, (state.actor, state.critic), orders)
    skipped = jnp.max(metrics.pop("skipped"))
    metrics = dict(jax.tree.map(jnp.mean, metrics), skipped=skipped)
    new_state = state.replace(actor=actor, critic=critic, iteration=state.iteration + 1,
                              rng=jax.random.key_data(rng),
                              ema=update_ema(state.ema, actor.params, hyper.ema_decay))
    return new_state, metrics
