"""Gopher/C4-style document quality filters: each rule measures one signal of the document and
the first rule whose threshold it crosses drops it (the rule's name is the reason)."""
from __future__ import annotations

import collections
import re

from lm.data.clean.config import QualityConfig
from lm.data.clean.stats import StageStats

_WORD = re.compile(r"\S+")
_TERMINAL = ('.', '!', '?', '"', "'", '\u201d', '\u2019')  # C4's sentence enders, with quotes


def quality_signals(text: str) -> dict[str, float]:
    """The measured signals of one document (all reported, whether or not they drop it)."""
    words = _WORD.findall(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    num_words, num_lines = max(len(words), 1), max(len(lines), 1)
    symbols = text.count("#") + text.count("...") + text.count("\u2026")
    return {
        "words": len(words),
        "mean_word_length": sum(map(len, words)) / num_words,
        "symbol_to_word_ratio": symbols / num_words,
        "ellipsis_line_fraction": sum(line.endswith(("...", "\u2026")) for line in lines) / num_lines,
        "unterminated_line_fraction": sum(not line.endswith(_TERMINAL) for line in lines) / num_lines,
        "repeated_line_fraction": _repeated_fraction(lines),
        **{f"duplicate_{n}gram_char_fraction": _duplicate_ngram_char_fraction(words, n)
           for n in range(5, 11)},
    }


def failed_rule(signals: dict[str, float], config: QualityConfig) -> str | None:
    """The first rule the document breaks, or None when it passes."""
    checks = [
        ("too_few_words", signals["words"] < config.min_words),
        ("too_many_words", signals["words"] > config.max_words),
        ("mean_word_length", not (config.min_mean_word_length <= signals["mean_word_length"]
                                  <= config.max_mean_word_length)),
        ("symbol_to_word_ratio", signals["symbol_to_word_ratio"] > config.max_symbol_to_word_ratio),
        ("ellipsis_lines", signals["ellipsis_line_fraction"] > config.max_ellipsis_line_fraction),
        ("unterminated_lines",
         signals["unterminated_line_fraction"] > config.max_unterminated_line_fraction),
        ("repeated_lines", signals["repeated_line_fraction"] > config.max_repeated_line_fraction),
    ]
    checks += [(f"duplicate_{n}grams", signals[f"duplicate_{n}gram_char_fraction"] > limit)
               for n, limit in config.max_duplicate_ngram_char_fraction]
    return next((name for name, failed in checks if failed), None)


def filter_quality(text: str, config: QualityConfig, stats: StageStats
                   ) -> tuple[str | None, dict[str, float]]:
    """(text or None when dropped, its signals)."""
    signals = quality_signals(text)
    reason = failed_rule(signals, config)
    if reason:
        stats.count(reason)
        stats.add_example(f"[{reason}] {text}")
    stats.record(text, None if reason else text)
    return (None if reason else text), signals


def _repeated_fraction(lines: list[str]) -> float:
    if not lines:
        return 0.0
    counts = collections.Counter(lines)
    return sum(c for c in counts.values() if c > 1) / len(lines)


def _duplicate_ngram_char_fraction(words: list[str], n: int) -> float:
    """Share of word characters covered by n-grams that occur more than once (Gopher)."""
    if len(words) < n:
        return 0.0
    ngrams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = collections.Counter(ngrams)
    covered = bytearray(len(words))  # a word inside several repeated n-grams counts once
    for i, gram in enumerate(ngrams):
        if counts[gram] > 1:
            covered[i:i + n] = b"\x01" * n
    total = sum(map(len, words))
    return sum(len(w) for w, c in zip(words, covered) if c) / max(total, 1)
