"""``config.mode`` = 'ppo' | 'grpo': policy optimisation on the policy's own samples.

One train step of the fit loop is one rollout batch:

  prompts (config.data.batch_size rows; grpo: batch_size / group_size prompts, each G times)
    -> responses sampled with the cached decoder on the mesh (seed from (config.seed, step), so a
       resumed run draws the same rollouts)
    -> rewards: a named function of the text or a reward-model run (lm.align.reward_source);
       a non-finite reward drops its row from the step, counted in rollout/bad_rewards
    -> one jitted pass: log-probs under the sampling processing, the reference's log-probs,
       ppo: values, per-token KL penalty, GAE and whitened advantages; grpo: group-normalised
       advantages
    -> config.align.epochs passes of config.align.minibatches clipped updates (ppo: policy and
       value losses; grpo: policy loss with a k3 KL term)

PPO's adaptive KL coefficient is part of the data position (``PromptBatches``' state), so it is
checkpointed with it.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from lm.align import losses
from lm.align.config import AlignConfig
from lm.align.rollout import rollout_rows, sample, sampling_settings
from lm.configlib import ConfigError
from lm.data.batches import BatchIterator
from lm.data.loader import to_global
from lm.parallel.axes import outputs_to_host

log = logging.getLogger("lm.align")


class PromptBatches(BatchIterator):
    """Prompt indices of each step (each epoch in its own seeded order) and the KL coefficient."""

    def __init__(self, num_prompts: int, per_step: int, seed: int, kl_coef: float, adaptive: bool = False):
        def batch_at(step: int) -> dict:
            stream = step * per_step + np.arange(per_step)
            epochs, offsets = np.divmod(stream, num_prompts)
            order = [np.random.default_rng([seed, int(e)]).permutation(num_prompts)[o]
                     for e, o in zip(epochs, offsets)]
            return {"prompt_index": np.asarray(order, np.int64)}
        super().__init__(batch_at, seed)
        self.kl_coef, self.adaptive = float(kl_coef), adaptive

    def get_state(self) -> dict:
        return {**super().get_state(), "kl_coef": self.kl_coef}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if self.adaptive:  # a fixed coefficient is the config's, even if it changed since
            self.kl_coef = float(state.get("kl_coef", self.kl_coef))


def rollout_prompts(align: AlignConfig, seed: int) -> list[str]:
    from lm.instruct.synthetic import arithmetic_split

    if align.prompts == "arithmetic":
        return [i.prompt for i in arithmetic_split("train", align.train_pairs, align.digits, seed=seed)]
    kind, _, path = align.prompts.partition(":")
    if kind != "jsonl" or not path:
        raise ConfigError(f"config.align.prompts={align.prompts!r} must be 'arithmetic' or 'jsonl:<path>'")
    from lm.align.preference import read_prompts_jsonl
    try:
        return read_prompts_jsonl(path, "train", align.train_pairs)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"config.align.prompts: {e}") from None


class RolloutStep:
    """``(state, batch) -> (state, metrics)``: sample, reward, score, optimise."""

    def __init__(self, trainer, reference, reward_source, batches: PromptBatches, prompts: list[list[int]]):
        from lm.align.policy_steps import make_prepare, make_update

        self.trainer, self.align, self.kind = trainer, trainer.align, trainer.config.mode
        self.reference, self.reward_source, self.batches, self.prompts = reference, reward_source, batches, prompts
        self.prepare = make_prepare(trainer, reference)
        self.update = make_update(trainer)

    def __call__(self, state, batch: dict):
        trainer, align, exp = self.trainer, self.align, self.trainer.exp
        step = int(jax.device_get(state.step))
        prompts = [self.prompts[i] for i in batch["prompt_index"]]
        if self.kind == "grpo":
            prompts = [p for p in prompts for _ in range(align.group_size)]
        settings = sampling_settings(align, trainer.vocab.eos_id, seed=_rollout_seed(exp.seed, step))
        responses = sample(trainer, state.params, prompts, settings)
        scores = np.asarray(self.reward_source(prompts, responses), np.float32)
        bad = ~np.isfinite(scores)
        rows = rollout_rows(prompts, responses, align.max_new_tokens, exp.data.seq_len, trainer.vocab.eos_id)
        rows["weights"][bad] = 0.0  # a row without a finite reward does not train
        scores = self._fill(scores, bad)
        rows = to_global(rows, trainer.batch_sharding)
        stats = self.prepare(state.params, self.reference, rows, jnp.asarray(scores),
                             jnp.float32(self.batches.kl_coef))
        state, update_metrics = self._optimise(state, rows, stats, step)
        metrics = {**update_metrics, **self._rollout_metrics(scores, bad, responses, stats)}
        self._adapt_kl(metrics)
        return state.replace(step=state.step + 1), metrics

    def _fill(self, scores: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Rewards for the rows that got none: 0 (PPO: their rows do not train), or in GRPO the
        mean of the row's group, so that they do not move the group's mean."""
        if self.kind != "grpo" or not bad.any():
            return np.where(bad, 0.0, scores).astype(np.float32)
        finite = ~bad.reshape(-1, self.align.group_size)
        values = np.where(finite, scores.reshape(finite.shape), 0.0)
        means = values.sum(axis=1, keepdims=True) / np.maximum(finite.sum(axis=1, keepdims=True), 1)
        return np.where(finite, values, means).reshape(-1).astype(np.float32)

    def _optimise(self, state, rows, stats, step: int):
        align, batch = self.align, self.trainer.exp.data.batch_size
        size = batch // align.minibatches
        collected = []
        for epoch in range(align.epochs):
            order = np.random.default_rng([self.trainer.exp.seed, step, epoch]).permutation(batch)
            for start in range(0, batch, size):
                indices = jnp.asarray(np.sort(order[start:start + size]), jnp.int32)
                update_index = jnp.int32(step * align.epochs * align.minibatches + len(collected))
                state, metrics = self.update(state, rows, stats, indices, update_index)
                collected.append(metrics)
        first, last = collected[0], collected[-1]
        out = dict(last)
        for key in ("train/ratio", "train/clip_fraction"):  # the first update's: 1 and 0 exactly
            if key in first:
                out[key.replace("train/", "train/first_")] = first[key]
        return state, out

    def _rollout_metrics(self, scores, bad, responses, stats) -> dict:
        lengths = [len(r) for r in responses]
        out = {"rollout/reward": float(np.mean(scores[~bad])) if (~bad).any() else float("nan"),
               "rollout/bad_rewards": int(bad.sum()), "rollout/response_tokens": float(np.mean(lengths)),
               "rollout/kl": stats["kl_per_sequence"], "rollout/kl_coef": self.batches.kl_coef}
        if "zero_spread_fraction" in stats:
            out["rollout/zero_spread_fraction"] = stats["zero_spread_fraction"]
        return out

    def _adapt_kl(self, metrics: dict) -> None:
        align = self.align
        if self.kind != "ppo" or not align.kl_target:
            return
        observed = float(outputs_to_host(metrics["rollout/kl"]))
        self.batches.kl_coef = float(losses.adaptive_kl_coef(self.batches.kl_coef, observed, align.kl_target,
                                                             align.kl_horizon, self.trainer.exp.data.batch_size))


