"""Fits the Kneser-Ney n-gram baseline on an experiment's train split and scores it like the trainer.

``run_ngram(config, workdir)`` takes a full experiment config (``experiments/*.py``) with an
extra section ``config.ngram`` (fields and defaults: :class:`NGramConfig`; ``ngram_section()``
builds one). The model is fitted on the train split's tokens and evaluated on exactly the
batches ``make_eval_batches`` gives the Transformer: at position t of a row it sees the previous
``order - 1`` inputs of that row (fewer at the start of the row, as the Transformer does), and
the loss is the weighted mean of -log P(target), the trainer's ``eval/loss``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import ml_collections
import numpy as np

from lm.baselines.ngram import MAX_ORDER, NGramLM
from lm.configlib import ConfigError, Section, at_least, fraction, option, rule
from lm.fileio import append_text, write_atomically
from lm.data import pipeline

RESULT_FILE = "result_ngram.json"
SAMPLES_FILE = "samples.txt"


@dataclasses.dataclass(frozen=True)
class NGramConfig(Section):
    where = "config.ngram"
    order: int = option(3, "n: the model conditions on the previous n - 1 tokens",
                        at_least(1), rule(lambda n: n <= MAX_ORDER, f"must be <= {MAX_ORDER}",
                                          MAX_ORDER + 1))
    discount: float = option(0.0, "one absolute discount in (0, 1] for every level; 0 = "
                             "estimate each level's from its counts-of-counts",
                             fraction(low_open=False, high_open=False))
    sample_tokens: int = option(200, "tokens sampled after config.train.sample_prompt",
                                at_least(0, "0: none"))
    sample_temperature: float = option(0.8, "0 = greedy", at_least(0))
    sample_top_k: int = option(0, "sample from the k most likely tokens", at_least(0, "0: all"))
    train_tokens: int = option(0, "count only the first N train tokens, e.g. a neural model's "
                               "budget", at_least(0, "0: all"))


def ngram_section(**overrides) -> ml_collections.ConfigDict:
    """A ``config.ngram`` section with the defaults of :class:`NGramConfig` and ``overrides``."""
    return NGramConfig.defaults(**overrides)


# ----------------------------------------------------------------------------- validation

def _check_data(data: pipeline.DataConfig) -> None:
    if data.packing:
        raise ConfigError("config.data.packing=True is not supported by the n-gram baseline, "
                          "which scores unpacked windows of the corpus; set packing=False.")
    if data.backend == "synthetic":
        raise ConfigError("config.data.backend='synthetic' has no corpus to count n-grams of; "
                          "use backend 'array' or 'seqio'.")


def ngram_config(config) -> NGramConfig:
    """The checked ``config.ngram`` section (defaults where it is absent)."""
    return NGramConfig.from_config(config.get("ngram"))


def validate_ngram(config) -> None:
    """Raises a ConfigError naming the field for a bad ``config.ngram`` or unsupported data."""
    ngram_config(config)
    _check_data(pipeline.DataConfig.from_config(config.data))


# ----------------------------------------------------------------------------- data

def train_pieces(data: pipeline.DataConfig) -> list[np.ndarray]:
    """The train split's tokens: one array, or one per source of a mixture (n-grams are
    counted within each source, never across two)."""
    if not data.mixture:
        return [pipeline.split_tokens(data, "train")]
    from lm.data import mixture as mixture_lib

    return [pipeline.split_tokens(mixture_lib.source_config(data, source), "train")
            for source in mixture_lib.parse_mixture(data.mixture).sources]


def first_tokens(pieces: list[np.ndarray], budget: int) -> list[np.ndarray]:
    """The leading ``budget`` tokens of the pieces in order (all of them for budget 0)."""
    if not budget:
        return pieces
    kept = []
    for piece in pieces:
        if budget <= 0:
            break
        kept.append(piece[:budget])
        budget -= len(kept[-1])
    return kept


def eval_sets(data: pipeline.DataConfig) -> dict[str, list[pipeline.Batch]]:
    """The trainer's validation batches: one set, or one per source of a mixture (together
    exactly ``make_eval_batches``)."""
    if data.mixture:
        from lm.data.mixture import source_eval_batches

        return source_eval_batches(data)
    return {"": pipeline.make_eval_batches(data)}


# ----------------------------------------------------------------------------- metric

def row_contexts(inputs_bt: np.ndarray, width: int) -> np.ndarray:
    """int64 [B, T, width]: at position t the inputs t - width + 1 .. t of the same row, with
    -1 for positions before the row's start."""
    length = inputs_bt.shape[1]
    index_tw = np.arange(length)[:, None] - (width - 1) + np.arange(width)[None, :]
    gathered_btw = inputs_bt.astype(np.int64)[:, np.maximum(index_tw, 0)]
    return np.where(index_tw >= 0, gathered_btw, -1)


