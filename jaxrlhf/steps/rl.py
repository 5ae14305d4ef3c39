"""The jitted pieces of an RL iteration, for every algorithm (PPO, GRPO, Dr. GRPO, RLOO,
REINFORCE++): what the algorithm is comes in as data (:class:`AlgorithmConfig`, static).

- :func:`make_experience`: behaviour, reference and (with a critic) value estimates of a batch
  of scored answers, its per-token rewards and advantages, in one jitted call;
- :func:`update_policy`: ``epochs`` x ``minibatches`` clipped policy (and value) updates, a nested
  ``lax.scan`` inside jit, never a Python loop.

Roles are separate parameter trees: actor and critic trained (each with its own optimizer
state), the reference a frozen argument, never differentiated.

Token alignment: a row is ``prompt [P] (left-padded) + response [N]``. Response token j sits at
position P + j; its log-prob comes from the logits at P + j - 1 and its value (the state
before emitting it) from the critic at P + j - 1.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.algorithms import AlgorithmConfig, aggregate, clipped_surrogate, compute_advantages, token_rewards
from jaxrlhf.losses import kl_penalty, masked_mean, ppo_value_loss
from jaxrlhf.models import logits_path
from jaxrlhf.steps.common import TrainState, apply_gradients


@flax.struct.dataclass
class RLState:
    iteration: jax.Array  # [] int32
    actor: TrainState
    critic: TrainState | None  # None: the estimator needs no value model
    kl_coef: jax.Array  # [] float32, adapted by the KL controller
    rng: jax.Array  # [2] uint32
    ema: nnx.State | None = None  # float32 moving average of the actor's params; None: averaging off


@flax.struct.dataclass
class Experience:
    """One batch of scored answers ready for updates; every array has batch dimension B."""

    input_ids: jax.Array  # [B, P + N] prompt (left-padded) + response
    attention_mask: jax.Array  # [B, P + N]
    response_mask: jax.Array  # [B, N] 1 on trained response tokens (up to and including EOS)
    old_log_probs: jax.Array  # [B, N] the behaviour policy's
    ref_log_probs: jax.Array  # [B, N]
    values: jax.Array  # [B, N] (zeros without a critic)
    advantages: jax.Array  # [B, N]
    returns: jax.Array  # [B, N]


def adaptive_kl_coef(kl_coef: jax.Array, observed_kl: jax.Array, *, target: float | None,
                     horizon: float, batch_size: int) -> jax.Array:
    """Ziegler et al. (2019): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon).
    ``target`` None keeps beta fixed."""
    if target is None:
        return kl_coef
    error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + error * batch_size / horizon)


def response_log_probs_and_entropy(params, buffers, graphdef, input_ids, attention_mask,
                                   prompt_len: int, temperature: float):
    """Log-probs and entropies [B, N] of the response tokens under the policy at ``temperature``,
    by the policy's logits path (model.logits). input_ids, attention_mask: [B, P + N]."""
    model = nnx.merge(graphdef, params, buffers)
    return logits_path.response_log_probs_and_entropy(model, input_ids, attention_mask, prompt_len, temperature)


def response_values(params, buffers, graphdef, input_ids, attention_mask, prompt_len: int):
    """Critic values [B, N] of the states before each response token."""
    critic = nnx.merge(graphdef, params, buffers)
    return critic.token_values(input_ids, attention_mask)[:, prompt_len - 1:-1]


def max_variance_subset(scores, group_size: int, keep: int):
    """Row indices that keep, of each prompt's ``group_size`` adjacent samples, the ``keep // 2``
    best and ``keep // 2`` worst by score, in their original order: the subset whose scores vary
    most (max-variance down-sampling, PODS, Xu et al. 2025).
    scores: [B] host array -> int64 [B / group_size * keep]."""
    groups = np.asarray(scores).reshape(-1, group_size)  # [prompts, G]
    order = np.argsort(groups, axis=1, kind="stable")
    half = keep // 2
    chosen = np.sort(np.concatenate([order[:, :half], order[:, group_size - half:]], axis=1), axis=1)
    return (chosen + group_size * np.arange(groups.shape[0])[:, None]).reshape(-1)


def prefix_shaping(potentials, answer_mask):
    """Potential-based reward shaping (Ng, Harada & Russell 1999) with a reward model's score of
    each answer prefix as the potential: answer token j earns phi(answer[:j+1]) - phi(answer[:j]),
    EOS and padding earn 0, so an answer's rewards sum to phi(answer) - phi(empty answer): the
    optimal policy is unchanged (gamma = 1), the credit lands on the tokens that move the score.

    potentials: [B, N + 1] (column j: the prefix of j response tokens); answer_mask: [B, N]
    (1 on response tokens that are not EOS) -> rewards [B, N].
    """
    return (potentials[:, 1:] - potentials[:, :-1]) * answer_mask.astype(potentials.dtype)


