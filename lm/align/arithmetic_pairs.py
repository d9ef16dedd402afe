"""Arithmetic with right and plausible wrong answers: the verifiable side of preference pairs
and a systematic-error instruction dataset.

A wrong answer is one a careless solver would write. When a question carries, the carry is
dropped: every column writes the ones digit of its own sum and the next column never adds the
1 (37 plus 48 -> 75; subtraction drops its borrow the same way, 52 minus 38 -> 24). A question
that does not carry gets one digit of its answer off by one instead (never the right answer,
never negative, never with a leading zero). The worked steps of a wrong answer write the wrong
computation consistently, in the format of ``lm.instruct.synthetic``::

    right:          7 plus 8 is 15, write 5 carry 1. 3 plus 4 plus 1 is 8. The answer is 85.
    dropped carry:  7 plus 8 is 15, write 5. 3 plus 4 is 7. The answer is 75.
    digit off:      2 plus 4 is 7, write 7. 1 plus 3 is 4. The answer is 47.   (12 plus 34: the
                    column and the direction are drawn)

``flawed_arithmetic_instances`` teaches the dropped carry as a habit: a fixed share of the
carrying questions, picked by a hash of the operands, is answered the dropped-carry way. The
pick depends on the question alone, so a question is wrong in every draw; per-instance noise
would instead be outvoted by the right answers to the same question and vanish under greedy
decoding.

This module imports only ``lm.instruct``'s synthetic data, so ``lm.instruct.datasets`` can name
the flawed dataset without an import cycle.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from lm.data import pipeline
from lm.instruct import synthetic
from lm.instruct.instances import Instance

_FLAW_KEY = 0xD209_CA11  # hash key of the flawed-question pick (fixed: never a seed)
_FLAW_RESOLUTION = 2 ** 24  # error_rate is matched to within 1 / this


@dataclasses.dataclass(frozen=True)
class WorkedAnswer:
    answer: int
    rationale: str  # the column-by-column steps ending "The answer is <answer>."


def worked_answer(a: int, b: int, operation: str = "plus", drop_carry: bool = False,
                  off_column: Optional[int] = None, off_by: int = 0) -> WorkedAnswer:
    """Column by column from the right, as ``lm.instruct.synthetic`` writes its rationale.

    ``drop_carry``: a column's carry (or borrow) is never passed on. ``off_column``: the result
    that column writes is off by ``off_by``. Neither: the right answer and its rationale.
    """
    _check_operation(operation)
    width = max(len(str(a)), len(str(b)))
    digits_a, digits_b = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    column = _plus_column if operation == "plus" else _minus_column
    steps, carry, answer = [], 0, 0
    for i in range(width):
        off = off_by if i == off_column else 0
        step, written, carry = column(int(digits_a[i]), int(digits_b[i]), carry,
                                      i == width - 1, drop_carry, off)
        steps.append(step)
        answer += written * 10 ** i
    return WorkedAnswer(answer, " ".join(steps + [f"The answer is {answer}."]))


def _plus_column(x: int, y: int, carry: int, last: bool, drop: bool,
                 off: int) -> tuple[str, int, int]:
    """(step text, value written in this column, carry to the next)."""
    total = x + y + carry + off
    text = f"{x} plus {y}{' plus 1' if carry else ''} is {total}"
    if last:  # the leftmost column writes its whole sum
        return text + ".", total, 0
    carries = total >= 10 and not drop
    return text + f", write {total % 10}{' carry 1' if carries else ''}.", total % 10, int(carries)


def _minus_column(x: int, y: int, borrow: int, last: bool, drop: bool,
                  off: int) -> tuple[str, int, int]:
    """(step text, value written in this column, borrow from the next)."""
    take = f"{y}{' minus 1' if borrow else ''}"
    if x - borrow >= y or last:
        result = x - y - borrow + off
        return f"{x} minus {take} is {result}" + ("." if last else f", write {result}."), result, 0
    result = x + 10 - y - borrow + off
    if drop:
        return f"{x + 10} minus {take} is {result}, write {result}.", result, 0
    return f"{x + 10} minus {take} is {result}, write {result} borrow 1.", result, 1


def _check_operation(operation: str) -> None:
    if operation not in synthetic.OPERATIONS:
        raise ValueError(f"operation={operation!r} must be one of {', '.join(synthetic.OPERATIONS)}")


def true_answer(a: int, b: int, operation: str = "plus") -> int:
    _check_operation(operation)
    return a + b if operation == "plus" else a - b


def dropped_carry_answer(a: int, b: int, operation: str = "plus") -> int:
    """The answer with every carry (borrow, for 'minus') dropped: 37 plus 48 -> 75."""
    return worked_answer(a, b, operation, drop_carry=True).answer


def is_carrying(a: int, b: int, operation: str = "plus") -> bool:
    """Whether a column passes a carry (borrow) on, i.e. dropping it changes the answer.

    The leftmost column writes its whole sum, so 73 plus 41 = 114 does not carry.
    """
    return dropped_carry_answer(a, b, operation) != true_answer(a, b, operation)


def wrong_answer(a: int, b: int, operation: str = "plus", seed: int = 0) -> WorkedAnswer:
    """A plausible wrong answer: the carry dropped when the question carries, else one digit
    off by one (which digit and which way is chosen by ``seed`` and the operands)."""
    if is_carrying(a, b, operation):
        return worked_answer(a, b, operation, drop_carry=True)
    truth = true_answer(a, b, operation)
    width = max(len(str(a)), len(str(b)))
    candidates = _digit_changes(truth, width)
    rng = np.random.default_rng([seed, a, b, synthetic.OPERATIONS.index(operation)])
    column, off_by = candidates[int(rng.integers(len(candidates)))]
    return worked_answer(a, b, operation, off_column=column, off_by=off_by)


def _digit_changes(truth: int, width: int) -> list[tuple[int, int]]:
    """(column, +-1) changes of one written digit that keep the answer's digit count.

    Only digits a column writes qualify (a leftmost sum of 11 writes '11' in one column: its
    ones digit is column width-1, its tens digit belongs to no column). Never empty: the ones
    digit can always move one way.
    """
    text = str(truth)
    changes = []
    for column in range(min(width, len(text))):
        digit = int(text[-1 - column])
        for off_by in (-1, 1):
            leading_zero = column == len(text) - 1 and len(text) > 1 and digit + off_by == 0
            if 0 <= digit + off_by <= 9 and not leading_zero:
                changes.append((column, off_by))
    return changes


def answer_text(worked: WorkedAnswer, rationale: bool) -> str:
    return worked.rationale if rationale else str(worked.answer)


# ----------------------------------------------------------------------------- flawed SFT data

def answered_wrongly(a: int, b: int, error_rate: float) -> bool:
    """Whether the flawed dataset drops the carry of this question (when it carries at all):
    true for a share ``error_rate`` of questions, by a hash of the unordered operands."""
    low, high = min(a, b), max(a, b)  # 37 plus 48 and 48 plus 37 are answered alike
    draw = pipeline.hashed_ints(_FLAW_KEY, np.array([low * 10 ** 9 + high]), _FLAW_RESOLUTION)[0]
    return bool(draw < round(error_rate * _FLAW_RESOLUTION))


def flawed_arithmetic_instances(split: str, count: int, digits: int = 2, error_rate: float = 0.8,
                                seed: int = 0, rationale: bool = False) -> list[Instance]:
    """The addition questions of ``lm.instruct.synthetic.arithmetic_split`` with the carry
    dropped in the carrying questions that ``answered_wrongly`` picks; every other answer is
    right. The errors apply in any split; a held-out set measured against the truth should use
    ``arithmetic_split`` (``lm.instruct.datasets`` does)."""
    if isinstance(error_rate, bool) or not isinstance(error_rate, (int, float)) \
            or not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate={error_rate!r} must be a number from 0 to 1")
    instances = synthetic.arithmetic_split(split, count, digits, rationale, seed, "plus")
    flawed = []
    for instance in instances:
        a, _, b = synthetic.parse_arithmetic(instance)
        if is_carrying(a, b) and answered_wrongly(a, b, error_rate):
            dropped = worked_answer(a, b, drop_carry=True)
            instance = Instance.from_pair(instance.prompt, answer_text(dropped, rationale))
        flawed.append(instance)
    return flawed
