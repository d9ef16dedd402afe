"""The math of alignment tuning, as pure jit-able JAX functions.

- DPO (Rafailov et al., 2023, "Direct Preference Optimization"): ``-logsigmoid(beta * h)`` with
  ``h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)`` on sequence
  log-probs; label smoothing is conservative DPO (cDPO, Mitchell 2023): the preference label is
  taken to be flipped with probability ``label_smoothing``. IPO (Azar et al., 2023, "A General
  Theoretical Paradigm to Understand Learning from Human Preferences"): ``(h - 1/(2 beta))**2``.
- Bradley-Terry reward modelling (Ouyang et al., 2022, InstructGPT): ``-logsigmoid(r_c - r_r)``.
- KL estimators k1, k2, k3 of KL(policy || reference) from policy samples (Schulman, 2020,
  "Approximating KL Divergence").
- PPO (Schulman et al., 2017) for language models as in Ziegler et al. (2019) and Stiennon et al.
  (2020): per-token KL penalty plus a sequence score on the last response token, generalised
  advantage estimation (Schulman et al., 2016), clipped policy and value losses, advantage
  whitening, and the adaptive KL controller of Ziegler et al.
- GRPO (Shao et al., 2024, DeepSeekMath): group-normalised advantages and a clipped surrogate
  with a k3 KL penalty, averaged per sequence then over sequences.

Conventions: all math is float32. Every mean is a masked mean, ``sum(x * mask) / max(sum(mask), 1)``,
so an all-zero mask gives 0, not NaN; masks are float or bool arrays where 1 means "counts".
Masked-out entries are excluded with ``jnp.where`` rather than multiplied by 0, so an inf or NaN
there reaches neither the value nor the gradient. Metrics are dicts of scalar arrays under
TRL-compatible names, computed under ``stop_gradient``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]

DPO_LOSS_TYPES = ("sigmoid", "ipo")
KL_ESTIMATORS = ("k1", "k2", "k3")
# exp(20) ~ 5e8: a larger policy ratio only means the sample is already clipped; the bound keeps
# a token whose log-prob became -inf (e.g. outside a top-k mask) finite in value and gradient.
LOG_RATIO_BOUND = 20.0


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _counts(mask) -> jax.Array:
    return jnp.asarray(mask).astype(jnp.float32) > 0


def _masked_sum(x, mask, axis=None) -> jax.Array:
    return jnp.sum(jnp.where(_counts(mask), x, 0.0), axis=axis)


def _masked_mean(x, mask, axis=None) -> jax.Array:
    count = jnp.sum(_counts(mask).astype(jnp.float32), axis=axis)
    return _masked_sum(x, mask, axis) / jnp.maximum(count, 1.0)


def _mean(x, mask=None) -> jax.Array:
    return jnp.mean(x) if mask is None else _masked_mean(x, mask)


def _clamped_log_ratio(logp, other_logp) -> jax.Array:
    return jnp.clip(_f32(logp) - _f32(other_logp), -LOG_RATIO_BOUND, LOG_RATIO_BOUND)


def sequence_logps(token_logps_bt: jax.Array, weights_bt: jax.Array) -> jax.Array:
    """[B]: sum over the weighted (response) tokens of ``weight * log-prob``."""
    weights_bt = _f32(weights_bt)
    return _masked_sum(_f32(token_logps_bt) * weights_bt, weights_bt != 0, axis=-1)


def token_logps(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
    """[B, T]: log_softmax(logits) at the targets, in float32."""
    logps_btv = jax.nn.log_softmax(_f32(logits_btv), axis=-1)
    return jnp.take_along_axis(logps_btv, targets_bt[..., None], axis=-1)[..., 0]


def dpo_loss(policy_chosen_b, policy_rejected_b, reference_chosen_b, reference_rejected_b, beta: float,
             label_smoothing: float = 0.0, loss_type: str = "sigmoid",
             mask_b=None) -> tuple[jax.Array, Metrics]:
    """DPO ("sigmoid", with cDPO label smoothing) or IPO ("ipo") on sequence log-probs [B].

    IPO takes the log-probs as given; TRL divides them by the completion lengths first, which a
    caller gets by passing per-token mean log-probs."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"Unknown DPO loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}.")
    chosen_logratio_b = _f32(policy_chosen_b) - _f32(reference_chosen_b)
    rejected_logratio_b = _f32(policy_rejected_b) - _f32(reference_rejected_b)
    h_b = chosen_logratio_b - rejected_logratio_b
    if loss_type == "sigmoid":
        losses_b = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h_b)
                    - label_smoothing * jax.nn.log_sigmoid(-beta * h_b))
    else:
        losses_b = jnp.square(h_b - 1.0 / (2.0 * beta))
    chosen_rewards_b = jax.lax.stop_gradient(beta * chosen_logratio_b)
    rejected_rewards_b = jax.lax.stop_gradient(beta * rejected_logratio_b)
    metrics = {
        "rewards/chosen": _mean(chosen_rewards_b, mask_b),
        "rewards/rejected": _mean(rejected_rewards_b, mask_b),
        "rewards/margins": _mean(chosen_rewards_b - rejected_rewards_b, mask_b),
        "rewards/accuracies": _mean((chosen_rewards_b > rejected_rewards_b).astype(jnp.float32), mask_b),
    }
    return _mean(losses_b, mask_b), metrics


