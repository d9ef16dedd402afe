"""Where rollouts' rewards come from: a named programmatic function (``fn:<name>``, on the decoded
text) or a reward-model run (``run:<workdir>``, its score head on the mesh).

A reward model must read the policy's tokens: a run trained on another vocabulary is refused
before anything is sampled. A function's non-finite reward is passed on as NaN, and the rollout
step drops that row and counts it (``rollout/bad_rewards``); a function that raises, or a reward
model that scores NaN (a damaged checkpoint), stops the run with the prompt named.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from lm.align.config import AlignConfig
from lm.align.pairs import sequence_scores
from lm.align.rollout import rollout_rows
from lm.configlib import ConfigError
from lm.train.errors import RunStopped
from lm.data.loader import to_global
from lm.parallel import sharding as shd
from lm.parallel.axes import outputs_to_host


class RewardSource:
    """``rewards(prompt_tokens, response_tokens) -> [B] float32`` for one trainer's rollouts."""

    def __init__(self, trainer, align: AlignConfig):
        self.trainer, self.align = trainer, align
        self.kind, self.name = align.reward_kind
        if self.kind == "fn":
            from lm.align.rewards import reward_function
            try:
                self.function = reward_function(self.name)
            except ValueError as e:
                raise ConfigError(f"config.align.reward={align.reward!r}: {e}") from None
        else:
            self.model_run, self.model_params = load_reward_model(self.name, trainer)
            self._score = jax.jit(trainer.with_rules(self._scores),
                                  in_shardings=(self.model_run.param_shardings, trainer.batch_sharding),
                                  out_shardings=shd.replicated(trainer.mesh))

    def _scores(self, params, rows):
        return sequence_scores(nnx.merge(self.model_run.graphdef, params), rows)

    def __call__(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> np.ndarray:
        if self.kind == "fn":
            from lm.align.rewards import score_responses
            vocab = self.trainer.vocab
            try:
                return score_responses(self.function, [vocab.decode(p) for p in prompts],
                                       [vocab.decode(r) for r in responses], keep_non_finite=True)
            except ValueError as e:
                raise ConfigError(f"config.align.reward={self.align.reward!r}: {e}") from None
        return self._model_rewards(prompts, responses)

    def _model_rewards(self, prompts, responses) -> np.ndarray:
        exp = self.trainer.exp
        rows = rollout_rows(prompts, responses, self.align.max_new_tokens, exp.data.seq_len,
                            self.trainer.vocab.eos_id, always_eos=True)
        sharding = self.trainer.batch_sharding
        scores = np.concatenate([
            np.asarray(outputs_to_host(self._score(self.model_params, to_global(chunk, sharding))))[real]
            for chunk, real in padded_chunks(rows, exp.data.batch_size)])
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise RunStopped(f"the reward model in {self.name} scored a rollout "
                                     f"{scores[bad[0]]} for prompt {self.trainer.vocab.decode(prompts[bad[0]])!r}; "
                                     f"its checkpoint may be damaged")
        return scores.astype(np.float32)


def padded_chunks(rows: dict, batch_size: int):
    """(chunk of ``batch_size`` rows, which of them are real) over ``rows``, the last chunk
    padded as ``eval_row_batches`` pads."""
    from lm.train.sft_data import eval_row_batches

    count = len(rows["weights"])
    for index, chunk in enumerate(eval_row_batches(rows, batch_size)):
        yield chunk, np.arange(index * batch_size, (index + 1) * batch_size) < count


def load_reward_model(workdir: str, trainer):
    """The reward-model run in ``workdir`` on ``trainer``'s mesh and its parameters."""
    from lm.train.run import Run

    devices = list(trainer.mesh.devices.flat)
    run = Run.from_workdir(workdir, use_time={"mesh": trainer.config.mesh}, devices=devices)
    if "score" not in run.exp.heads:
        raise ConfigError(f"config.align.reward='run:{workdir}' is not a reward model (its "
                          f"config.mode is {run.config.get('mode')!r}); train one with "
                          f"config.mode='reward'")
    if run.vocab.to_json() != trainer.vocab.to_json():
        raise ConfigError(f"config.align.reward='run:{workdir}' reads another vocabulary than the "
                          f"policy ({run.exp.data.vocab}, {run.vocab.vocab_size} ids there; "
                          f"{trainer.exp.data.vocab}, {trainer.vocab.vocab_size} here): train the "
                          f"reward model on the policy's config.data")
    params, _ = run.restore()
    return run, params
