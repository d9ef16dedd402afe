"""The trainer of the alignment modes: a ``Trainer`` whose policy starts from ``config.init_from``
(an SFT run) and whose frozen reference is that run's parameters.

The reference is never a second copy when a PEFT method trains: the policy with its PEFT
parameters set to zero is exactly the base model (a LoRA or adapter branch whose weights are all
zero adds zero), so the reference log-probs come from the same parameters with the adapters
disabled (a shared "policy" and reference made DPO's rewards stay 0 in TRL #1311). With full
fine-tuning the reference is the restored run itself, sharded like the policy.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from flax import nnx

from lm.align.config import AlignConfig, align_config
from lm.align.pairs import row_fields
from lm.data.loader import to_global
from lm.configlib import ConfigError
from lm.peft.params import is_peft_path, leaves_with_paths
from lm.train.run import Run
from lm.train.state import abstract_model
from lm.train.trainer import Trainer

log = logging.getLogger("lm.align")
PEFT_METHODS = ("none", "full", "lora", "adapter")
HEADLINES = {"reward": ("eval/loss", "eval/reward/accuracy"),
             "dpo": ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins")}


class AlignTrainer(Trainer):
    """``Trainer`` plus the reference model and the starting point of the policy."""

    def __init__(self, config, workdir: str, devices=None):
        check_align_model(config)
        super().__init__(config, workdir, devices)
        self.align: AlignConfig = align_config(config)
        self.init_from = config.get("init_from") or ""
        self.base_graphdef = abstract_model(self.exp.model)[0]
        self._base: Run | None = None

    def optimizer_updates(self) -> int:
        """PPO and GRPO update ``epochs x minibatches`` times per rollout batch (train step), and
        the schedule counts updates (so do ``config.optimizer.warmup_steps`` and ``decay_steps``)."""
        align = align_config(self.config)
        per_step = align.epochs * align.minibatches if self.config.mode in ("ppo", "grpo") else 1
        return self.exp.train.steps * per_step

    @property
    def eval_headline(self) -> tuple[str, ...]:
        """PPO and GRPO have no validation loss: the held-out answers are their measure."""
        return HEADLINES.get(self.config.mode, ())

    def place_batch(self, batch: dict):
        """Pair rows go on the mesh; rollout prompts stay on the host, to be decoded."""
        if self.config.mode in ("ppo", "grpo"):
            return batch
        return to_global(row_fields(batch), self.batch_sharding)

    @property
    def disables_adapters(self) -> bool:
        """The reference is the policy with its PEFT parameters zeroed (no second copy)."""
        return self.exp.peft.method in ("lora", "adapter")

    def base(self) -> Run:
        """The run of ``config.init_from`` on this mesh (checked: the same model, no PEFT)."""
        if self._base is None:
            self._base = starting_run(self.init_from, self)
        return self._base

    def initial_params(self) -> dict:
        """Fresh parameters (PEFT and heads at their initial values) with every parameter the
        starting run has taken from it, sharded on the mesh."""
        base, step = self.base().restore()
        log.info("starting from step %d of %s", step, self.init_from)
        fresh = self.init_params()
        return jax.jit(overlay, out_shardings=self.param_shardings)(fresh, base)

    def reference_params(self):
        """The frozen reference's parameters: None when it is the policy with its adapters
        disabled, else the starting run's parameters on the mesh."""
        if self.disables_adapters:
            return None
        return self.base().restore()[0]

    def reference_model(self, params, reference):
        """The reference as a model: ``reference`` merged with the base graph, or ``params`` with
        its PEFT parameters zeroed."""
        if reference is None:
            return nnx.merge(self.graphdef, disable_adapters(jax.lax.stop_gradient(params)))
        return nnx.merge(self.base_graphdef, jax.lax.stop_gradient(reference))


def check_align_model(config) -> None:
    """Alignment trains causal decoders with full fine-tuning, LoRA or adapters."""
    method = config.get("peft", {}).get("method", "none")
    if method not in PEFT_METHODS:
        raise ConfigError(f"config.peft.method={method!r}: alignment modes train with "
                          f"{', '.join(PEFT_METHODS)} (prefix and prompt tuning change the "
                          f"sequence the reference scores)")
    if not config.get("init_from"):
        raise ConfigError(f"config.mode={config.mode!r} needs config.init_from=<workdir of the "
                          f"supervised (SFT) run it starts from>")
    if config.mode in ("ppo", "grpo"):
        if config.model.get("dropout", 0.0):
            raise ConfigError(f"config.mode={config.mode!r} needs config.model.dropout=0: the rollout "
                              f"log-probs and the updates must score the same function")
        if jax.process_count() > 1:
            raise ConfigError(f"config.mode={config.mode!r} runs in one process (rollouts are "
                              f"gathered on its host); {jax.process_count()} processes were started")


def starting_run(init_from: str, trainer: Trainer) -> Run:
    """SFT's start (``lm.train.sft.base_run``: this mesh, the same model) that is also a plain
    supervised run: no head, no PEFT."""
    from lm.train.sft import base_run

    base = base_run(init_from, trainer)
    if base.exp.heads:
        raise ConfigError(f"config.init_from={init_from!r} is a config.mode={base.config.get('mode')!r} "
                          f"run (with a {'/'.join(base.exp.heads)} head); alignment starts from a "
                          f"supervised run: point init_from at the SFT run")
    if base.exp.peft.method not in ("none", "full"):
        raise ConfigError(f"config.init_from={init_from!r} was trained with "
                          f"peft.method={base.exp.peft.method!r}; alignment starts from a full "
                          f"model: fine-tune it with config.peft.method='full'")
    return base


def overlay(fresh: dict, base: dict) -> dict:
    """``fresh`` with every leaf that ``base`` also has replaced by ``base``'s."""
    return {key: (overlay(value, base[key]) if isinstance(value, dict) else base[key])
            if key in base else value for key, value in fresh.items()}


def disable_adapters(params: dict) -> dict:
    """``params`` with every PEFT parameter zero: the base model's function exactly."""
    paths = {path for path, _ in leaves_with_paths(params) if is_peft_path(path)}

    def zero(node, path=()):
        if isinstance(node, dict):
            return {k: zero(v, (*path, k)) for k, v in node.items()}
        return jnp.zeros_like(node) if path in paths else node
    return zero(params)
