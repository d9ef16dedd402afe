"""lm-evaluation-harness requests (lm/eval/scoring.py) against the plain model forward, one
sequence at a time without batching or padding."""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.data.vocab import EOS_ID, SyntheticVocabulary
from lm.eval.metrics import rolling_windows
from lm.eval.scoring import ModelScorer, generation_settings
from lm.eval.trained import scorer_from_workdir
from lm.infer.decode import DECODER_START_ID, DecodeSettings, generate
from lm.models import ModelConfig, build
from lm.train.checkpoint import CheckpointError
from tests.helpers import small_config

VOCAB = SyntheticVocabulary(24)
WINDOW = 16
TINY = dict(vocab_size=VOCAB.vocab_size, num_layers=2, d_model=16, num_heads=2, max_len=WINDOW,
            init_std=0.3)
TOL = dict(rtol=1e-5, atol=1e-5)


def text(ids) -> str:
    return " ".join(str(int(i)) for i in ids)


def random_ids(count: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, VOCAB.vocab_size, size=count).tolist()


# (context, continuation) lengths in tokens: 12 + 5 fills the window of 16, 30 is past it.
LENGTHS = [(5, 3), (1, 1), (12, 5), (30, 6), (3, 6)]
REQUESTS = [(text(random_ids(n, seed)), " " + text(random_ids(m, seed + 100)))
            for seed, (n, m) in enumerate(LENGTHS)]


@functools.lru_cache(maxsize=None)
def scorer_for(arch: str) -> tuple[ModelScorer, nnx.Module]:
    model = build(ModelConfig(arch=arch, **TINY), seed=1)
    graphdef, state = nnx.split(model)
    return ModelScorer(graphdef, state.to_pure_dict(), model.cfg, VOCAB, WINDOW, batch_size=4), model


@functools.partial(jax.jit, static_argnums=0)
def plain_forward(graphdef, params, tokens_bt, decoder_tokens_bt=None, bidirectional_bt=None):
    """Logits [1, T, V] of the model's own call on one unpadded sequence (jitted only to save
    op-by-op compilation)."""
    model = nnx.merge(graphdef, params)
    if decoder_tokens_bt is not None:
        return model(tokens_bt, decoder_tokens_bt)
    return model(tokens_bt, bidirectional_bt=bidirectional_bt)


def plain_scores(model, context: list[int], continuation: list[int]) -> tuple[np.ndarray, bool]:
    """Per-token log-probabilities of ``continuation`` and whether each is the argmax, from one
    unpadded forward pass; the context is cut from the left as lm-evaluation-harness does."""
    graphdef, state = nnx.split(model)
    params = state.to_pure_dict()
    arch = model.cfg.arch
    if arch == "encoder_decoder":
        decoder_inputs = [DECODER_START_ID] + continuation[:-1]
        logits = plain_forward(graphdef, params, jnp.asarray([context[-WINDOW:]]),
                               jnp.asarray([decoder_inputs]))[0]
    else:
        sequence = (context + continuation)[-(WINDOW + 1):]
        inputs = sequence[:-1]
        prefix = None
        if arch == "prefix_decoder":
            kept = len(sequence) - len(continuation)
            prefix = jnp.asarray([[1] * kept + [0] * (len(inputs) - kept)])
        logits = plain_forward(graphdef, params, jnp.asarray([inputs]), bidirectional_bt=prefix)
        logits = logits[0, len(inputs) - len(continuation):]
    logprobs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), np.float64)
    picked = logprobs[np.arange(len(continuation)), continuation]
    return picked, bool(np.all(np.argmax(logprobs, axis=-1) == continuation))


@pytest.mark.parametrize("arch", ["decoder", "prefix_decoder", "encoder_decoder", "lstm"])
def test_loglikelihood_equals_plain_forward(arch):
    scorer, model = scorer_for(arch)
    results = scorer.loglikelihood(REQUESTS)
    assert len(results) == len(REQUESTS)
    for (context, continuation), (loglik, greedy) in zip(REQUESTS, results):
        picked, plain_greedy = plain_scores(model, VOCAB.encode(context), VOCAB.encode(continuation))
        np.testing.assert_allclose(loglik, picked.sum(), **TOL)
        assert greedy == plain_greedy


