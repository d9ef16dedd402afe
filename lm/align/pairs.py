"""Objectives on preference pairs (a reward model's Bradley-Terry loss, DPO and IPO), their
train step and their held-out validation, all on the mesh.

A pair batch holds the chosen and the rejected row of each pair side by side
(``chosen_inputs``, ``rejected_inputs``, ... each [B, T], lm.align.preference.pair_rows), so the
two rows of a pair always sit on the same device. A row's sequence log-probability sums its
response tokens and EOS (the weighted targets); a reward model's score is its head's value at the
position that predicts the EOS (lm.models.heads.last_response_index).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lm.align import losses
from lm.align.config import AlignConfig
from lm.data.loader import to_global
from lm.models.heads import apply_heads, at_index, last_response_index
from lm.parallel import sharding as shd
from lm.parallel.axes import outputs_to_host
from lm.train.state import TrainState
from lm.train.step import apply_update, trainable_grad

SIDES = ("chosen", "rejected")
ROW_FIELDS = ("inputs", "targets", "weights", "positions", "segment_ids")


def side(batch: dict, name: str) -> dict:
    """The rows of one side of a pair batch, as an ordinary batch."""
    return {field: batch[f"{name}_{field}"] for field in ROW_FIELDS if f"{name}_{field}" in batch}


def row_fields(batch: dict) -> dict:
    """The [B, T] fields of a pair batch (what goes on the mesh)."""
    return {f"{s}_{field}": batch[f"{s}_{field}"] for s in SIDES for field in ROW_FIELDS
            if f"{s}_{field}" in batch}


def pair_mask(batch: dict) -> jax.Array:
    """[B] 1 for a real pair, 0 for the weightless padding of a last eval batch."""
    return (jnp.sum(batch["chosen_weights"], axis=1) > 0).astype(jnp.float32)


def sequence_logps(model, rows: dict, rng=None) -> jax.Array:
    logits_btv = model.forward(rows, False, rng)
    return losses.sequence_logps(losses.token_logps(logits_btv, rows["targets"]),
                                 rows["weights"].astype(jnp.float32))


def dpo_objective(align: AlignConfig) -> Callable:
    """(policy model, reference() -> the reference model, batch, rng) -> (loss, metrics)."""
    def objective(model, reference, batch, rng):
        keys = (None, None) if rng is None else tuple(jax.random.split(rng))
        policy = [sequence_logps(model, side(batch, s), k) for s, k in zip(SIDES, keys)]
        ref_model = reference()
        ref = [jax.lax.stop_gradient(sequence_logps(ref_model, side(batch, s))) for s in SIDES]
        loss, metrics = losses.dpo_loss(*policy, *ref, align.beta, align.label_smoothing,
                                        align.loss_type, pair_mask(batch))
        mask = pair_mask(batch)
        count = jnp.maximum(jnp.sum(mask), 1.0)
        metrics = {**metrics, "logps/chosen": jnp.sum(policy[0] * mask) / count,
                   "logps/rejected": jnp.sum(policy[1] * mask) / count}
        if align.rpo_alpha:  # RPO (Pang et al. 2024): the chosen responses' NLL per token
            tokens = jnp.maximum(jnp.sum(batch["chosen_weights"]), 1.0)
            nll = -jnp.sum(policy[0] * mask) / tokens
            metrics["nll/chosen"] = nll
            loss = loss + align.rpo_alpha * nll
        return loss, metrics
    return objective


def reward_objective(align: AlignConfig) -> Callable:
    """(model with a score head, reference (unused), batch, rng) -> (Bradley-Terry loss, metrics)."""
    def objective(model, reference, batch, rng):
        keys = (None, None) if rng is None else tuple(jax.random.split(rng))
        scores = [sequence_scores(model, side(batch, s), k) for s, k in zip(SIDES, keys)]
        return losses.bradley_terry_loss(*scores, pair_mask(batch))
    return objective


def sequence_scores(model, rows: dict, rng=None) -> jax.Array:
    """[B] a reward model's score of each row: its head at the position predicting the EOS."""
    _, heads = apply_heads(model, rows, ("score",), False, rng)
    return at_index(heads["score"], last_response_index(rows["weights"]))


OBJECTIVES = {"dpo": dpo_objective, "reward": reward_objective}
USES_REFERENCE = {"dpo": True, "reward": False}


def make_pair_step(trainer, objective: Callable, reference) -> Callable:
    """(state, batch, reference) -> (state, metrics), jitted on the trainer's mesh."""
    graphdef, optimizer, schedule, seed = trainer.graphdef, trainer.optimizer, trainer.schedule, trainer.exp.seed

    def loss(params, reference, batch, rng):
        model = nnx.merge(graphdef, params)
        loss, metrics = objective(model, lambda: trainer.reference_model(params, reference), batch, rng)
        return loss, {**metrics, "loss": loss}
    grad_fn = trainable_grad(loss, trainer.trainable)

    def step(state: TrainState, batch: dict, reference) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        grads, metrics = grad_fn(state.params, reference, batch, rng)
        loss_value = metrics.pop("loss")
        params, opt_state, guard = apply_update(optimizer, grads, state.opt_state, state.params, loss_value)
        out = {"train/loss": loss_value, "train/grad_norm": optax.global_norm(grads),
               "train/lr": schedule(state.step), **{f"train/{k}": v for k, v in metrics.items()}, **guard}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), out

    return jax.jit(trainer.with_rules(step), donate_argnums=0,
                   in_shardings=(trainer.shardings, trainer.batch_sharding, reference_shardings(trainer, reference)),
                   out_shardings=(trainer.shardings, shd.replicated(trainer.mesh)))


def reference_shardings(trainer, reference):
    """The shardings of a reference argument (None: no reference, or the policy's own
    parameters with the adapters disabled)."""
    return None if reference is None else trainer.base().param_shardings


class PairValidation:
    """The objective and its metrics over held-out pair batches, averaged over real pairs."""

    def __init__(self, trainer, objective: Callable, reference):
        self.trainer, self.reference = trainer, reference

        def evaluate(params, reference, batch):
            model = nnx.merge(trainer.graphdef, params)
            loss, metrics = objective(model, lambda: trainer.reference_model(params, reference), batch, None)
            return {"loss": loss, **metrics, "pairs": jnp.sum(pair_mask(batch))}
        self.step = jax.jit(trainer.with_rules(evaluate),
                            in_shardings=(trainer.param_shardings, reference_shardings(trainer, reference),
                                          trainer.batch_sharding),
                            out_shardings=shd.replicated(trainer.mesh))

    def __call__(self, params, sets: dict) -> dict:
        totals: dict[str, float] = {}
        pairs = 0.0
        for batch in sets[""]:
            out = outputs_to_host(self.step(params, self.reference,
                                           to_global(row_fields(batch), self.trainer.batch_sharding)))
            count = float(out.pop("pairs"))
            pairs += count
            for key, value in out.items():
                totals[key] = totals.get(key, 0.0) + float(value) * count
        return {f"eval/{key}": value / max(pairs, 1.0) for key, value in totals.items()}
