"""Thresholds of the cleaning stages, in one frozen dataclass per stage."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class InputLimits:
    max_document_bytes: int = 20 * 2**20  # larger files are skipped unread (reported)
    max_line_chars: int = 1_000_000  # one longer line marks the document as junk
    max_nonprintable_fraction: float = 0.01  # share of control characters (besides \t\n\r\f)


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """Gopher (Rae et al. 2021, App. A) and C4 (Raffel et al. 2020) style document filters."""
    min_words: int = 50
    max_words: int = 200_000  # Gopher says 100k; whole books (Paradise Lost, Poetical Works) pass
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_to_word_ratio: float = 0.1  # ('#' + '...' + '…') per word
    max_ellipsis_line_fraction: float = 0.3
    # C4 drops every line without terminal punctuation; verse and play scripts end most lines
    # with a comma or nothing ("To be, or not to be, that is the question:"), so here the share
    # is only reported per document and a document is dropped when almost no line ends a
    # sentence, which catches lists of names or numbers but keeps poetry.
    max_unterminated_line_fraction: float = 0.97
    # Gopher drops documents with over 30% duplicate lines. Play scripts put each speaker's
    # name on a line of its own ("HAMLET."), so 17-32% of the lines of the modern-spelling
    # plays repeat; 0.45 keeps them and still drops boilerplate-like repetition.
    max_repeated_line_fraction: float = 0.45
    # Gopher: share of characters inside n-grams that occur more than once, n = 5..10.
    max_duplicate_ngram_char_fraction: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    paragraph_min_chars: int = 200  # shorter paragraphs ("Exit.", "Enter HAMLET.") are kept
    shingle_words: int = 5
    num_permutations: int = 128
    # One row per band: any shared min-hash makes a pair a candidate. The modern and First
    # Folio editions of a play share only 10-20% of their 5-gram shingles and must still be
    # compared; raise to 4-8 rows for corpora of millions of documents.
    lsh_rows_per_band: int = 1
    near_dup_threshold: float = 0.8  # estimated Jaccard at or above which the later doc goes
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class CleanConfig:
    limits: InputLimits = InputLimits()
    quality: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    documents_per_shard: int = 1000
    workers: int = 0  # 0: all cores