def test_prefix_decoder_reads_the_context_bidirectionally():
    prefix_scorer, prefix_model = scorer_for("prefix_decoder")
    context, continuation = REQUESTS[0]
    graphdef, state = nnx.split(prefix_model)
    causal_cfg = ModelConfig(arch="decoder", **TINY)
    causal = ModelScorer(graphdef, state.to_pure_dict(), causal_cfg, VOCAB, WINDOW)
    bidirectional = prefix_scorer.loglikelihood([(context, continuation)])[0][0]
    assert abs(bidirectional - causal.loglikelihood([(context, continuation)])[0][0]) > 1e-3


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_batching_and_padding_do_not_change_results(arch):
    scorer, _ = scorer_for(arch)
    batched = scorer.loglikelihood(REQUESTS)
    for request, (loglik, greedy) in zip(REQUESTS, batched):
        alone_loglik, alone_greedy = scorer.loglikelihood([request])[0]
        np.testing.assert_allclose(loglik, alone_loglik, **TOL)
        assert greedy == alone_greedy


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_is_greedy_for_greedy_continuation_only(arch):
    scorer, _ = scorer_for(arch)
    context = random_ids(6, seed=7)
    tokens = generate(scorer.graphdef, scorer.params, [context], DecodeSettings(max_new_tokens=4)).tokens[0]
    assert scorer.loglikelihood([(text(context), " " + text(tokens))])[0][1] is True
    changed = list(tokens)
    changed[1] = 3 + (changed[1] - 2) % (VOCAB.vocab_size - 3)  # another real token
    assert changed[1] != tokens[1]
    assert scorer.loglikelihood([(text(context), " " + text(changed))])[0][1] is False


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_rolling_loglikelihood_sums_the_windows(arch):
    scorer, model = scorer_for(arch)
    documents = [random_ids(41, seed=11), random_ids(7, seed=12)]
    totals = scorer.loglikelihood_rolling([text(d) for d in documents])
    for document, total in zip(documents, totals):
        windows = list(rolling_windows(document, WINDOW, prefix_token=EOS_ID))
        assert sum(len(target) for _, target in windows) == len(document)
        by_hand = sum(plain_scores(model, context, target)[0].sum() for context, target in windows)
        np.testing.assert_allclose(total, by_hand, **TOL)
    assert len(list(rolling_windows(documents[0], WINDOW, prefix_token=EOS_ID))) == 3


def test_generate_until_stops_at_stop_string():
    scorer, _ = scorer_for("decoder")
    context = text(random_ids(5, seed=3))
    full = scorer.generate_until([(context, {"max_gen_toks": 8})])[0]
    words = full.split()
    assert len(words) >= 3, f"greedy continuation too short for the test: {full!r}"
    stop = " " + words[2]
    cut = scorer.generate_until([(context, {"until": [stop], "max_gen_toks": 8}),
                                 (context, {"until": stop, "max_gen_toks": 8, "do_sample": False})])
    assert cut == [full[: full.index(stop)]] * 2
    assert len(cut[0]) < len(full)


def test_generate_until_past_the_window_continues_greedy_text():
    scorer, _ = scorer_for("decoder")
    context = text(random_ids(5, seed=3))
    short = scorer.generate_until([(context, {"max_gen_toks": 8})])[0].split()
    long = scorer.generate_until([(context, {"max_gen_toks": WINDOW + 4})])[0].split()
    assert long[: len(short)] == short and len(long) <= WINDOW + 4


def test_generation_settings_follow_the_harness():
    assert generation_settings({"until": "\n\n"}, EOS_ID).stop_strings == ("\n\n",)
    assert generation_settings({}, EOS_ID).temperature == 0.0
    assert generation_settings({"do_sample": True}, EOS_ID).temperature == 1.0
    assert generation_settings({"do_sample": False, "temperature": 0.7}, EOS_ID).temperature == 0.0
    with pytest.raises(ValueError, match="num_beams"):
        generation_settings({"num_beams": 4}, EOS_ID)


def test_encoder_is_refused():
    cfg = ModelConfig(arch="encoder", **TINY)
    graphdef, state = nnx.split(build(cfg))
    with pytest.raises(ValueError, match="arch='encoder' is a bidirectional"):
        ModelScorer(graphdef, state.to_pure_dict(), cfg, VOCAB, WINDOW)


def test_from_workdir_restores_the_trained_model(tmp_path, one_device):
    from lm.train.loop import Trainer, pretrain

    config = small_config(steps=2, num_layers=1, d_model=16, num_heads=2, num_kv_heads=0)
    workdir = str(tmp_path / "run")
    final = pretrain(config, workdir, devices=one_device)
    scorer = scorer_from_workdir(workdir)
    assert (scorer.step, scorer.window, scorer.arch) == (2, 16, "decoder")
    # The validation loss of training, recomputed as loglikelihood requests: the first input
    # token is the context, the 16 targets the continuation.
    batches = Trainer(config, workdir, one_device).eval_sets()[""]
    requests = [(text(inputs[:1]), " " + text(targets))
                for batch in batches for inputs, targets in zip(batch["inputs"], batch["targets"])]
    logliks = [loglik for loglik, _ in scorer.loglikelihood(requests)]
    np.testing.assert_allclose(-np.mean(logliks) / config.data.seq_len, final["eval/loss"], rtol=1e-5)

    empty = tmp_path / "empty"
    empty.mkdir()
    with open(os.path.join(workdir, "config.json")) as f:
        (empty / "config.json").write_text(json.dumps(json.load(f)))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        scorer_from_workdir(str(empty))