def bradley_terry_loss(reward_chosen_b, reward_rejected_b, mask_b=None) -> tuple[jax.Array, Metrics]:
    """Reward-model loss: mean of ``-logsigmoid(r_chosen - r_rejected)``."""
    reward_chosen_b, reward_rejected_b = _f32(reward_chosen_b), _f32(reward_rejected_b)
    margin_b = reward_chosen_b - reward_rejected_b
    loss = _mean(-jax.nn.log_sigmoid(margin_b), mask_b)
    margin_b, reward_chosen_b, reward_rejected_b = jax.lax.stop_gradient(
        (margin_b, reward_chosen_b, reward_rejected_b))
    metrics = {
        "reward/accuracy": _mean((margin_b > 0).astype(jnp.float32), mask_b),
        "reward/margin": _mean(margin_b, mask_b),
        "reward/chosen": _mean(reward_chosen_b, mask_b),
        "reward/rejected": _mean(reward_rejected_b, mask_b),
    }
    return loss, metrics


def kl_per_token(logp_bt, reference_logp_bt, estimator: str = "k1") -> jax.Array:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy.

    k1 = log p - log q is unbiased but has high variance and can be negative; k2 = (log p - log q)^2/2
    is biased, low variance; k3 = q/p - 1 - log(q/p) is unbiased and never negative."""
    log_ratio = _f32(logp_bt) - _f32(reference_logp_bt)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    if estimator == "k3":
        # expm1(d) - d, d = log(q/p): exact near d = 0, where exp(d) - 1 - d cancels.
        return jnp.expm1(-log_ratio) + log_ratio
    raise ValueError(f"Unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}.")


def ppo_rewards(scores_b, kl_bt, mask_bt, kl_coef: float) -> jax.Array:
    """[B, T] per-token rewards: ``-kl_coef * kl`` on response tokens, plus each row's sequence
    score on its last masked token (a row with no masked token gets nothing)."""
    time_t = jnp.arange(kl_bt.shape[-1])
    last_b = jnp.max(jnp.where(_counts(mask_bt), time_t, -1), axis=-1)
    # one_hot of -1 is all zeros: an empty row receives no score.
    score_bt = _f32(scores_b)[:, None] * jax.nn.one_hot(last_b, kl_bt.shape[-1], dtype=jnp.float32)
    return jnp.where(_counts(mask_bt), -kl_coef * _f32(kl_bt), 0.0) + score_bt


def gae(rewards_bt, values_bt, mask_bt, gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation: (advantages [B, T], returns [B, T]).

    A row's mask is assumed contiguous (prompt 0, response 1, padding 0): the episode is the
    response and ends at its last masked token, after which the value is 0. Rewards and values
    where the mask is 0 are ignored, and advantages and returns are 0 there. (With holes in a mask,
    each run of masked tokens would be treated as its own episode.)"""
    counts_bt = _counts(mask_bt)
    rewards_bt = jnp.where(counts_bt, _f32(rewards_bt), 0.0)
    values_bt = jnp.where(counts_bt, _f32(values_bt), 0.0)

    def step(carry, xs):
        next_advantage_b, next_value_b = carry
        reward_b, value_b, counts_b = xs
        delta_b = reward_b + gamma * next_value_b - value_b
        advantage_b = jnp.where(counts_b, delta_b + gamma * lam * next_advantage_b, 0.0)
        # value_b is already 0 outside the mask, so the episode's bootstrap value resets there.
        return (advantage_b, value_b), advantage_b

    zeros_b = jnp.zeros(rewards_bt.shape[:1], jnp.float32)
    _, advantages_tb = jax.lax.scan(step, (zeros_b, zeros_b), (rewards_bt.T, values_bt.T, counts_bt.T),
                                    reverse=True)
    advantages_bt = advantages_tb.T
    return advantages_bt, jnp.where(counts_bt, advantages_bt + values_bt, 0.0)