def loss_sums(model: NGramLM, batches: list[pipeline.Batch]) -> tuple[float, float]:
    """(sum of weight * -log P(target), sum of weights), as the trainer's eval step sums them."""
    width = model.order - 1
    contexts, targets, weights = [], [], []
    for batch in batches:
        inputs_bt = np.asarray(batch["inputs"])
        contexts.append(row_contexts(inputs_bt, width).reshape(inputs_bt.size, width))
        targets.append(np.asarray(batch["targets"]).reshape(-1))
        weights.append(np.asarray(batch["weights"], np.float64).reshape(-1))
    if not batches:
        return 0.0, 0.0
    contexts_nw, targets_n, weights_n = map(np.concatenate, (contexts, targets, weights))
    scored = weights_n != 0
    log_probs_n = model.token_log_probs(contexts_nw[scored], targets_n[scored])
    return float(-np.sum(log_probs_n * weights_n[scored])), float(np.sum(weights_n))


def scores(prefix: str, loss_sum: float, weight_sum: float) -> dict[str, float]:
    """The trainer's eval scores (``lm.train.loop._scores``): loss, perplexity, bits/token."""
    loss = loss_sum / max(weight_sum, 1.0)
    return {f"{prefix}/loss": loss, f"{prefix}/perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}/bits_per_token": loss / math.log(2)}


def evaluate(model: NGramLM, sets: dict[str, list[pipeline.Batch]]) -> dict[str, float]:
    """eval/loss over every set (token-weighted), and eval/<source>/... for each of several."""
    sums = {name: loss_sums(model, batches) for name, batches in sets.items()}
    result = scores("eval", sum(s[0] for s in sums.values()), sum(s[1] for s in sums.values()))
    if len(sets) > 1:
        for name, (loss_sum, weight_sum) in sums.items():
            result.update(scores(f"eval/{name}", loss_sum, weight_sum))
    return result


# ----------------------------------------------------------------------------- run

def sample_text(model: NGramLM, config, ngram: NGramConfig, data: pipeline.DataConfig) -> str:
    """``config.train.sample_prompt`` and its continuation, decoded like the trainer's samples."""
    prompt = config.train.get("sample_prompt", "\n") if "train" in config else "\n"
    vocab = pipeline.vocabulary(data)
    tokens = model.sample(vocab.encode(prompt), ngram.sample_tokens, ngram.sample_temperature,
                          ngram.sample_top_k, seed=int(config.get("seed", 0)))
    return prompt + vocab.decode(tokens)


def run_ngram(config, workdir: str) -> dict:
    """Fits, evaluates and samples the n-gram baseline; writes ``workdir/result_ngram.json`` and
    appends the sample to ``workdir/samples.txt``. Returns the result."""
    validate_ngram(config)
    ngram = ngram_config(config)
    data = pipeline.DataConfig.from_config(config.data)
    pieces = first_tokens(train_pieces(data), ngram.train_tokens)
    start = time.perf_counter()
    model = NGramLM.fit(pieces, ngram.order, pipeline.vocab_size(data), ngram.discount or None)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate(model, eval_sets(data))
    result["eval_seconds"] = time.perf_counter() - start
    result.update(order=ngram.order, num_params=model.num_parameters, fit_seconds=fit_seconds,
                  train_tokens=int(sum(len(p) for p in pieces)), discounts=model.discounts)
    result["sample"] = sample_text(model, config, ngram, data) if ngram.sample_tokens else ""
    _write(workdir, result, ngram.order)
    return result


def _write(workdir: str, result: dict, order: int) -> None:
    write_atomically(os.path.join(workdir, RESULT_FILE), json.dumps(result, indent=2))
    if result["sample"]:
        append_text(os.path.join(workdir, SAMPLES_FILE), f"=== ngram order {order} ===\n{result['sample']}\n\n")
