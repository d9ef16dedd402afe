"""The Kneser-Ney n-gram baseline: exact probabilities, the eval metric, sampling, config checks."""
import itertools
import json
import math

import jax
import ml_collections
import numpy as np
import pytest

from lm.baselines import run as ngram_run
from lm.baselines.ngram import NGramLM
from lm.configlib import ConfigError
from lm.infer.sample import sample_logits

VOCAB = 6  # the toy corpus never uses token 5: only the uniform floor gives it mass
TOY = [0, 1, 2, 0, 1, 3, 0, 0, 1, 2, 4, 1, 2, 0, 3, 3, 1, 0, 2, 2, 1, 0, 1, 2, 0, 4, 0, 1,
       1, 2, 3, 0, 1, 2, 0, 2, 1, 4, 4, 0, 1, 3, 2, 0, 0, 1, 2, 1]


# ----------------------------------------------------------------------------- reference

class BruteForceKN:
    """Interpolated Kneser-Ney recomputed by plain counting over the corpus, one query at a time.

    The order-(m + 1) model answers a context of m tokens: raw counts at its top level,
    continuation counts (distinct left neighbours) below, the uniform distribution at level 0.
    """

    def __init__(self, pieces, vocab_size, discount=None):
        self.pieces = [list(p) for p in pieces]
        self.vocab_size = vocab_size
        self.fixed_discount = discount

    def raw_counts(self, k):
        counts = {}
        for piece in self.pieces:
            for i in range(len(piece) - k + 1):
                gram = tuple(piece[i:i + k])
                counts[gram] = counts.get(gram, 0) + 1
        return counts

    def continuation_counts(self, k):
        left_neighbours = {}
        for piece in self.pieces:
            for i in range(1, len(piece) - k + 1):
                left_neighbours.setdefault(tuple(piece[i:i + k]), set()).add(piece[i - 1])
        return {gram: len(before) for gram, before in left_neighbours.items()}

    def discount(self, counts):
        if self.fixed_discount is not None:
            return self.fixed_discount
        n1 = sum(1 for c in counts.values() if c == 1)
        n2 = sum(1 for c in counts.values() if c == 2)
        return n1 / (n1 + 2 * n2) if n1 else 0.5

    def prob(self, context, token):
        top = len(context) + 1
        return self._level(top, top, tuple(context), token)

    def _level(self, k, top, history, token):
        if k == 0:
            return 1.0 / self.vocab_size
        lower = self._level(k - 1, top, history[1:], token)
        counts = self.raw_counts(k) if k == top else self.continuation_counts(k)
        d = self.discount(counts)
        after = {gram[-1]: c for gram, c in counts.items() if gram[:-1] == history}
        total = sum(after.values())
        if total == 0:
            return lower
        return (max(after.get(token, 0) - d, 0) + d * len(after) * lower) / total


def _all_contexts(length, vocab_size):
    return [list(c) for c in itertools.product(range(vocab_size), repeat=length)]


def _check_against_reference(model, reference, order):
    for length in range(order):  # full contexts, and the shorter ones of a row's start
        contexts = _all_contexts(length, VOCAB)
        padded = np.array([[-1] * (order - 1 - length) + c for c in contexts],
                          dtype=np.int64).reshape(len(contexts), order - 1)
        got = np.exp(model.log_probs(padded))
        want = np.array([[reference.prob(c, w) for w in range(VOCAB)] for c in contexts])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        targets = np.arange(len(contexts)) % VOCAB
        np.testing.assert_allclose(np.exp(model.token_log_probs(padded, targets)),
                                   want[np.arange(len(contexts)), targets], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- probabilities

@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_brute_force_reference(order):
    model = NGramLM.fit(np.array(TOY), order, VOCAB)
    _check_against_reference(model, BruteForceKN([TOY], VOCAB), order)


def test_fixed_discount_and_separate_pieces_match_reference():
    pieces = [np.array(TOY[:30]), np.array(TOY[30:])]  # no n-gram straddles the cut
    model = NGramLM.fit(pieces, 3, VOCAB, discount=0.75)
    assert model.discounts["raw"] == [0.75] * 3
    _check_against_reference(model, BruteForceKN(pieces, VOCAB, discount=0.75), 3)


def test_unseen_tokens_and_contexts_keep_mass():
    model = NGramLM.fit(np.array(TOY), 4, VOCAB)
    probs = np.exp(model.log_probs(np.array([[5, 5, 5], [4, 4, 4], [0, 1, 2]])))
    assert np.all(probs > 0)
    # Context (5, 5, 5) is never seen at any level: the order-4 model falls back to the
    # unigram continuation distribution, the same as for the empty context at level 1.
    reference = BruteForceKN([TOY], VOCAB)
    continuation_unigram = [reference._level(1, 4, (), w) for w in range(VOCAB)]
    np.testing.assert_allclose(probs[0], continuation_unigram, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6])
