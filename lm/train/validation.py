"""Validation loss of a run's parameters on its mesh, and the training-time text sample."""
from __future__ import annotations

import math

import jax

from lm.data import objectives
from lm.data import pipeline as data_lib
from lm.data.loader import to_global
from lm.parallel import sharding as shd
from lm.train.experiment import check_layout
from lm.train.step import make_eval_step


def eval_sets(run) -> dict[str, list]:
    """Validation batches by source: one set, or one per corpus of a mixture."""
    data, index, count = run.exp.data, jax.process_index(), jax.process_count()
    if data.mixture:
        from lm.data.mixture import source_eval_batches
        sets = source_eval_batches(data, index, count)
    else:
        sets = {"": data_lib.make_eval_batches(data, index, count)}
    return {name: objectives.eval_batches(batches, data, run.exp.model.arch)
            for name, batches in sets.items()}


class Validation:
    """eval/loss over every set (token-weighted), and eval/<source>/loss for each of several."""

    def __init__(self, run):
        check_layout(run.exp, run.mesh, run.batch_sharding)
        self.run = run
        self.step = jax.jit(run.with_rules(make_eval_step(run.graphdef, run.exp.data.packing)),
                            in_shardings=(run.param_shardings, run.batch_sharding),
                            out_shardings=shd.replicated(run.mesh))

    def __call__(self, params, sets: dict[str, list]) -> dict:
        sums = {name: self._loss_sums(params, batches) for name, batches in sets.items()}
        scores = _scores("eval", *map(sum, zip(*sums.values())))
        if len(sets) > 1:
            for name, (loss_sum, weight_sum) in sums.items():
                scores.update(_scores(f"eval/{name}", loss_sum, weight_sum))
            scores.update(self._domain_scores(sums))
        return scores

    def _domain_scores(self, sums: dict) -> dict:
        """eval/domain/<general|specialized>/loss of a mixture, from its sources' sums."""
        from lm.data.mixture import source_domains
        by_domain: dict[str, list] = {}
        for source, domain in source_domains(self.run.exp.data).items():
            by_domain.setdefault(domain, []).append(sums[source])
        return {key: value for domain, parts in by_domain.items()
                for key, value in _scores(f"eval/domain/{domain}", *map(sum, zip(*parts))).items()}

    def _loss_sums(self, params, batches) -> tuple[float, float]:
        loss_sum = weight_sum = 0.0
        for batch in batches:
            out = self.step(params, to_global(batch, self.run.batch_sharding))
            loss_sum += float(out["loss_sum"])
            weight_sum += float(out["weight_sum"])
        return loss_sum, weight_sum


def _scores(prefix: str, loss_sum: float, weight_sum: float) -> dict:
    loss = loss_sum / max(weight_sum, 1.0)
    return {f"{prefix}/loss": loss, f"{prefix}/perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}/bits_per_token": loss / math.log(2)}


def sample_text(run, params, seed: int) -> str:
    """``config.train``'s text sample from ``params`` on the run's mesh (every process calls it).
    A decoder refills its cache past the context; other models keep the prompt's last tokens
    that fit beside the new ones (``lm.models.decoding``)."""
    from lm.infer.decode import DecodeSettings, generate_past_context
    from lm.models.decoding import decoding_for

    train, vocab = run.exp.train, run.vocab
    prompt = vocab.encode(train.sample_prompt) or [vocab.pad_id]
    context = min(run.exp.data.seq_len, run.exp.model.max_len)
    scheme = decoding_for(run.exp.model)
    new_tokens = scheme.fit_new_tokens(train.sample_tokens, context)
    if not scheme.refills_past_context:
        prompt = prompt[-scheme.prompt_room(new_tokens, context):]
    settings = DecodeSettings(max_new_tokens=new_tokens, temperature=train.sample_temperature,
                              top_k=train.sample_top_k, seed=seed)
    tokens = generate_past_context(run.graphdef, params, prompt, settings, context,
                                   mesh=run.mesh, rules=run.rules)
    return train.sample_prompt + vocab.decode(tokens)