def make_experience(state: RLState, reference: tuple, input_ids, attention_mask, response_mask,
                    scores, finished, sampler_log_probs=None, dense_rewards=None, *, actor_graphdef,
                    critic_graphdef, prompt_len: int, temperature: float, group_size: int,
                    algo: AlgorithmConfig) -> tuple[Experience, dict]:
    """Everything the updates need about a batch of scored answers, and its metrics.

    input_ids, attention_mask: [B, P + N]; response_mask: [B, N]; scores, finished: [B];
    sampler_log_probs: [B, N] or None; dense_rewards: [B, N] or None. ``group_size``: adjacent
    rows per prompt (after selection). The sampler's log-probs are the behaviour policy's (same
    weights, same temperature, unfiltered softmax); given, they save one actor forward and the
    entropy metric is their Monte-Carlo estimate. None: recomputed here, with the exact entropy.
    """
    fwd = functools.partial(response_log_probs_and_entropy, input_ids=input_ids,
                            attention_mask=attention_mask, prompt_len=prompt_len, temperature=temperature)
    mask = response_mask.astype(jnp.float32)
    metrics = {}
    if sampler_log_probs is None:
        old_log_probs, entropy = fwd(state.actor.params, state.actor.buffers, actor_graphdef)
        metrics["entropy"] = masked_mean(entropy, mask)
    else:
        old_log_probs = sampler_log_probs * mask
        metrics["entropy"] = -masked_mean(old_log_probs, mask)
    ref_log_probs, _ = fwd(jax.lax.stop_gradient(reference[0]), reference[1], actor_graphdef)
    kl = kl_penalty(old_log_probs, ref_log_probs, algo.kl.estimator) * mask
    rewards, baselined = token_rewards(scores, kl, response_mask, finished, state.kl_coef, algo, group_size,
                                       dense_rewards)
    values = jnp.zeros_like(rewards)
    if state.critic is not None:
        values = response_values(state.critic.params, state.critic.buffers, critic_graphdef,
                                 input_ids, attention_mask, prompt_len)
    advantages, returns = compute_advantages(rewards, values, response_mask, algo)
    experience = Experience(input_ids, attention_mask, response_mask, old_log_probs, ref_log_probs,
                            values, advantages, returns)
    metrics.update({
        "score": scores.mean(), "score_std": scores.std(), "shaped_score": baselined.mean(),
        "kl": kl.sum(axis=1).mean(), "response_length": mask.sum(axis=1).mean(),
        "eos_fraction": finished.mean(), "kl_coef": state.kl_coef,
        "return_mean": masked_mean(returns, mask),
        # a non-finite score or advantage would reach the parameters through the loss: the update
        # skips on it, and the loop's non-finite policy counts it
        "nonfinite_advantages": 1.0 - jnp.isfinite(advantages).all().astype(jnp.float32),
    })
    if state.critic is not None:
        metrics["value_mean"] = masked_mean(values, mask)
    return experience, metrics


def update_ema(ema, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params (float32); None stays None.

    Why: a policy-gradient iterate jitters around what it has learnt; the average of the recent
    iterates (Polyak-Ruppert averaging) sits nearer the middle of that jitter."""
    if ema is None:
        return None
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(jnp.float32), ema, params)


def minibatch_losses(actor_params, critic_params, state: RLState, batch: Experience, *, actor_graphdef,
                     critic_graphdef, prompt_len: int, temperature: float, algo: AlgorithmConfig):
    """(policy loss, weighted value loss, metrics); the value loss is 0 without a critic."""
    log_probs, entropy = response_log_probs_and_entropy(
        actor_params, state.actor.buffers, actor_graphdef, batch.input_ids, batch.attention_mask,
        prompt_len, temperature)
    mask = batch.response_mask
    token_losses, clipped = clipped_surrogate(log_probs, batch.old_log_probs, batch.advantages, algo.clip_ratio)
    log_ratio = log_probs - batch.old_log_probs
    metrics = {"clip_fraction": masked_mean(clipped, mask), "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask)}
    if algo.kl.placement == "loss":  # GRPO: the leash is a loss term, not part of the advantages
        kl = kl_penalty(log_probs, batch.ref_log_probs, algo.kl.estimator)
        token_losses = token_losses + state.kl_coef * kl
        metrics["policy_kl"] = masked_mean(kl, mask)
    entropy_mean = masked_mean(entropy, mask)
    pg_loss = aggregate(token_losses, mask, algo.loss_aggregation)
    metrics.update(policy_loss=pg_loss, policy_entropy=entropy_mean)
    vf_loss = jnp.zeros((), jnp.float32)
    if critic_params is not None:
        values = response_values(critic_params, state.critic.buffers, critic_graphdef,
                                 batch.input_ids, batch.attention_mask, prompt_len)
        vf_loss, vf_metrics = ppo_value_loss(values, batch.values, batch.returns, mask, algo.clip_value)
        metrics.update(value_loss=vf_loss, **vf_metrics)
    return pg_loss - algo.entropy_coef * entropy_mean, algo.vf_coef * vf_loss, metrics


def update_policy(state: RLState, experience: Experience, *, actor_graphdef, critic_graphdef,
                  actor_tx: optax.GradientTransformation, critic_tx: optax.GradientTransformation | None,
                  prompt_len: int, temperature: float, algo: AlgorithmConfig) -> tuple[RLState, dict]:
    """``algo.epochs`` passes over the experience in ``algo.minibatches`` shuffled minibatches; a
    nested ``lax.scan`` (epochs x minibatches). An update whose loss or gradients are not finite
    is skipped (``skipped`` > 0 in the metrics), so no NaN reaches the parameters."""
    b = experience.input_ids.shape[0]
    size = b // algo.minibatches
    rng, perm_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    orders = jax.vmap(lambda k: jax.random.permutation(k, b))(jax.random.split(perm_key, algo.epochs))
    orders = orders[:, : size * algo.minibatches].reshape(algo.epochs, algo.minibatches, size)
    losses = functools.partial(minibatch_losses, actor_graphdef=actor_graphdef, critic_graphdef=critic_graphdef,
                               prompt_len=prompt_len, temperature=temperature, algo=algo)

    def minibatch_step(carry, index):
        actor, critic = carry
        batch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), experience)
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
    ema = update_ema(state.ema, actor.params, algo.averaging.decay)
    new_state = state.replace(actor=actor, critic=critic, iteration=state.iteration + 1,
                              rng=jax.random.key_data(rng), ema=ema)
    return new_state, metrics