def encode_prompts(trainer, align: AlignConfig, texts: list[str]) -> list[list[int]]:
    """Token ids of the rollout prompts; each must leave room for the answer in a row."""
    from lm.instruct.rows import UnrepresentableTextError, check_representable

    seq_len, prompts = trainer.exp.data.seq_len, []
    for text in texts:
        try:
            check_representable(text, trainer.vocab, "a rollout prompt")
        except UnrepresentableTextError as e:
            raise ConfigError(f"config.align.prompts: {e}") from None
        prompts.append(trainer.vocab.encode(text))
    longest = max(len(p) for p in prompts)
    if longest + align.max_new_tokens > seq_len:
        raise ConfigError(f"a rollout prompt of {longest} tokens and config.align.max_new_tokens="
                          f"{align.max_new_tokens} do not fit config.data.seq_len={seq_len}; raise it "
                          f"to at least {longest + align.max_new_tokens}")
    return prompts


def _check_minibatches(trainer, align: AlignConfig) -> None:
    """Each minibatch of a rollout batch must split over the batch axes of the mesh."""
    from lm.parallel.axes import mesh_ways

    ways = mesh_ways(trainer.mesh, trainer.batch_sharding.spec[0])
    size = trainer.exp.data.batch_size // align.minibatches
    if size % ways:
        raise ConfigError(f"config.align.minibatches={align.minibatches} cuts config.data.batch_size="
                          f"{trainer.exp.data.batch_size} into minibatches of {size} rows, which do not "
                          f"divide over the {ways} ways of the mesh's batch axes; use fewer minibatches")


def _rollout_seed(seed: int, step: int) -> int:
    return int(np.random.default_rng([seed, step, 0x5A3]).integers(0, 2**31 - 1))


def run_policy_mode(config, workdir: str, devices=None) -> dict:
    """ppo or grpo: rollouts and the clipped objective through the fit loop."""
    from lm.align.modes import ensure_inputs, fit_and_report, validate_align

    align = validate_align(config)
    ensure_inputs(config, align, devices)
    return fit_and_report(*policy_training(config, workdir, devices))


def policy_training(config, workdir: str, devices=None, evaluate: bool = True) -> tuple:
    """(trainer with its rollout step, prompt batches, eval sets, hooks, extra results)."""
    from lm.align.config import align_config
    from lm.align.evaluation import PolicyEvaluation
    from lm.align.modes import eval_instances
    from lm.align.reward_source import RewardSource
    from lm.align.trainer import AlignTrainer

    align = align_config(config)
    trainer = AlignTrainer(config, workdir, devices)
    exp = trainer.exp
    _check_minibatches(trainer, align)
    texts = rollout_prompts(align, exp.seed)
    prompts = encode_prompts(trainer, align, texts)
    per_step = exp.data.batch_size // (align.group_size if config.mode == "grpo" else 1)
    batches = PromptBatches(len(prompts), per_step, exp.seed, align.kl_coef,
                            adaptive=config.mode == "ppo" and align.kl_target > 0)
    reference = trainer.reference_params()
    reward_source = RewardSource(trainer, align)
    trainer.train_step = RolloutStep(trainer, reference, reward_source, batches, prompts)
    trainer.validation = lambda params, sets: {}
    hooks = [PolicyEvaluation(trainer, eval_instances(align, exp.seed), reference, reward_source)] if evaluate else []
    return trainer, batches, {}, hooks, {"align/prompts": len(prompts)}
