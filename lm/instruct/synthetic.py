"""Synthetic instruction data: arithmetic questions (with or without worked steps) and
Self-Instruct-style tasks bootstrapped from seed tasks with any text generator.

Arithmetic uses words, not symbols, because the default character vocabulary has no '+',
'=' or '<'::

    Instruction: What is 37 plus 48?
    Response: 85

    (rationale=True)
    Response: 7 plus 8 is 15, write 5 carry 1. 3 plus 4 plus 1 is 8. The answer is 85.

The train / validation split of a question is decided by a hash of its operands (the unordered
pair for 'plus', which commutes), independent of the seed: the splits are disjoint by
construction, whatever seeds and counts draw from them.
"""
from __future__ import annotations

import dataclasses
import collections
import re
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from lm.data import pipeline
from lm.instruct.instances import INSTRUCTION_TEMPLATE, Instance, TaskTemplate, format_task_row

OPERATIONS = ("plus", "minus")
SPLITS = ("train", "validation")
VALIDATION_SHARE = 10  # one question in this many is held out
_SPLIT_KEY = 0xA217_5EED  # hash key of the split (fixed: it must never depend on a seed)
_ENUMERATE_LIMIT = 2_000_000  # operand pairs enumerated outright; more are rejection-sampled
_DRAWS_PER_PASS = 4096  # fixed, so a smaller count draws a prefix of a larger one
ARITHMETIC_TEMPLATE = TaskTemplate(instruction="What is {a} {operation} {b}?", input_field="",
                                   output_field="answer")
QUESTION_PATTERN = re.compile(r"What is (\d+) (plus|minus) (\d+)\?")


# ----------------------------------------------------------------------------- arithmetic

def arithmetic_instances(count: int, digits: int = 2, rationale: bool = False, seed: int = 0,
                         operation: str = "plus") -> list[Instance]:
    """``count`` distinct training questions on ``digits``-digit operands."""
    return arithmetic_split("train", count, digits, rationale, seed, operation)


def arithmetic_split(split: str, count: int, digits: int = 2, rationale: bool = False,
                     seed: int = 0, operation: str = "plus") -> list[Instance]:
    """``count`` distinct questions of ``split``, drawn in an order fixed by ``seed`` (a smaller
    count gives a prefix of a larger one)."""
    _check_arithmetic(split, count, digits, operation)
    pairs = _draw_pairs(split, count, digits, seed, operation)
    return [arithmetic_instance(a, b, operation, rationale) for a, b in pairs]


def arithmetic_instance(a: int, b: int, operation: str = "plus", rationale: bool = False) -> Instance:
    answer = a + b if operation == "plus" else a - b
    row = {"a": a, "b": b, "operation": operation,
           "answer": _rationale(a, b, operation) if rationale else str(answer)}
    return ARITHMETIC_TEMPLATE.format(row)


def split_of(a: int, b: int, operation: str = "plus") -> str:
    """'validation' for one operand pair in ``VALIDATION_SHARE``, else 'train'."""
    return SPLITS[int(_held_out(np.array([a]), np.array([b]), operation)[0])]


def _held_out(a_n: np.ndarray, b_n: np.ndarray, operation: str) -> np.ndarray:
    if operation == "plus":  # 37 plus 48 and 48 plus 37 are one question
        a_n, b_n = np.minimum(a_n, b_n), np.maximum(a_n, b_n)
    key_n = a_n.astype(np.int64) * 10**9 + b_n.astype(np.int64)
    return pipeline.hashed_ints(_SPLIT_KEY, key_n, VALIDATION_SHARE) == 0


def _check_arithmetic(split: str, count: int, digits: int, operation: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    if operation not in OPERATIONS:
        raise ValueError(f"operation={operation!r} must be one of {', '.join(OPERATIONS)}")
    if not isinstance(digits, int) or not 1 <= digits <= 9:
        raise ValueError(f"digits={digits!r} must be an integer from 1 to 9")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r} must be a positive integer")


