"""Evaluation metrics and pass@k against hand-computed values."""
import math

import numpy as np
import pytest

from lm.eval import metrics, passk

# ----------------------------------------------------------------------------- exact match


def test_exact_match_raw_and_normalized():
    targets = ["The Cat!", "Paris", ["a dog", "dog"]]
    predictions = ["cat", "Paris", "Dog."]
    assert metrics.exact_match(targets, predictions) == {"exact_match": pytest.approx(100 / 3)}
    assert metrics.exact_match(targets, predictions, normalize=True) == {"exact_match": 100.0}
    assert metrics.squad_exact_match(["x"], ["y"]) == {"exact_match": 0.0}


def test_normalize_answer_is_squad_normalisation():
    assert metrics.normalize_answer("  The quick, brown FOX -- an animal. ") == "quick brown fox animal"
    assert metrics.normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        metrics.exact_match(["a"], ["a", "b"])


# ----------------------------------------------------------------------------- BLEU, chrF, ROUGE


def test_bleu_identical_is_100():
    text = ["the quick brown fox jumps over the lazy dog", "a second sentence of several words"]
    assert metrics.bleu(text, text)["bleu"] == pytest.approx(100.0)
    assert metrics.chrf(text, text)["chrf"] == pytest.approx(100.0)


def test_bleu_by_hand():
    # n-gram precisions 4/5, 3/4, 2/3, 1/2; equal lengths, so no brevity penalty.
    expected = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert metrics.bleu(["a b c d f"], ["a b c d e"])["bleu"] == pytest.approx(expected)


def test_bleu_and_chrf_match_sacrebleu_documented_example():
    # sacrebleu's README: BLEU = 48.53, chrF2 = 59.73 with two reference streams.
    predictions = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    targets = [["The dog bit the man.", "The dog had bit the man."],
               ["It was not unexpected.", "No one was surprised."],
               ["The man bit him first.", "The man had bitten the dog."]]
    assert metrics.bleu(targets, predictions)["bleu"] == pytest.approx(48.53, abs=0.005)
    assert metrics.chrf(targets, predictions)["chrf"] == pytest.approx(59.73, abs=0.005)


def test_rouge_by_hand():
    # target: the cat sat on the mat; prediction: the cat lay on a mat (6 tokens each).
    # unigram overlap {the, cat, on, mat} = 4 -> F 2/3; bigram overlap {the cat} = 1 of 5 -> F 1/5;
    # longest common subsequence "the cat on mat" = 4 -> F 2/3.
    scores = metrics.rouge(["the cat sat on the mat"], ["the cat lay on a mat"])
    assert scores == {"rouge1": pytest.approx(200 / 3), "rouge2": pytest.approx(20.0),
                      "rougeL": pytest.approx(200 / 3)}


def test_rouge_stemming_option():
    with_stem = metrics.rouge(["cats running"], ["cat run"], use_stemmer=True)
    without = metrics.rouge(["cats running"], ["cat run"], use_stemmer=False)
    assert with_stem["rouge1"] == pytest.approx(100.0)
    assert without["rouge1"] == pytest.approx(0.0)


# ----------------------------------------------------------------------------- multiple choice


def test_acc_and_acc_norm_differ_on_crafted_case():
    # Question 1: " a" (2 bytes, -2.0) beats " bbbbbbbbbb" (11 bytes, -5.0) raw, but per byte
    # -1.0 < -0.4545, so only acc_norm picks the label 1. Question 2: both pick label 0.
    labels = [1, 0]
    logliks = [[-2.0, -5.0], [-1.0, -3.0]]
    choices = [[" a", " bbbbbbbbbb"], [" yes", " no"]]
    assert metrics.choice_accuracy(labels, logliks, choices) == {"acc": 50.0, "acc_norm": 100.0}
    targets = [{"label": lab, "choices": c} for lab, c in zip(labels, choices)]
    assert metrics.multiple_choice(targets, logliks) == {"acc": 50.0, "acc_norm": 100.0}


