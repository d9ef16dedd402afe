"""Pure train and eval steps: (state, batch) -> (state, metrics). jit and shardings are given by
the caller (lm.train.loop), so these functions can be lowered for any mesh."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lm.models.forward import apply_batch
from lm.train.spikes import guard_metrics, is_guarded
from lm.train.state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    z_loss: float = 0.0          # coefficient of log(Z)^2 (PaLM: 1e-4)
    grad_accum_steps: int = 1    # microbatches per optimizer step
    seed: int = 0                # dropout rng = fold_in(key(seed), step)
    packed: bool = False         # batches pack several documents: mask attention by segment_ids


def logits_fn(graphdef: nnx.GraphDef, params, batch: Batch, packed: bool = False,
              dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """Logits [B, T, V]. Unpacked batches (one window per row) need no segment mask; which batch
    fields an architecture reads is lm.models.forward's business."""
    return apply_batch(nnx.merge(graphdef, params), batch, packed, dropout_rng)


def token_losses(logits_btv: jax.Array, targets_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy and log-partition per token, in float32."""
    logits_btv = logits_btv.astype(jnp.float32)
    log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    return log_z_bt - target_logit_bt, log_z_bt


def loss_sums(graphdef, params, batch: Batch, z_loss: float, packed: bool = False,
              dropout_rng=None):
    """Weighted sums (not means) of cross-entropy and z-loss, so microbatches add up exactly."""
    logits_btv = logits_fn(graphdef, params, batch, packed, dropout_rng)
    ce_bt, log_z_bt = token_losses(logits_btv, batch["targets"])
    weights_bt = batch["weights"].astype(jnp.float32)
    ce_sum = jnp.sum(ce_bt * weights_bt)
    z_sum = jnp.sum(jnp.square(log_z_bt) * weights_bt)
    return ce_sum + z_loss * z_sum, (ce_sum, z_sum)


def _split_microbatches(batch: Batch, count: int) -> Batch:
    """[B, ...] -> [count, B / count, ...], taking rows m, m + count, ... for microbatch m, so each
    device's contiguous slice of the batch axis stays on that device."""
    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return {k: split(v) for k, v in batch.items()}


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    schedule: Callable, cfg: StepConfig, trainable=None) -> Callable:
    """(state, batch) -> (state, metrics). With a ``trainable`` mask (PEFT), the loss is
    differentiated with respect to the trainable leaves only, so the backward pass skips the
    frozen weights' gradients; frozen leaves get zero updates (``lm.peft.optim.frozen``)."""
    grad_fn = _grad_fn(graphdef, cfg, trainable)

    def accumulate(params, batch, rng):
        if cfg.grad_accum_steps == 1:
            return grad_fn(params, batch, rng)
        micro = _split_microbatches(batch, cfg.grad_accum_steps)

        def body(carry, xs):
            index, mb = xs
            grads, aux = grad_fn(params, mb, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, carry, (grads, aux)), None
        zeros = (jax.tree.map(jnp.zeros_like, params), (jnp.zeros(()), jnp.zeros(())))
        indices = jnp.arange(cfg.grad_accum_steps)
        return jax.lax.scan(body, zeros, (indices, micro))[0]

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
        total_weight = jnp.maximum(jnp.sum(batch["weights"].astype(jnp.float32)), 1.0)
        grad_sums, (ce_sum, z_sum) = accumulate(state.params, batch, rng)
        grads = jax.tree.map(lambda g: g / total_weight, grad_sums)
        loss = ce_sum / total_weight
        metrics = {"train/loss": loss, "train/z_loss": z_sum / total_weight,
                   "train/grad_norm": optax.global_norm(grads), "train/lr": schedule(state.step),
                   "train/tokens": total_weight}
        params, opt_state, guard = apply_update(optimizer, grads, state.opt_state, state.params, loss)
        metrics.update(guard)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
    return train_step


def apply_update(optimizer, grads, opt_state, params, loss) -> tuple:
    """(new parameters, new optimizer state, the guard's metrics): a guarded optimizer
    (lm.train.spikes) refuses a bad step and changes nothing."""
    if is_guarded(optimizer):
        params, opt_state = optimizer.step(grads, opt_state, params, loss)
        return params, opt_state, guard_metrics(opt_state)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {}


def _grad_fn(graphdef: nnx.GraphDef, cfg: StepConfig, trainable) -> Callable:
    """(params, batch, rng) -> (gradient sums like params, (ce_sum, z_sum))."""
    def loss(p, b, rng):
        return loss_sums(graphdef, p, b, cfg.z_loss, cfg.packed, rng)
    return trainable_grad(loss, trainable)


def trainable_grad(loss: Callable, trainable) -> Callable:
    """``jax.grad(loss, has_aux=True)`` taken with respect to the ``trainable`` leaves only (all
    of them when None): the backward pass skips the frozen weights, whose gradients are zero.
    ``loss(params, *args) -> (scalar, aux)``."""
    if trainable is None:
        return jax.grad(loss, has_aux=True)

    def trainable_loss(trained, params, *args):
        return loss(jax.tree.map(_either, trained, params, is_leaf=_is_none), *args)

    def grad_fn(params, *args):
        trained = jax.tree.map(lambda p, t: p if t else None, params, trainable)
        grads, aux = jax.grad(trainable_loss, has_aux=True)(trained, params, *args)
        return jax.tree.map(lambda g, p: jnp.zeros_like(p) if g is None else g, grads, params,
                            is_leaf=_is_none), aux
    return grad_fn


def _is_none(x) -> bool:
    return x is None


def _either(trained, param):
    """The trainable leaf where there is one, else the (frozen, undifferentiated) parameter."""
    return param if trained is None else trained


def make_eval_step(graphdef: nnx.GraphDef, packed: bool = False) -> Callable:
    def eval_step(params, batch: Batch) -> dict:
        _, (ce_sum, _) = loss_sums(graphdef, params, batch, 0.0, packed)
        return {"loss_sum": ce_sum, "weight_sum": jnp.sum(batch["weights"].astype(jnp.float32))}
    return eval_step
