"""Answer extraction from generated text, normalisation, and self-consistency voting.

Named patterns (``PATTERNS``); the answer is the pattern's first capture group, taken from its
first or its last match in the text:

  answer_is  "... The answer is X." (first match; X runs to the end of the sentence or line)
  gsm8k      "#### X" (GSM8K's final-answer line; first match, X runs to the end of the line)
  number     the last number: optional minus sign, digits with optional thousands commas,
             optional decimals ("1,234.5", "-3")
  choice     the last multiple-choice letter written "(A)" ... "(E)"

``extract_answer`` tries the patterns it is given in order and returns the first answer found,
normalised (``normalize_answer``): surrounding whitespace and trailing periods removed, and
thousands separators dropped from numbers ("1,234" -> "1234"). Case is kept.

Self-consistency (Wang et al., 2023) samples several reasoning paths and keeps the most frequent
answer: ``majority_vote`` ignores samples with no answer, breaks ties by first occurrence, and
returns the share of the answered samples that voted for the winner.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import NamedTuple, Optional, Sequence, Union


@dataclasses.dataclass(frozen=True)
class AnswerPattern:
    regex: str
    flags: int = 0
    last: bool = False  # take the last match rather than the first

    def __post_init__(self):
        if re.compile(self.regex, self.flags).groups < 1:
            raise ValueError(f"answer pattern {self.regex!r} has no capture group for the answer")

    def search(self, text: str) -> Optional[str]:
        matches = list(re.finditer(self.regex, text, self.flags))
        if not matches:
            return None
        return (matches[-1] if self.last else matches[0]).group(1)


PATTERNS = {
    "answer_is": AnswerPattern(r"the answer is:?[ \t]*(.+?)[ \t]*(?:\.(?=\s|$)|\n|$)", re.IGNORECASE),
    "gsm8k": AnswerPattern(r"####[ \t]*(.+?)[ \t]*$", re.MULTILINE),
    "number": AnswerPattern(r"(-?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?)", last=True),
    "choice": AnswerPattern(r"\(([A-E])\)", last=True),
}
DEFAULT_PATTERNS = ("gsm8k", "answer_is", "number")

PatternLike = Union[str, AnswerPattern, "re.Pattern[str]"]


class Vote(NamedTuple):
    answer: Optional[str]  # None when no sample had an answer
    share: float           # votes for the answer / samples with an answer (0.0 when none had one)


def normalize_answer(answer: str) -> str:
    """Strip whitespace and trailing periods, and drop thousands separators from numbers."""
    answer = answer.strip().rstrip(".").strip()
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", answer)


def extract_answer(text: str, patterns: Union[PatternLike, Sequence[PatternLike]] = DEFAULT_PATTERNS,
                   normalize: bool = True) -> Optional[str]:
    """The answer of the first pattern that matches ``text`` (None when none does). A pattern is
    a name in ``PATTERNS``, an ``AnswerPattern`` or a compiled regex (first match, group 1)."""
    if isinstance(patterns, (str, AnswerPattern, re.Pattern)):
        patterns = [patterns]
    for pattern in [_resolve(p) for p in patterns]:
        answer = pattern.search(text)
        if answer is not None and normalize:
            answer = normalize_answer(answer)
        if answer:  # an answer that normalises to '' lets the next pattern try
            return answer
    return None


def majority_vote(answers: Sequence[Optional[str]]) -> Vote:
    """The most frequent answer (ties: the one that occurred first) and its share of the answered
    samples; ``None`` entries (no extractable answer) do not vote."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return Vote(None, 0.0)
    answer = max(counts, key=counts.__getitem__)  # a Counter iterates in first-occurrence order; max keeps the first
    return Vote(answer, counts[answer] / sum(counts.values()))


def self_consistency(samples: Sequence[str], patterns: Union[PatternLike, Sequence[PatternLike]] = DEFAULT_PATTERNS,
                     normalize: bool = True) -> Vote:
    """Majority vote over the answers extracted from several sampled generations."""
    return majority_vote([extract_answer(s, patterns, normalize) for s in samples])


def _resolve(pattern: PatternLike) -> AnswerPattern:
    if isinstance(pattern, AnswerPattern):
        return pattern
    if isinstance(pattern, re.Pattern):
        return AnswerPattern(pattern.pattern, pattern.flags)
    if isinstance(pattern, str):
        if pattern not in PATTERNS:
            raise ValueError(f"unknown answer pattern {pattern!r}; named patterns: {', '.join(PATTERNS)} "
                             "(pass a custom regex as re.compile(...) or AnswerPattern(...))")
        return PATTERNS[pattern]
    raise TypeError(f"an answer pattern is a name, an AnswerPattern or a compiled regex, got {type(pattern).__name__}")
