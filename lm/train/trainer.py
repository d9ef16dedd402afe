"""A trainable run: the optimizer, the train state's shardings and the compiled train step on top
of ``Run`` (which also gives validation loss and samples). The loop itself is ``lm.train.fit``."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.data import objectives
from lm.data.loader import to_global
from lm.data import pipeline as data_lib
from lm.models.heads import attribute as head_attribute
from lm.models.transformer import block_stack_axes
from lm.parallel import sharding as shd
from lm.parallel.pipeline import bubble_fraction
from lm.peft.optim import frozen
from lm.peft.params import trainable_mask
from lm.train.metrics import flops_per_token
from lm.train.optimizer import make_optimizer, make_schedule
from lm.train.experiment import check_layout
from lm.train.run import Run
from lm.train.spikes import SkipBadSteps
from lm.train.state import TrainState, abstract_train_state, create_state, state_shardings
from lm.train.step import StepConfig, make_train_step


class Trainer(Run):
    """Owns the optimizer and the compiled steps of one experiment in one workdir."""

    # The metrics the progress line shows after each validation (None: loss and perplexity).
    eval_headline: tuple[str, ...] | None = None

    def __init__(self, config, workdir: str, devices=None):
        super().__init__(config, workdir, devices)
        exp = self.exp
        check_layout(exp, self.mesh, self.batch_sharding)
        self.schedule = make_schedule(exp.optimizer, self.optimizer_updates())
        self.trainable = self.trainable_mask()
        self.optimizer = make_optimizer(exp.optimizer, self.optimizer_updates(), block_stack_axes(exp.model))
        if self.trainable is not None:  # PEFT: frozen leaves get no update and no optimizer state
            self.optimizer = frozen(self.optimizer, self.trainable)
        if exp.train.spike_skip:
            self.optimizer = SkipBadSteps(self.optimizer, exp.train.spike_window,
                                          exp.train.spike_zscore)
        position = exp.model.max_len * exp.model.d_model if exp.model.positions == "learned" else 0
        self.flops_per_token = flops_per_token(exp.model, self.num_params, position, exp.data.seq_len)
        self.shardings = state_shardings(self.abstract, self.optimizer, self.mesh, self.layout)
        self.abstract_state = abstract_train_state(self.abstract, self.optimizer, self.shardings)
        step_cfg = StepConfig(z_loss=exp.train.z_loss, grad_accum_steps=exp.train.grad_accum_steps,
                              seed=exp.seed, packed=exp.data.packing)
        train_step = make_train_step(self.graphdef, self.optimizer, self.schedule, step_cfg,
                                     self.trainable)
        self.train_step = jax.jit(self.with_rules(train_step),
                                  in_shardings=(self.shardings, self.batch_sharding),
                                  out_shardings=(self.shardings, shd.replicated(self.mesh)),
                                  donate_argnums=0)

    def place_batch(self, batch: dict) -> dict:
        """A host batch as the train step takes it: on the mesh, split over the batch axes."""
        return to_global(batch, self.batch_sharding)

    def optimizer_updates(self) -> int:
        """Optimizer updates the learning-rate schedule spans: one per train step here."""
        return self.exp.train.steps

    def trainable_mask(self):
        """Which parameters train (None: all of them)."""
        return peft_trainable(self.abstract.to_pure_dict(), self.exp.peft, self.exp.heads)

    def peft_summary(self) -> dict:
        """The trained share of the model: method, trainable parameters, optimizer-state bytes."""
        params = self.abstract_state.params
        trainable = (self.num_params if self.trainable is None else
                     sum(int(p.size) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(self.trainable)) if t))
        opt_bytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(self.abstract_state.opt_state))
        return {"peft/method": self.exp.peft.method, "peft/trainable_params": trainable,
                "peft/optimizer_state_bytes": opt_bytes}

    @property
    def schedule_metrics(self) -> dict:
        """Constants of the parallel schedule worth logging next to the speed."""
        model = self.exp.model
        if not model.pipelined:
            return {}
        return {"train/bubble_fraction": bubble_fraction(
            model.pipeline_stages, model.microbatches, model.pipeline_repeats)}

    def init_state(self) -> TrainState:
        exp = self.exp
        return create_state(exp.model, self.optimizer, self.mesh, exp.seed, self.layout, exp.peft,
                            exp.heads)[1]

    def state_from_params(self, params: dict) -> TrainState:
        """Step 0 with ``params`` (already sharded) and a fresh optimizer state beside them."""
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.shardings.opt_state)(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), self.shardings.step)
        return TrainState(step=step, params=params, opt_state=opt_state)

    def train_iterator(self):
        """This host's training batches for the experiment's objective and architecture."""
        exp = self.exp
        windows = data_lib.make_train_iterator(exp.data, exp.seed, jax.process_index(),
                                               jax.process_count())
        return objectives.train_iterator(windows, exp.data, exp.model.arch, exp.seed)


def peft_trainable(params: dict, peft, heads: tuple[str, ...] = ()):
    """Which parameters a PEFT method trains, or None when every parameter trains ('none' is
    ordinary training, 'full' full fine-tuning). Scalar heads (lm.models.heads) always train."""
    if peft.method in ("none", "full"):
        return None
    mask = trainable_mask(params, peft)
    for name in heads:
        mask[head_attribute(name)] = jax.tree.map(lambda _: True, mask[head_attribute(name)])
    return mask
