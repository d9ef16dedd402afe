"""Programmatic rewards: ``(prompt, response) -> float`` functions named for configs.

  arithmetic_exact    1.0 when the response's final number is the true answer of the arithmetic
                      question in the prompt ("What is 37 plus 48?"), else 0.0. A rationale ends
                      with its answer, so worked steps and bare answers are scored alike.
  arithmetic_partial  1.0 when exact, else half the share of answer digits that agree (aligned
                      from the right): a denser signal that still ranks every wrong answer below
                      the right one.

A prompt without an arithmetic question is an error, not a zero: scoring the wrong data set
should stop a run rather than train it on a constant reward. ``score_responses`` scores a batch
and refuses non-finite rewards; ``lm.align.preference.sampled_pairs`` instead counts and leaves
out such samples.
"""
from __future__ import annotations

import difflib
import math
import re
from typing import Callable, Optional, Sequence, Union

import numpy as np

from lm.instruct.synthetic import QUESTION_PATTERN
from lm.prompting.answers import extract_answer

RewardFn = Callable[[str, str], float]
_INTEGER = re.compile(r"-?\d+")


def question_answer(prompt: str) -> int:
    """The true answer of the arithmetic question in ``prompt``."""
    match = QUESTION_PATTERN.search(prompt)
    if not match:
        raise ValueError(f"prompt {_excerpt(prompt)!r} holds no arithmetic question like "
                         f"'What is 37 plus 48?'; score it with a reward made for its task")
    a, operation, b = int(match.group(1)), match.group(2), int(match.group(3))
    return a + b if operation == "plus" else a - b


def final_number(response: str) -> Optional[int]:
    """The last number of ``response`` as an integer (None when it has none, or it is not whole)."""
    answer = extract_answer(response, "number")
    return int(answer) if answer is not None and _INTEGER.fullmatch(answer) else None


def arithmetic_exact(prompt: str, response: str) -> float:
    return 1.0 if final_number(response) == question_answer(prompt) else 0.0


def arithmetic_partial(prompt: str, response: str) -> float:
    truth, answer = question_answer(prompt), final_number(response)
    if answer == truth:
        return 1.0
    if answer is None:
        return 0.0
    width = max(len(str(truth)), len(str(answer)))
    # Right-aligned, so the ones digits meet; a missing or extra digit counts as a disagreement.
    agree = sum(x == y for x, y in zip(str(truth).rjust(width), str(answer).rjust(width)))
    return 0.5 * agree / width


REWARDS: dict[str, RewardFn] = {
    "arithmetic_exact": arithmetic_exact,
    "arithmetic_partial": arithmetic_partial,
}


def reward_function(name: str) -> RewardFn:
    if name in REWARDS:
        return REWARDS[name]
    close = difflib.get_close_matches(str(name), REWARDS, n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    raise ValueError(f"unknown reward function {name!r}{hint}; named rewards: {', '.join(REWARDS)}")


def score_responses(name_or_fn: Union[str, RewardFn], prompts: Sequence[str],
                    responses: Sequence[str], keep_non_finite: bool = False) -> np.ndarray:
    """[N] float32 rewards of ``responses[i]`` to ``prompts[i]``; raises on a non-finite one,
    unless ``keep_non_finite`` (the caller counts and drops those rows)."""
    fn = reward_function(name_or_fn) if isinstance(name_or_fn, str) else name_or_fn
    name = name_or_fn if isinstance(name_or_fn, str) else getattr(fn, "__name__", repr(fn))
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; score one "
                         "response per prompt (repeat a prompt for several samples)")
    scores = np.zeros(len(prompts), np.float32)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        try:
            value = fn(prompt, response)
        except Exception as e:  # noqa: BLE001 - a user's function: name it and the prompt
            raise ValueError(f"reward function {name} failed on prompt {_excerpt(prompt)!r}: "
                             f"{type(e).__name__}: {e}") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"reward function {name} returned {value!r} for prompt "
                             f"{_excerpt(prompt)!r}; make it return a number") from None
        if not math.isfinite(value) and not keep_non_finite:
            shown = "NaN" if math.isnan(value) else value
            raise ValueError(f"reward function {name} returned {shown} for prompt "
                             f"{_excerpt(prompt)!r}; make it return a finite number")
        scores[i] = value
    return scores


def _excerpt(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
