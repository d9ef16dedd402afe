"""MinHash signatures over word shingles, LSH banding, and Jaccard estimates, in NumPy.

Shingles are hashed without Python's per-process ``hash`` (so workers agree): each word gets
a CRC-32, and a shingle's 64-bit hash is a polynomial of its word hashes (wrapping uint64
arithmetic). Permutation i is the multiply-shift hash ``(a_i * x + b_i) >> 32`` with odd
64-bit ``a_i``, a 2-universal family (Dietzfelbinger et al. 1997).
"""
from __future__ import annotations

import re
import zlib

import numpy as np

_WORD = re.compile(r"\w+")
_CHUNK = 4096  # shingles per chunk: bounds memory at [chunk, permutations] uint64
_POLY_BASE = np.uint64(0x9E3779B97F4A7C15)
EMPTY = np.uint64(2**32)  # signature value of a document without shingles (never a hash)


def words_of(text: str) -> list[str]:
    """Lower-cased words: case and punctuation do not make documents differ."""
    return _WORD.findall(text.lower())


def shingle_hashes(text: str, shingle_words: int) -> np.ndarray:
    """Unique 32-bit hashes of the word n-grams, [num_shingles] uint64."""
    words = words_of(text)
    if not words:
        return np.zeros(0, np.uint64)
    word_hashes = np.array([zlib.crc32(w.encode()) for w in words], np.uint64)
    n = min(shingle_words, len(words))  # a short document is one shingle
    count = len(words) - n + 1
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _POLY_BASE + word_hashes[k:k + count]
    return np.unique(h >> np.uint64(32))


def permutations(num_permutations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): [num_permutations] uint64 each, a odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, num_permutations, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, num_permutations, dtype=np.uint64)
    return a, b


def signature(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[num_permutations] uint64: the minimum of each permuted hash over the shingles."""
    result = np.full(len(a), EMPTY, np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(hashes), _CHUNK):
            x_s1 = hashes[start:start + _CHUNK, None]  # [shingles, 1]
            permuted_sp = (a[None, :] * x_s1 + b[None, :]) >> np.uint64(32)
            result = np.minimum(result, permuted_sp.min(axis=0))
    return result


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Share of permutations whose minima agree: an unbiased estimate of the Jaccard index."""
    return float(np.mean(sig_a == sig_b))


def exact_jaccard(hashes_a: np.ndarray, hashes_b: np.ndarray) -> float:
    union = len(np.union1d(hashes_a, hashes_b))
    return len(np.intersect1d(hashes_a, hashes_b)) / union if union else 1.0


class LshIndex:
    """Bands of ``rows`` signature values; documents sharing any band are candidates."""

    def __init__(self, rows_per_band: int):
        self.rows = rows_per_band
        self.buckets: dict[tuple[int, bytes], list[int]] = {}

    def candidates(self, sig: np.ndarray) -> set[int]:
        found = set()
        for key in self._band_keys(sig):
            found.update(self.buckets.get(key, ()))
        return found

    def insert(self, doc_id: int, sig: np.ndarray) -> None:
        for key in self._band_keys(sig):
            self.buckets.setdefault(key, []).append(doc_id)

    def _band_keys(self, sig: np.ndarray):
        for band, start in enumerate(range(0, len(sig) - self.rows + 1, self.rows)):
            values = sig[start:start + self.rows]
            if not np.all(values == EMPTY):
                yield band, values.tobytes()
