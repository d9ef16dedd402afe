"""Choosing k demonstrations from a pool for a query.

Methods:
  first    the first k examples of the pool, in pool order
  random   k distinct examples drawn with ``numpy.random.default_rng(seed)``, in drawn order
  nearest  the k examples whose inputs are most similar to the query's, by cosine similarity of
           TF-IDF vectors (or raw word counts, ``tfidf=False``); ties go to the earlier example
           in the pool. They are placed in increasing similarity, so the most similar
           demonstration is last, next to the query (Liu et al., 2022, "What Makes Good
           In-Context Examples for GPT-3?", found this order slightly better than the reverse);
           of equally similar ones, the earlier in the pool sits nearer the query.

Whatever the method, a pool example whose input equals the query's is never chosen, so a
query drawn from the pool does not see its own answer.

Words are lowercased runs of letters, digits and underscores. IDF is smoothed as in
scikit-learn: idf(t) = ln((1 + n) / (1 + df(t))) + 1 over the n pool inputs.
"""
from __future__ import annotations

import collections
import math
import re
from typing import Optional, Sequence

import numpy as np

from lm.prompting.examples import Example
from lm.prompting.templates import Query

SELECTION_METHODS = ("first", "random", "nearest")
_WORD = re.compile(r"\w+")
_SIMILARITY_DECIMALS = 9  # similarities equal to this many places count as ties (pool order decides)


class TfidfIndex:
    """Cosine similarity of a text to every pool input, through an inverted index (term ->
    pool rows and weights), so a query costs time in its own terms' postings only."""

    def __init__(self, texts: Sequence[str], tfidf: bool = True):
        counts = [collections.Counter(_words(t)) for t in texts]
        document_frequency = collections.Counter(term for c in counts for term in c)
        n = len(texts)
        self.idf = {t: (math.log((1 + n) / (1 + df)) + 1 if tfidf else 1.0) for t, df in document_frequency.items()}
        postings: dict[str, tuple[list[int], list[float]]] = collections.defaultdict(lambda: ([], []))
        norms = np.zeros(n)
        for row, c in enumerate(counts):
            for term, count in c.items():
                weight = count * self.idf[term]
                postings[term][0].append(row)
                postings[term][1].append(weight)
                norms[row] += weight * weight
        self.postings = {t: (np.array(rows), np.array(weights)) for t, (rows, weights) in postings.items()}
        self.norms = np.sqrt(norms)
        self.size = n

    def similarities(self, text: str) -> np.ndarray:
        """[n] cosine similarities; 0 for a pool input (or a query) with no words in common."""
        dots = np.zeros(self.size)
        query_norm = 0.0
        for term, count in collections.Counter(_words(text)).items():
            if term not in self.postings:
                continue  # a word no pool input has adds nothing to any dot product
            weight = count * self.idf[term]
            rows, weights = self.postings[term]
            dots[rows] += weight * weights
            query_norm += weight * weight
        denominator = self.norms * math.sqrt(query_norm)
        return np.divide(dots, denominator, out=np.zeros(self.size), where=denominator > 0)


def select_demonstrations(pool: Sequence[Example], query: Query, k: int, method: str = "first", seed: int = 0,
                          index: Optional[TfidfIndex] = None) -> list[Example]:
    """k demonstrations for ``query`` from ``pool`` (see the module docstring for the methods).
    ``index``, a ``TfidfIndex`` of the pool's inputs, saves rebuilding it for every query."""
    if method not in SELECTION_METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(SELECTION_METHODS)}")
    query_text = query.input if isinstance(query, Example) else query
    candidates = [i for i, e in enumerate(pool) if e.input != query_text]
    if not 0 <= k <= len(candidates):
        raise ValueError(f"cannot choose k={k} demonstrations: the pool has {len(candidates)} examples "
                         f"other than the query")
    if method == "first":
        chosen = candidates[:k]
    elif method == "random":
        chosen = [candidates[i] for i in np.random.default_rng(seed).choice(len(candidates), k, replace=False)]
    else:
        chosen = _nearest(pool, query_text, candidates, k, index)
    return [pool[i] for i in chosen]


def _nearest(pool: Sequence[Example], query_text: str, candidates: list[int], k: int,
             index: Optional[TfidfIndex]) -> list[int]:
    if index is None:
        index = TfidfIndex([e.input for e in pool])
    elif index.size != len(pool):
        raise ValueError(f"the index covers {index.size} texts but the pool has {len(pool)} examples")
    similarity = np.round(index.similarities(query_text)[candidates], _SIMILARITY_DECIMALS)
    best = np.argsort(-similarity, kind="stable")[:k]  # most similar first; ties in pool order
    return [candidates[i] for i in best[::-1]]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())
