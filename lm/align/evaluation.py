"""How an aligned policy is judged: held-out exact match answered greedily and sampled at
temperature 1, the mean reward of the sampled answers, and the KL from the starting (SFT) model.

The KL is estimated on the sampled answers themselves, sum over response tokens of
``log pi(y_t) - log pi_ref(y_t)`` averaged over questions (an unbiased estimate of
KL(pi || pi_ref) at temperature 1), so it is 0 for the starting model and grows as the policy
moves. ``PolicyEvaluation`` is a fit-loop hook: scores before training (a fresh start), at each
evaluation and after.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lm.align import losses
from lm.align.pairs import reference_shardings
from lm.align.reward_source import padded_chunks
from lm.align.rollout import processed_token_logps, rollout_rows
from lm.infer.decode import DecodeSettings
from lm.data.loader import to_global
from lm.fileio import write_atomically
from lm.parallel import sharding as shd
from lm.parallel.axes import outputs_to_host

SAMPLE_SEED = 1234  # the sampled answers of every evaluation draw from the same stream


class PolicyEvaluation:
    """Hook: ``align/before/*`` at a fresh start, ``align/after/*`` at the end."""

    def __init__(self, trainer, instances: list, reference, reward_source):
        self.trainer, self.instances, self.reference = trainer, instances, reference
        self.reward_source = reward_source
        self.samples: list[dict] = []

        def sums(params, reference, rows):
            policy = nnx.merge(trainer.graphdef, params)
            ref = trainer.reference_model(params, reference)
            weights = rows["weights"].astype(jnp.float32)
            logps = [losses.sequence_logps(processed_token_logps(m.forward(rows), rows["targets"], 1.0),
                                           weights) for m in (policy, ref)]
            return logps[0] - logps[1]
        ref_shardings = reference_shardings(trainer, reference)
        self._kl = jax.jit(trainer.with_rules(sums),
                           in_shardings=(trainer.param_shardings, ref_shardings, trainer.batch_sharding),
                           out_shardings=shd.replicated(trainer.mesh))

    def scores(self, params) -> dict:
        from lm.train.sft import answer_scores

        trainer, vocab = self.trainer, self.trainer.vocab
        max_new, batch_size = trainer.align.max_new_tokens, trainer.exp.data.batch_size
        greedy, answered = answer_scores(trainer, params, self.instances, max_new, batch_size)
        prompts = [vocab.encode(i.prompt) for i in self.instances]
        settings = DecodeSettings(max_new_tokens=max_new, temperature=1.0, stop_tokens=(vocab.eos_id,),
                                  seed=SAMPLE_SEED)
        sampled = trainer.scorer(params, batch_size).generate_tokens(prompts, settings)
        sampled_text = [vocab.decode(t).strip() for t in sampled]
        self.samples = [{**row, "sampled": s} for row, s in zip(answered, sampled_text)]
        return {"exact_match": greedy["exact_match"],
                "sampled_exact_match": 100.0 * float(np.mean([s == row["target"].strip()
                                                              for row, s in zip(answered, sampled_text)])),
                "reward": float(np.nanmean(self.reward_source(prompts, sampled))),
                "kl": self._kl_estimate(params, prompts, sampled)}

    def _kl_estimate(self, params, prompts, responses) -> float:
        exp, batch = self.trainer.exp, self.trainer.exp.data.batch_size
        rows = rollout_rows(prompts, responses, self.trainer.align.max_new_tokens, exp.data.seq_len,
                            self.trainer.vocab.eos_id)
        total = []
        for chunk, real in padded_chunks(rows, batch):
            out = outputs_to_host(self._kl(params, self.reference, to_global(chunk, self.trainer.batch_sharding)))
            total.extend(np.asarray(out)[real].tolist())
        return float(np.mean(total))

    def start(self, trainer, state, resumed: bool) -> dict:
        path = os.path.join(trainer.workdir, "align_before.json")
        if not resumed:
            before = self.scores(state.params)
            if jax.process_index() == 0:
                write_atomically(path, json.dumps(before))
            print("before: " + _fmt(before), flush=True)
        elif os.path.exists(path):
            with open(path) as f:
                before = json.load(f)
        else:
            before = {}
        return {f"align/before/{k}": v for k, v in before.items()}

    def evaluate(self, trainer, state, step: int, bar, writer) -> dict:
        """The same scores at each evaluation, as metrics (align/exact_match, ...) and a line
        (the last step's are ``end``'s)."""
        if step >= trainer.exp.train.steps:
            return {}
        scores = self.scores(state.params)
        writer.write(step, {f"align/{k}": v for k, v in scores.items()})
        bar.write(f"step {step}: " + _fmt(scores))
        return {}

    def end(self, trainer, state) -> dict:
        after = self.scores(state.params)
        print("after: " + _fmt(after), flush=True)
        if jax.process_index() == 0:
            write_atomically(os.path.join(trainer.workdir, "align_answers.jsonl"),
                             "".join(json.dumps(s) + "\n" for s in self.samples))
        return {f"align/after/{k}": v for k, v in after.items()}


def _fmt(scores: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