def test_distributions_sum_to_one(order):
    rng = np.random.default_rng(order)
    vocab = 40
    corpus = rng.zipf(1.5, 3000) % vocab
    model = NGramLM.fit(corpus, order, vocab)
    contexts = np.concatenate([rng.integers(0, vocab, (50, order - 1)),  # mostly unseen
                               np.lib.stride_tricks.sliding_window_view(corpus, order - 1)[:50]])
    contexts[:10, :min(order - 1, 2)] = -1  # some shortened contexts
    np.testing.assert_allclose(np.exp(model.log_probs(contexts)).sum(axis=1), 1.0, atol=1e-12)


def test_order_one_is_the_closed_form():
    counts = np.bincount(TOY, minlength=VOCAB)
    n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
    d = n1 / (n1 + 2 * n2) if n1 else 0.5
    total, types = len(TOY), np.count_nonzero(counts)
    want = np.maximum(counts - d, 0) / total + d * types / total / VOCAB
    model = NGramLM.fit(np.array(TOY), 1, VOCAB)
    got = np.exp(model.log_probs(np.zeros((3, 0), np.int64)))
    np.testing.assert_allclose(got, np.tile(want, (3, 1)), rtol=0, atol=1e-15)
    assert model.num_parameters == types


def test_rejects_keys_beyond_63_bits_and_bad_ids():
    with pytest.raises(ValueError, match="63 bits"):
        NGramLM.fit(np.zeros(10, np.int64), 5, 70_000)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        NGramLM.fit(np.array([0, 6]), 2, VOCAB)
    model = NGramLM.fit(np.array(TOY), 3, VOCAB)
    with pytest.raises(ValueError, match="left"):
        model.log_probs(np.array([[1, -1]]))


# ----------------------------------------------------------------------------- eval metric

def test_eval_metric_matches_hand_computation():
    order = 3
    model = NGramLM.fit(np.array(TOY), order, VOCAB)
    p = BruteForceKN([TOY], VOCAB).prob
    batch_a = {"inputs": np.array([[0, 1, 2, 0], [3, 3, 1, 5]]),
               "targets": np.array([[1, 2, 0, 3], [3, 1, 5, 0]]),
               "weights": np.array([[1, 1, 0, 1], [0, 0, 0, 1]], np.float32)}
    batch_b = {"inputs": np.array([[4, 0, 1, 2]]), "targets": np.array([[0, 1, 2, 0]]),
               "weights": np.array([[1, 0, 0, 0]], np.float32)}
    # Contexts are the previous (order - 1) inputs of the same row, shorter at the row start.
    log_terms = [math.log(p([0], 1)), math.log(p([0, 1], 2)), math.log(p([2, 0], 3)),
                 math.log(p([1, 5], 0)), math.log(p([4], 0))]
    want = -sum(log_terms) / 5
    got = ngram_run.evaluate(model, {"": [batch_a, batch_b]})
    assert got["eval/loss"] == pytest.approx(want, rel=1e-12)
    assert got["eval/perplexity"] == pytest.approx(math.exp(want), rel=1e-12)
    assert got["eval/bits_per_token"] == pytest.approx(want / math.log(2), rel=1e-12)


def test_row_contexts_stay_inside_the_row():
    inputs = np.array([[7, 8, 9], [1, 2, 3]])
    np.testing.assert_array_equal(ngram_run.row_contexts(inputs, 2),
                                  [[[-1, 7], [7, 8], [8, 9]], [[-1, 1], [1, 2], [2, 3]]])
    assert ngram_run.row_contexts(inputs, 0).shape == (2, 3, 0)


# ----------------------------------------------------------------------------- sampling

def _fitted_sampler_model():
    corpus = np.random.default_rng(3).integers(0, 9, 400)
    return NGramLM.fit(corpus, 3, 9)