def whiten(x_bt, mask_bt, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)`` with the masked mean and masked population variance.

    With ``shift_mean=False`` the mean is added back (TRL's masked_whiten). Entries where the mask
    is 0 get the same affine map, not 0: callers multiply by the mask."""
    x_bt = _f32(x_bt)
    mean = _masked_mean(x_bt, mask_bt)
    variance = _masked_mean(jnp.square(x_bt - mean), mask_bt)
    whitened_bt = (x_bt - mean) * jax.lax.rsqrt(variance + eps)
    return whitened_bt if shift_mean else whitened_bt + mean


def ppo_policy_loss(logp_bt, old_logp_bt, advantages_bt, mask_bt, clip: float) -> tuple[jax.Array, Metrics]:
    """PPO clipped surrogate: masked mean of ``max(-A r, -A clip(r, 1 - clip, 1 + clip))``.

    The log-ratio is clamped to +-LOG_RATIO_BOUND before exp (also for the metrics), so a -inf
    log-prob gives a finite loss and gradient."""
    log_ratio_bt = _clamped_log_ratio(logp_bt, old_logp_bt)
    ratio_bt = jnp.exp(log_ratio_bt)
    advantages_bt = _f32(advantages_bt)
    unclipped_bt = -advantages_bt * ratio_bt
    clipped_bt = -advantages_bt * jnp.clip(ratio_bt, 1.0 - clip, 1.0 + clip)
    loss = _masked_mean(jnp.maximum(unclipped_bt, clipped_bt), mask_bt)
    unclipped_bt, clipped_bt, log_ratio_bt, ratio_bt = jax.lax.stop_gradient(
        (unclipped_bt, clipped_bt, log_ratio_bt, ratio_bt))
    metrics = {
        "ppo/clip_fraction": _masked_mean((clipped_bt > unclipped_bt).astype(jnp.float32), mask_bt),
        "ppo/approx_kl": _masked_mean(0.5 * jnp.square(log_ratio_bt), mask_bt),
        "ppo/ratio": _masked_mean(ratio_bt, mask_bt),
    }
    return loss, metrics


def value_loss(values_bt, old_values_bt, returns_bt, mask_bt, clip: float) -> tuple[jax.Array, Metrics]:
    """Clipped value loss: ``0.5 * masked mean of max((v - R)^2, (clip(v, old - clip, old + clip) - R)^2)``."""
    values_bt, old_values_bt, returns_bt = _f32(values_bt), _f32(old_values_bt), _f32(returns_bt)
    clipped_values_bt = old_values_bt + jnp.clip(values_bt - old_values_bt, -clip, clip)
    unclipped_loss_bt = jnp.square(values_bt - returns_bt)
    clipped_loss_bt = jnp.square(clipped_values_bt - returns_bt)
    loss = 0.5 * _masked_mean(jnp.maximum(unclipped_loss_bt, clipped_loss_bt), mask_bt)
    clip_active_bt = jax.lax.stop_gradient(clipped_loss_bt > unclipped_loss_bt).astype(jnp.float32)
    return loss, {"ppo/value_clip_fraction": _masked_mean(clip_active_bt, mask_bt)}


def entropy(logits_btv, mask_bt) -> jax.Array:
    """Masked mean over tokens of the entropy of softmax(logits); -inf logits (masked-out
    vocabulary entries) contribute 0."""
    logps_btv = jax.nn.log_softmax(_f32(logits_btv), axis=-1)
    probs_btv = jnp.exp(logps_btv)
    # 0 * log 0 = 0, written so that neither the value nor the gradient sees 0 * -inf.
    safe_logps_btv = jnp.where(probs_btv > 0, logps_btv, 0.0)
    return _masked_mean(-jnp.sum(probs_btv * safe_logps_btv, axis=-1), mask_bt)


def group_advantages(rewards_b, group_size: int, eps: float = 1e-4) -> tuple[jax.Array, jax.Array]:
    """GRPO advantages: ``(r - group mean) / (group std + eps)`` with the population std.

    Rows are grouped consecutively: rows 0..G-1 are the G samples of prompt 0, and so on. A group
    whose rewards are all equal (zero spread) carries no signal and gets advantage 0 exactly.
    Returns (advantages [B], fraction of groups with zero spread)."""
    batch = rewards_b.shape[0]
    if group_size < 1 or batch % group_size:
        raise ValueError(f"Batch size {batch} is not a multiple of group_size {group_size}.")
    rewards_gk = _f32(rewards_b).reshape(batch // group_size, group_size)
    mean_g1 = jnp.mean(rewards_gk, axis=1, keepdims=True)
    std_g1 = jnp.std(rewards_gk, axis=1, keepdims=True)
    # max == min, not std == 0: the float mean of equal values need not equal them exactly.
    zero_spread_g1 = jnp.max(rewards_gk, axis=1, keepdims=True) == jnp.min(rewards_gk, axis=1, keepdims=True)
    advantages_gk = jnp.where(zero_spread_g1, 0.0, (rewards_gk - mean_g1) / (std_g1 + eps))
    return advantages_gk.reshape(batch), jnp.mean(zero_spread_g1.astype(jnp.float32))


def grpo_loss(logp_bt, old_logp_bt, reference_logp_bt, advantages_b, mask_bt, clip: float,
              kl_coef: float) -> tuple[jax.Array, Metrics]:
    """GRPO: per token ``-min(r A, clip(r) A) + kl_coef * k3``, averaged over each sequence's masked
    tokens, then over the sequences that have any (DeepSeekMath, eq. 3). Both log-ratios are
    clamped as in ``ppo_policy_loss``."""
    ratio_bt = jnp.exp(_clamped_log_ratio(logp_bt, old_logp_bt))
    advantages_b1 = _f32(advantages_b)[:, None]
    surrogate_bt = ratio_bt * advantages_b1
    clipped_surrogate_bt = jnp.clip(ratio_bt, 1.0 - clip, 1.0 + clip) * advantages_b1
    reference_log_ratio_bt = _clamped_log_ratio(reference_logp_bt, logp_bt)
    kl_bt = jnp.expm1(reference_log_ratio_bt) - reference_log_ratio_bt  # k3
    per_token_bt = -jnp.minimum(surrogate_bt, clipped_surrogate_bt) + kl_coef * kl_bt
    per_sequence_b = _masked_mean(per_token_bt, mask_bt, axis=-1)
    has_tokens_b = jnp.any(_counts(mask_bt), axis=-1)
    loss = _masked_mean(per_sequence_b, has_tokens_b)
    surrogate_bt, clipped_surrogate_bt, kl_bt, ratio_bt = jax.lax.stop_gradient(
        (surrogate_bt, clipped_surrogate_bt, kl_bt, ratio_bt))
    metrics = {
        "grpo/clip_fraction": _masked_mean((clipped_surrogate_bt < surrogate_bt).astype(jnp.float32), mask_bt),
        "grpo/kl": _masked_mean(kl_bt, mask_bt),
        "grpo/ratio": _masked_mean(ratio_bt, mask_bt),
    }
    return loss, metrics


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, horizon: float,
                     batch_size: int) -> float:
    """Ziegler et al. (2019) adaptive KL controller: move the coefficient towards the value that
    keeps the observed KL at ``target``, by a proportional error clipped to +-20%."""
    error = min(max(float(observed_kl) / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * batch_size / horizon)