def _operand_range(digits: int) -> tuple[int, int]:
    """[low, high) of ``digits``-digit numbers (0..9 for one digit)."""
    return (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits


def _draw_pairs(split: str, count: int, digits: int, seed: int,
                operation: str) -> list[tuple[int, int]]:
    low, high = _operand_range(digits)
    if (high - low) ** 2 <= _ENUMERATE_LIMIT:
        return _choose_enumerated(split, count, low, high, seed, operation)
    return _rejection_sample(split, count, low, high, seed, operation)


def _valid_pairs(a_n, b_n, operation):
    """minus keeps a >= b, so answers are never negative."""
    return a_n >= b_n if operation == "minus" else np.ones(a_n.shape, bool)


def _choose_enumerated(split, count, low, high, seed, operation) -> list[tuple[int, int]]:
    a_n, b_n = (g.ravel() for g in np.meshgrid(np.arange(low, high), np.arange(low, high),
                                                indexing="ij"))
    keep = _valid_pairs(a_n, b_n, operation) & (_held_out(a_n, b_n, operation) == (split != "train"))
    a_n, b_n = a_n[keep], b_n[keep]
    if count > len(a_n):
        raise ValueError(f"the {split} split has only {len(a_n)} distinct {operation} questions "
                         f"on these operands; ask for at most {len(a_n)} or use more digits")
    picked = np.random.default_rng(seed).permutation(len(a_n))[:count]  # count=n: first n of count=2n
    return [(int(a_n[i]), int(b_n[i])) for i in picked]


def _rejection_sample(split, count, low, high, seed, operation) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    pairs: dict[tuple[int, int], None] = {}  # insertion-ordered set
    while len(pairs) < count:
        a_n, b_n = rng.integers(low, high, _DRAWS_PER_PASS), rng.integers(low, high, _DRAWS_PER_PASS)
        keep = _valid_pairs(a_n, b_n, operation) & (_held_out(a_n, b_n, operation) == (split != "train"))
        for a, b in zip(a_n[keep].tolist(), b_n[keep].tolist()):
            pairs.setdefault((a, b))
    return list(pairs)[:count]


def _rationale(a: int, b: int, operation: str) -> str:
    """Column by column from the right, then "The answer is N."."""
    width = max(len(str(a)), len(str(b)))
    digits_a, digits_b = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    column = _plus_column if operation == "plus" else _minus_column
    steps, carry = [], 0
    for i in range(width):
        last = i == width - 1
        step, carry = column(int(digits_a[i]), int(digits_b[i]), carry, last)
        steps.append(step)
    answer = a + b if operation == "plus" else a - b
    return " ".join(steps + [f"The answer is {answer}."])


def _plus_column(x: int, y: int, carry: int, last: bool) -> tuple[str, int]:
    total = x + y + carry
    text = f"{x} plus {y}{' plus 1' if carry else ''} is {total}"
    if last:
        return text + ".", 0
    return text + f", write {total % 10}{' carry 1' if total >= 10 else ''}.", total // 10


def _minus_column(x: int, y: int, borrow: int, last: bool) -> tuple[str, int]:
    take = f"{y}{' minus 1' if borrow else ''}"
    if x - borrow >= y or last:
        result = x - y - borrow
        return f"{x} minus {take} is {result}" + ("." if last else f", write {result}."), 0
    result = x + 10 - y - borrow
    return f"{x + 10} minus {take} is {result}, write {result} borrow 1.", 1


def parse_arithmetic(instance: Instance) -> tuple[int, str, int]:
    """(a, operation, b) of an arithmetic instance's question."""
    match = QUESTION_PATTERN.search(instance.prompt)
    if not match:
        raise ValueError(f"not an arithmetic question: {instance.prompt!r}")
    return int(match.group(1)), match.group(2), int(match.group(3))


# ----------------------------------------------------------------------------- self-instruct

Generate = Callable[[list[str]], Sequence[str]]
SELF_INSTRUCT_HEADER = "Come up with a new task: an instruction, an optional input and its response."


@dataclasses.dataclass
class SelfInstructReport:
    prompts: int = 0
    accepted: int = 0
    rejected: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # reason -> n
    tasks: list = dataclasses.field(default_factory=list)  # the accepted {'instruction', 'input', 'output'} rows


@dataclasses.dataclass(frozen=True)
class SelfInstructSettings:
    demonstrations: int = 3  # tasks shown in each prompt (the paper: 6 seed + 2 generated)
    similarity_threshold: float = 0.7  # ROUGE-L F above this to any known instruction: near-duplicate
    max_chars: int = 1000  # longest formatted task kept
    min_instruction_words: int = 3  # the paper drops instructions shorter than 3 words
    template: TaskTemplate = INSTRUCTION_TEMPLATE
    task_separator: str = "\n\n"


def self_instruct(seed_tasks: Sequence[Mapping[str, str]], generate: Generate, rounds: int = 1,
                  per_round: int = 8, seed: int = 0, vocab=None,
                  settings: SelfInstructSettings = SelfInstructSettings()) -> list[Instance]:
    """New instances bootstrapped from ``seed_tasks`` ({'instruction', 'input'?, 'output'})."""
    return self_instruct_with_report(seed_tasks, generate, rounds, per_round, seed, vocab, settings)[0]


def self_instruct_with_report(seed_tasks, generate: Generate, rounds: int = 1, per_round: int = 8,
                              seed: int = 0, vocab=None,
                              settings: SelfInstructSettings = SelfInstructSettings()
                              ) -> tuple[list[Instance], SelfInstructReport]:
    """Self-Instruct (Wang et al., 2023), simplified to one generation per task.

    Each round builds ``per_round`` prompts, each showing ``settings.demonstrations`` tasks
    sampled from the pool (seed tasks plus those accepted so far) in the training layout and
    ending with the instruction marker; ``generate`` writes one continuation per prompt. A
    continuation is cut at the next task separator, parsed into instruction / input / output,
    and kept unless it is empty, too long, a near-duplicate of a known instruction (ROUGE-L),
    or (with ``vocab``) holds characters the vocabulary lacks. Returns the accepted tasks.
    """
    pool = [dict(task) for task in seed_tasks]
    for i, task in enumerate(pool):
        format_task_row(task, i, settings.template)  # fail early, naming the bad seed task
    if not pool:
        raise ValueError("self_instruct needs at least one seed task")
    rng = np.random.default_rng(seed)
    report, accepted = SelfInstructReport(), []
    for _ in range(rounds):
        prompts = [_generation_prompt(pool, rng, settings) for _ in range(per_round)]
        outputs = list(generate(prompts))
        if len(outputs) != len(prompts):
            raise ValueError(f"generate returned {len(outputs)} texts for {len(prompts)} prompts")
        report.prompts += len(prompts)
        for text in outputs:
            task, reason = _screen(text, pool, vocab, settings)
            if reason:
                report.rejected[reason] += 1
                continue
            pool.append(task)
            report.tasks.append(task)
            accepted.append(format_task_row(task, len(pool) - 1, settings.template))
    report.accepted = len(accepted)
    return accepted, report


def _generation_prompt(pool, rng, settings: SelfInstructSettings) -> str:
    k = min(settings.demonstrations, len(pool))
    shown = [format_task_row(pool[i], i, settings.template) for i in rng.choice(len(pool), k, replace=False)]
    tasks = [instance.text for instance in shown]
    return settings.task_separator.join([SELF_INSTRUCT_HEADER] + tasks + [settings.template.instruction_prefix])


def parse_generated_task(text: str, settings: SelfInstructSettings = SelfInstructSettings()
                         ) -> Optional[dict[str, str]]:
    """{'instruction', 'input', 'output'} from a continuation of the instruction marker, or None
    when it has no response marker."""
    template = settings.template
    text = text.split(settings.task_separator)[0]
    response_marker = template.line_separator + template.response_prefix
    if response_marker not in text:
        return None
    head, _, output = text.partition(response_marker)
    instruction, _, task_input = head.partition(template.line_separator + template.input_prefix)
    return {"instruction": instruction.strip(), "input": task_input.strip(), "output": output.strip()}


def _screen(text: str, pool, vocab, settings: SelfInstructSettings):
    """(task, None) when the generated task is kept, else (None, reason)."""
    task = parse_generated_task(text, settings)
    if task is None:
        return None, "unparsable"
    if not task["instruction"] or not task["output"]:
        return None, "empty"
    if len(_words(task["instruction"])) < settings.min_instruction_words:
        return None, "too_short"
    instance = format_task_row(task, None, settings.template)
    if len(instance.text) > settings.max_chars:
        return None, "too_long"
    if any(rouge_l(task["instruction"], known["instruction"]) > settings.similarity_threshold
           for known in pool):
        return None, "near_duplicate"
    if vocab is not None:
        from lm.instruct.rows import unrepresentable_characters

        if unrepresentable_characters(instance.text, vocab):
            return None, "unrepresentable"
    return task, None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of lowercased words (longest common subsequence), as Self-Instruct
    uses to drop near-duplicate instructions."""
    x, y = _words(candidate), _words(reference)
    if not x or not y:
        return 0.0
    lcs = _lcs_length(x, y)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(x), lcs / len(y)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(x: list[str], y: list[str]) -> int:
    previous = [0] * (len(y) + 1)
    for token in x:
        current = [0]
        for j, other in enumerate(y):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]