def test_top_k_one_is_the_argmax_continuation():
    model = _fitted_sampler_model()
    history, greedy = [4, 2], []
    for _ in range(15):
        logits = model.log_probs([history[-2:]])[0].astype(np.float32)
        top_two = np.sort(logits)[-2:]
        assert top_two[1] - top_two[0] > 1e-4  # no tie, so the argmax is unambiguous
        greedy.append(int(np.argmax(logits)))
        history.append(greedy[-1])
    assert model.sample([4, 2], 15, temperature=0.8, top_k=1, seed=5) == greedy
    assert model.sample([4, 2], 15, temperature=0.0, seed=9) == greedy


def test_sampling_is_seeded_and_uses_the_shared_sampler():
    model = _fitted_sampler_model()
    first = model.sample([1], 30, temperature=1.0, top_k=4, seed=11)
    assert model.sample([1], 30, temperature=1.0, top_k=4, seed=11) == first
    assert model.sample([1], 30, temperature=1.0, top_k=4, seed=12) != first
    history, rng = [1], jax.random.key(11)
    for _ in range(30):
        rng, sub = jax.random.split(rng)
        logits = np.asarray(model.log_probs([history[-2:]]), np.float32)
        history.append(int(sample_logits(logits, sub, 1.0, 4)[0]))
    assert history[1:] == first


# ----------------------------------------------------------------------------- configs

def _config(**ngram):
    from experiments.shakespeare_char import get_config

    config = get_config()
    config.ngram = ngram_run.ngram_section(**ngram)
    return config


@pytest.mark.parametrize("order", [0, 7, 2.0, True])
def test_validate_rejects_bad_order(order):
    config = _config()
    config.ngram = ml_collections.ConfigDict({"order": order})
    with pytest.raises(ConfigError, match=r"config\.ngram\.order"):
        ngram_run.validate_ngram(config)


@pytest.mark.parametrize("field, value", [("discount", 1.5), ("discount", -0.1),
                                          ("sample_tokens", -1), ("sample_temperature", -1.0),
                                          ("sample_top_k", -2)])
def test_validate_rejects_bad_fields(field, value):
    with pytest.raises(ConfigError, match=rf"config\.ngram\.{field}"):
        ngram_run.validate_ngram(_config(**{field: value}))


def test_validate_rejects_unknown_keys_packing_and_synthetic():
    config = _config()
    config.ngram.ordr = 3
    with pytest.raises(ConfigError, match="order"):
        ngram_run.validate_ngram(config)
    config = _config()
    config.data.packing = True
    with pytest.raises(ConfigError, match=r"config\.data\.packing"):
        ngram_run.validate_ngram(config)
    config = _config()
    config.data.backend = "synthetic"
    with pytest.raises(ConfigError, match=r"config\.data\.backend"):
        ngram_run.validate_ngram(config)


def test_launcher_accepts_an_ngram_section():
    from launch.common import validate_top_level

    validate_top_level(_config(order=2))


def test_shakespeare_bits_fall_with_order(tmp_path):
    bits = {}
    for order in (1, 2, 3):
        result = ngram_run.run_ngram(_config(order=order, sample_tokens=40), str(tmp_path))
        bits[order] = result["eval/bits_per_token"]
        saved = json.loads((tmp_path / "result_ngram.json").read_text())
        assert saved["eval/loss"] == pytest.approx(result["eval/loss"])
        assert {"eval/perplexity", "num_params", "fit_seconds", "sample"} <= set(saved)
    print("shakespeare_char bits/token by order:", bits)
    assert bits[1] > bits[2] > bits[3]
    assert 3.3 < bits[2] < 4.0
    samples = (tmp_path / "samples.txt").read_text()
    assert samples.count("=== ngram order") == 3
    assert result["sample"].startswith("\n") and len(result["sample"]) > 30


def test_train_token_budget_keeps_the_leading_tokens():
    from lm.baselines.run import first_tokens
    pieces = [np.arange(5), np.arange(10, 14)]
    assert [p.tolist() for p in first_tokens(pieces, 7)] == [[0, 1, 2, 3, 4], [10, 11]]
    assert [p.tolist() for p in first_tokens(pieces, 3)] == [[0, 1, 2]]
    assert first_tokens(pieces, 0) is pieces
