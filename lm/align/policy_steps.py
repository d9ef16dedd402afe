"""The jitted halves of a PPO / GRPO step (``lm.align.policy``), on the trainer's mesh.

``prepare(params, reference, rows, scores, kl_coef)`` scores a rollout batch once before any
update: the policy's log-probs under the sampling processing ("old" log-probs: computed by the
same forward pass the updates use, so the first update's ratio is 1 up to float rounding), the reference's
log-probs, and the advantages (PPO: per-token KL penalty, value head, GAE, whitening; GRPO:
group-normalised rewards). ``update(state, rows, stats, indices)`` is one clipped update on the
rows ``indices`` of the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lm.align import losses
from lm.align.pairs import reference_shardings
from lm.align.rollout import processed_token_logps
from lm.models.heads import apply_heads
from lm.parallel import sharding as shd
from lm.train.step import apply_update, trainable_grad


def _policy_outputs(trainer, params, rows, rng=None):
    """(processed log-probs [B, T], values [B, T] or None, logits [B, T, V]). Log-probs are 0
    outside the response: under a top-k or top-p mask a prompt or padding target may be -inf,
    and -inf minus -inf in a ratio would be NaN in the gradient."""
    align, model = trainer.align, nnx.merge(trainer.graphdef, params)
    if "value" in trainer.exp.heads:
        logits, heads = apply_heads(model, rows, ("value",), False, rng)
        values = heads["value"]
    else:
        logits, values = model.forward(rows, False, rng), None
    logps = processed_token_logps(logits, rows["targets"], align.temperature, align.top_k, align.top_p)
    return jnp.where(rows["weights"] > 0, logps, 0.0), values, logits


def make_prepare(trainer, reference):
    align, kind = trainer.align, trainer.config.mode

    def prepare(params, reference, rows, scores_b, kl_coef):
        mask = rows["weights"].astype(jnp.float32)
        logps, values, _ = _policy_outputs(trainer, params, rows)
        ref_logits = trainer.reference_model(params, reference).forward(rows)
        # The reference at the sampling temperature without the top-k / top-p masks: the KL is
        # from the distribution that drew the tokens to the reference, finite wherever it is.
        ref_logps = processed_token_logps(ref_logits, rows["targets"], align.temperature)
        kl_bt = jnp.where(mask > 0, losses.kl_per_token(logps, ref_logps, align.kl_estimator), 0.0)
        stats = {"old_logps": logps, "ref_logps": ref_logps,
                 "kl_per_sequence": jnp.sum(kl_bt) / jnp.maximum(jnp.sum(jnp.any(mask > 0, axis=1)), 1)}
        if kind == "ppo":
            rewards = losses.ppo_rewards(scores_b, kl_bt, mask, kl_coef)
            advantages, returns = losses.gae(rewards, values, mask, align.gamma, align.lam)
            if align.whiten_advantages:
                advantages = losses.whiten(advantages, mask) * mask
            stats.update(values=values * mask, advantages=advantages, returns=returns)
        else:
            advantages_b, zero_spread = losses.group_advantages(scores_b, align.group_size)
            stats.update(advantages=advantages_b, zero_spread_fraction=zero_spread)
        return jax.lax.stop_gradient(stats)

    replicated = shd.replicated(trainer.mesh)
    return jax.jit(trainer.with_rules(prepare),
                   in_shardings=(trainer.param_shardings, reference_shardings(trainer, reference),
                                 trainer.batch_sharding, None, replicated))


def make_update(trainer):
    align, kind, seed = trainer.align, trainer.config.mode, trainer.exp.seed

    def loss(params, rows, stats, rng):
        mask = rows["weights"].astype(jnp.float32)
        logps, values, logits = _policy_outputs(trainer, params, rows, rng)
        if kind == "ppo":
            policy_loss, metrics = losses.ppo_policy_loss(logps, stats["old_logps"], stats["advantages"],
                                                          mask, align.clip)
            v_loss, v_metrics = losses.value_loss(values, stats["values"], stats["returns"], mask,
                                                  align.value_clip)
            total = policy_loss + align.value_coef * v_loss
            metrics = {**metrics, **v_metrics, "ppo/policy_loss": policy_loss, "ppo/value_loss": v_loss}
        else:
            total, metrics = losses.grpo_loss(logps, stats["old_logps"], stats["ref_logps"],
                                              stats["advantages"], mask, align.clip, align.kl_coef)
        metrics = {**metrics, "entropy": losses.entropy(logits / align.temperature, mask)}
        return total, {**metrics, "loss": total}
    grad_fn = trainable_grad(loss, trainer.trainable)

    def update(state, rows, stats, indices, update_index):
        pick = _rows_at(indices, trainer)
        rows, stats = pick(rows), pick(stats)
        # Dropout's stream: the step and the minibatch's first row tell the updates apart.
        rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), state.step), indices[0])
        grads, metrics = grad_fn(state.params, rows, stats, rng)
        total = metrics.pop("loss")
        params, opt_state, guard = apply_update(trainer.optimizer, grads, state.opt_state, state.params, total)
        out = {"train/loss": total, "train/grad_norm": optax.global_norm(grads),
               "train/lr": trainer.schedule(update_index), **guard}
        out.update({f"train/{k.split('/')[-1]}": v for k, v in metrics.items()})
        return state.replace(params=params, opt_state=opt_state), out

    return jax.jit(trainer.with_rules(update), donate_argnums=0,
                   in_shardings=(trainer.shardings, trainer.batch_sharding, None, None, None),
                   out_shardings=(trainer.shardings, shd.replicated(trainer.mesh)))


def _rows_at(indices, trainer):
    """Takes rows ``indices`` of every [B, ...] array (scalars pass through), keeping the batch
    axis sharded as the batch is."""
    def pick(tree):
        def take(x):
            if x.ndim == 0:
                return x
            taken = jnp.take(x, indices, axis=0)
            if taken.ndim == 2:
                taken = jax.lax.with_sharding_constraint(taken, trainer.batch_sharding)
            return taken
        return jax.tree.map(take, tree)
    return pick
