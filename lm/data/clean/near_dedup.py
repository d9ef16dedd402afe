"""Near de-duplication: LSH candidates from MinHash signatures, then estimated Jaccard.

Documents arrive in order; a document whose estimated Jaccard with an already kept one reaches
the threshold is removed (the earlier one stays). Every candidate pair is recorded.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lm.data.clean.minhash import LshIndex, estimated_jaccard
from lm.data.clean.stats import StageStats


@dataclasses.dataclass(frozen=True)
class CandidatePair:
    kept: str  # the earlier document, already kept
    other: str  # the arriving document
    similarity: float  # estimated Jaccard of their shingle sets
    removed: bool  # whether ``other`` was removed for it


class NearDeduplicator:
    def __init__(self, threshold: float, rows_per_band: int):
        self.threshold = threshold
        self.index = LshIndex(rows_per_band)
        self.signatures: list[np.ndarray] = []
        self.names: list[str] = []
        self.pairs: list[CandidatePair] = []
        self.stats = StageStats()

    def keep(self, name: str, text: str, sig: np.ndarray) -> bool:
        scored = sorted(((estimated_jaccard(sig, self.signatures[i]), i)
                         for i in self.index.candidates(sig)), reverse=True)
        removed = bool(scored) and scored[0][0] >= self.threshold
        for rank, (similarity, i) in enumerate(scored):
            self.pairs.append(CandidatePair(self.names[i], name, similarity,
                                            removed and rank == 0))
        if removed:
            self.stats.count("near_duplicate_documents")
            self.stats.add_example(f"{name} ~ {self.names[scored[0][1]]} "
                                   f"(estimated Jaccard {scored[0][0]:.3f})")
        else:
            self.index.insert(len(self.names), sig)
            self.signatures.append(sig)
            self.names.append(name)
        self.stats.record(text, None if removed else text)
        return not removed
