"""Evaluation metrics with seqio's metric-function signatures.

Text metrics take ``fn(targets, predictions) -> {name: value}``; scored metrics take
``fn(targets, scores)`` where the scores are log-likelihoods (natural log) from the model's score
function. Following ``t5.evaluation.metrics``, exact match, BLEU, chrF, ROUGE and accuracies are
percentages (0-100); perplexities and bits per byte are plain numbers.

A target may be a string or, for BLEU/chrF/ROUGE/exact match, a list of reference strings (every
example with the same number of references for BLEU/chrF; ROUGE and exact match take the best).
"""
import math
import re
import string
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


# ----------------------------------------------------------------------------- generated text

def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, drop punctuation and articles, squash whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _references(target) -> list[str]:
    return [target] if isinstance(target, str) else list(target)


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def exact_match(targets: Sequence, predictions: Sequence[str], normalize: bool = False) -> dict[str, float]:
    """Percentage of predictions equal to (one of) their targets, optionally after normalisation."""
    _check_lengths(targets, predictions)
    prep = normalize_answer if normalize else (lambda s: s)
    hits = [any(prep(ref) == prep(pred) for ref in _references(target))
            for target, pred in zip(targets, predictions)]
    return {"exact_match": 100.0 * float(np.mean(hits)) if hits else 0.0}


def squad_exact_match(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Exact match after SQuAD normalisation."""
    return exact_match(targets, predictions, normalize=True)


def _reference_streams(targets: Sequence) -> list[list[str]]:
    """Per-example references transposed into sacrebleu's reference streams."""
    refs = [_references(target) for target in targets]
    counts = {len(r) for r in refs}
    if len(counts) > 1:
        raise ValueError(f"every example needs the same number of references, got {sorted(counts)}")
    return [list(stream) for stream in zip(*refs)]


def bleu(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exponential smoothing)."""
    import sacrebleu

    _check_lengths(targets, predictions)
    return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), _reference_streams(targets)).score)}


def chrf(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2)."""
    import sacrebleu

    _check_lengths(targets, predictions)
    return {"chrf": float(sacrebleu.corpus_chrf(list(predictions), _reference_streams(targets)).score)}


def rouge(targets: Sequence, predictions: Sequence[str], use_stemmer: bool = True,
          types: Sequence[str] = ("rouge1", "rouge2", "rougeL")) -> dict[str, float]:
    """Mean per-example ROUGE F-measure (rouge-score), best over an example's references."""
    from rouge_score import rouge_scorer

    _check_lengths(targets, predictions)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    totals = dict.fromkeys(types, 0.0)
    for target, pred in zip(targets, predictions):
        scores = [scorer.score(ref, pred) for ref in _references(target)]
        for name in types:
            totals[name] += max(s[name].fmeasure for s in scores)
    n = max(len(predictions), 1)
    return {name: 100.0 * total / n for name, total in totals.items()}


# ----------------------------------------------------------------------------- multiple choice

def choice_accuracy(labels: Sequence[int], choice_logliks: Sequence[Sequence[float]],
                    choices: Sequence[Sequence[str]]) -> dict[str, float]:
    """Log-likelihood multiple choice, as lm-evaluation-harness scores it.

    ``acc``: the choice with the highest log-likelihood is the label. ``acc_norm``: the highest
    log-likelihood per UTF-8 byte of the choice text (the continuation that was scored, leading
    space included); the harness divides by ``len(str)``, the same for ASCII text.
    """
    if not len(labels) == len(choice_logliks) == len(choices):
        raise ValueError("labels, choice_logliks and choices must have one entry per question")
    acc, acc_norm = [], []
    for label, logliks, texts in zip(labels, choice_logliks, choices):
        logliks = np.asarray(logliks, dtype=np.float64)
        lengths = np.array([max(len(t.encode("utf-8")), 1) for t in texts], dtype=np.float64)
        if logliks.shape != lengths.shape:
            raise ValueError(f"{logliks.size} log-likelihoods for {lengths.size} choices")
        acc.append(int(np.argmax(logliks)) == label)
        acc_norm.append(int(np.argmax(logliks / lengths)) == label)
    return {"acc": 100.0 * float(np.mean(acc)), "acc_norm": 100.0 * float(np.mean(acc_norm))}


def multiple_choice(targets: Sequence[Mapping], scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """seqio form of ``choice_accuracy``: targets ``{'label': int, 'choices': [str]}``, scores the
    per-choice log-likelihoods of each question."""
    return choice_accuracy([t["label"] for t in targets], scores, [t["choices"] for t in targets])


# ----------------------------------------------------------------------------- likelihood of text

def perplexity(total_loglik: float, num_tokens: int) -> float:
    """exp of the mean negative log-likelihood per token."""
    return math.exp(-total_loglik / num_tokens)


def bits_per_byte(total_loglik: float, num_bytes: int) -> float:
    """Negative log-likelihood in bits per UTF-8 byte of the text."""
    return -total_loglik / (num_bytes * math.log(2))


def word_count(text: str) -> int:
    """Words as lm-evaluation-harness counts them for word perplexity."""
    return len(re.split(r"\s+", text))


def document_perplexities(targets: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """Corpus-level word perplexity, byte perplexity and bits per byte of whole documents.

    ``scores`` are each document's summed log-likelihood (from rolling windows); the corpus values
    weight documents by their word / byte counts, as lm-evaluation-harness does.
    """
    _check_lengths(targets, scores)
    total = float(np.sum(scores))
    words = sum(word_count(t) for t in targets)
    num_bytes = sum(len(t.encode("utf-8")) for t in targets)
    return {"word_perplexity": perplexity(total, words), "byte_perplexity": perplexity(total, num_bytes),
            "bits_per_byte": bits_per_byte(total, num_bytes)}


def rolling_windows(tokens: Sequence[int], max_len: int, stride: int | None = None, *,
                    prefix_token: int) -> Iterator[tuple[list[int], list[int]]]:
    """(context, target) windows that predict every token of a long document exactly once.

    lm-evaluation-harness's ``get_rolling_token_windows`` followed by ``make_disjoint_window``
    with ``context_len = max_len - stride + 1``. The model reads ``context + target[:-1]`` (at most
    ``max_len`` tokens) and scores the last ``len(target)`` positions. The first window predicts
    the first ``max_len`` tokens after ``prefix_token`` (e.g. EOS); each later window predicts the
    next ``stride`` tokens (default ``max_len``) with as much preceding context as fits.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"need 1 <= stride <= max_len, got stride={stride}, max_len={max_len}")
    tokens = list(tokens)
    if not tokens:
        return
    first = min(max_len, len(tokens))
    yield [prefix_token], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        count = min(len(tokens) - predicted, stride)
        end = predicted + count
        window = tokens[end - max_len - 1:end]
        yield window[:-count], window[-count:]
        predicted = end