def test_acc_norm_uses_utf8_bytes():
    # "é" is 2 bytes: -3/2 = -1.5 vs "ab" -2.5/2 = -1.25 -> choice 1 by bytes (choice 0 by chars).
    assert metrics.choice_accuracy([1], [[-3.0, -2.5]], [["é", "ab"]])["acc_norm"] == 100.0


# ----------------------------------------------------------------------------- likelihood of text


def test_perplexity_and_bits_per_byte():
    assert metrics.perplexity(-4 * math.log(2), 4) == pytest.approx(2.0)
    assert metrics.bits_per_byte(-8 * math.log(2), 4) == pytest.approx(2.0)


def test_document_perplexities():
    docs = ["one two three", "four five"]  # 5 words, 13 + 9 = 22 bytes
    scores = [-6.0, -4.0]
    out = metrics.document_perplexities(docs, scores)
    assert out["word_perplexity"] == pytest.approx(math.exp(10 / 5))
    assert out["byte_perplexity"] == pytest.approx(math.exp(10 / 22))
    assert out["bits_per_byte"] == pytest.approx(10 / 22 / math.log(2))


def _check_windows(tokens, max_len, stride):
    prefix = -1
    full = [prefix] + list(tokens)  # full[i + 1] is tokens[i]; full[0] conditions the first token
    predicted = []
    for context, target in metrics.rolling_windows(tokens, max_len, stride, prefix_token=prefix):
        start = len(predicted)  # targets come in order, so this window predicts tokens[start:]
        assert target == list(tokens[start:start + len(target)])
        end = start + len(target)
        model_input = context + target[:-1]
        # The input is the max_len tokens (or all there are) before the last target, and the
        # context is exactly the tokens before the first target.
        assert model_input == full[max(0, end - max_len):end]
        assert len(model_input) <= max_len
        assert context == full[max(0, end - max_len):start + 1]
        predicted.extend(target)
    assert predicted == list(tokens)  # every token exactly once


@pytest.mark.parametrize("length", [0, 1, 5, 8, 9, 23, 64])
@pytest.mark.parametrize("max_len,stride", [(8, None), (8, 8), (8, 3), (8, 1), (1, 1)])
def test_rolling_windows_predict_every_token_once_with_full_context(length, max_len, stride):
    _check_windows(list(range(100, 100 + length)), max_len, stride)


def test_rolling_windows_match_harness_windows():
    # get_rolling_token_windows(tokens, -100, max_seq_len=10, context_len=1) worked through by hand,
    # then make_disjoint_window: contexts [-100], tokens[9:10] and tokens[12:20].
    tokens = list(range(20))
    windows = list(metrics.rolling_windows(tokens, 10, prefix_token=-100))
    assert windows == [([-100], list(range(10))), ([9], list(range(10, 20)))]
    windows = list(metrics.rolling_windows(list(range(23)), 10, prefix_token=-100))
    assert windows[-1] == (list(range(12, 20)), [20, 21, 22])


def test_rolling_windows_rejects_bad_stride():
    with pytest.raises(ValueError):
        list(metrics.rolling_windows([1, 2], 4, 5, prefix_token=0))


# ----------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 0, 1, 0.0), (5, 0, 5, 0.0), (5, 5, 1, 1.0), (5, 5, 5, 1.0),
    (10, 1, 1, 0.1), (10, 2, 5, 7 / 9), (10, 9, 2, 1.0), (4, 1, 2, 0.5),
])
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert passk.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_closed_form():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert passk.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_stable_for_large_n():
    assert passk.pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100))


def test_mean_pass_at_k():
    out = passk.mean_pass_at_k([10, 10, 5], [1, 2, 0], ks=(1, 5, 10))
    assert out["pass@1"] == pytest.approx(np.mean([0.1, 0.2, 0.0]))
    assert out["pass@5"] == pytest.approx(np.mean([0.5, 7 / 9, 0.0]))
    assert "pass@10" not in out  # one problem has only 5 samples


def test_pass_at_k_rejects_bad_counts():
    for n, c, k in [(5, 6, 1), (5, 1, 0), (5, 1, 6)]:
        with pytest.raises(ValueError):
            passk.pass_at_k(n, c, k)
