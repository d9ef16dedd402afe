"""Preference pairs for reward modelling and DPO: a prompt with a chosen and a rejected response.

Sources:

  read_preference_jsonl  rows {"prompt": str, "chosen": str, "rejected": str} (the prompt goes
                         through the instruction template, with an optional "input", as the
                         'tasks:' datasets do) or chat rows {"prompt": [messages], "chosen":
                         [one assistant message] or str, "rejected": ...} (the prompt is the
                         chat prompt up to the assistant marker). Bad rows are counted by
                         reason, never fatal, unless every row is bad.
  arithmetic_pairs       synthetic and verifiable: chosen right, rejected a plausible mistake
                         (``lm.align.arithmetic_pairs``).
  sampled_pairs          samples of a model ranked by a programmatic reward: best vs worst.

A pair's prompt is the exact text the model sees before its response. A chat prompt is text, so
it cannot hold the EOS ids that end earlier assistant turns (``lm.instruct.chat``); multi-turn
prompts are encoded without them.

Held-out pairs: one prompt in ``VALIDATION_SHARE`` (by a hash of its text, as
``lm.instruct.datasets`` holds out lines), so a prompt never lands in both splits.

``pair_rows`` encodes both members of each pair as unpacked instruction rows
(``lm.instruct.rows``): keys ``chosen_<key>`` and ``rejected_<key>`` for the five batch keys
(inputs, targets, weights, segment_ids, positions), each [N, seq_len], plus ``prompt_lengths``
[N]. A pair whose either side cannot be encoded is dropped whole and counted.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
from typing import Callable, Optional, Sequence, Union

import numpy as np

from lm.align import arithmetic_pairs as arithmetic
from lm.align.rewards import RewardFn, reward_function
from lm.data import pipeline
from lm.instruct import datasets, rows, synthetic
from lm.instruct.chat import CHAT_TEMPLATE
from lm.instruct.instances import Instance, format_task_row

SIDES = ("chosen", "rejected")
SPLITS = datasets.SPLITS
VALIDATION_SHARE = datasets.VALIDATION_SHARE
ROW_HELP = ('{"prompt": "...", "chosen": "...", "rejected": "..."} or {"prompt": [{"role": '
            '"user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}], '
            '"rejected": [...]}')
Generate = Callable[[list[str], int], Sequence[Sequence[str]]]  # (prompts, n) -> n samples each


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: str  # the full prompt text, template applied: "Instruction: ...\nResponse: "
    chosen: str
    rejected: str

    def __post_init__(self):
        for name in ("prompt", *SIDES):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"PreferencePair.{name} must be a string, got "
                                f"{type(getattr(self, name)).__name__}")

    def instances(self) -> tuple[Instance, Instance]:
        """(chosen, rejected) as single-turn instances sharing the prompt."""
        return Instance.from_pair(self.prompt, self.chosen), Instance.from_pair(self.prompt, self.rejected)

    @property
    def identical(self) -> bool:
        return self.chosen.strip() == self.rejected.strip()


@dataclasses.dataclass
class SkipCounts:
    """Skipped rows or prompts by reason, with where and why each reason first happened."""
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first: dict[str, str] = dataclasses.field(default_factory=dict)  # reason -> first detail

    def add(self, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        self.first.setdefault(reason, detail)

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.total}: {parts}"

    def __str__(self) -> str:
        return self.summary()


# ----------------------------------------------------------------------------- JSONL

class BadPreferenceRow(ValueError):
    """A JSONL row that is not a usable pair; ``reason`` is its skip-count key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def read_preference_jsonl(path: str, split: str, count: Optional[int] = None,
                          seed: int = 0) -> tuple[list[PreferencePair], SkipCounts]:
    """The pairs of ``split`` in a JSONL file (see the module docstring), and the bad rows of
    the whole file by reason. ``count``: that many pairs chosen by ``seed`` in file order
    (None: all)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count={count!r} must be a positive integer or None (all pairs)")
    file = datasets.resolve_path(path)
    pairs, skips, first_bad, lines = [], SkipCounts(), None, 0
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            lines += 1
            try:
                pairs.append(parse_preference_row(line))
            except BadPreferenceRow as bad:
                skips.add(bad.reason, f"line {number}: {bad.detail}")
                first_bad = first_bad or f"line {number}: {bad.reason}: {bad.detail}"
    if not pairs:
        why = f"every one of its {lines} rows is bad (first: {first_bad})" if lines else "has no rows"
        raise ValueError(f"{file}: {why}; write one JSON object per line, {ROW_HELP}")
    held = [pair for pair in pairs if datasets.split_of_line(pair.prompt) == split]
    if not held:
        raise ValueError(f"{file} has no {split} pairs (one prompt in {VALIDATION_SHARE} is "
                         "held out by a hash of its text); add rows")
    if count is not None:
        if count > len(held):
            raise ValueError(f"{file} has {len(held)} {split} pairs, fewer than count={count}; "
                             "ask for fewer or pass count=None for all of them")
        held = [held[i] for i in np.sort(np.random.default_rng(seed).choice(len(held), count, replace=False))]
    return held, skips


def read_prompts_jsonl(path: str, split: str, count: int) -> list[str]:
    """Up to ``count`` prompts of ``split`` from JSONL rows ``{"prompt": text or chat messages}``
    (other fields ignored; rows without a usable prompt are skipped), for rollouts."""
    file = datasets.resolve_path(path)
    prompts = []
    with open(file, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line) if line.strip() else None
                if isinstance(record, dict) and not _is_blank(record.get("prompt") or ""):
                    prompts.append(_prompt_text(record))
            except (json.JSONDecodeError, BadPreferenceRow):
                continue
    held = [p for p in prompts if datasets.split_of_line(p) == split]
    if not held:
        raise ValueError(f"{file} has no usable {split} prompts; write one JSON object per line "
                         "with a 'prompt' (text, or a list of chat messages)")
    return held[:count]


def parse_preference_row(line: str) -> PreferencePair:
    """One JSONL row as a pair; raises ``BadPreferenceRow`` naming the skip reason."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadPreferenceRow("not_json", f"not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise BadPreferenceRow("bad_format", f"a row must be a JSON object, got {type(record).__name__}")
    for name in ("prompt", *SIDES):
        if record.get(name) is None:
            raise BadPreferenceRow(f"missing_field:{name}", f"no field {name!r} (fields: "
                          f"{', '.join(map(repr, record)) or 'none'})")
    if _is_blank(record["prompt"]):
        raise BadPreferenceRow("empty", "the prompt is empty")
    prompt = _prompt_text(record)
    chosen, rejected = (_response_text(record[side], side) for side in SIDES)
    for side, text in zip(SIDES, (chosen, rejected)):
        if not text.strip():
            raise BadPreferenceRow("empty", f"{side} is empty")
    pair = PreferencePair(prompt, chosen, rejected)
    if pair.identical:
        raise BadPreferenceRow("identical", "chosen and rejected are the same text; a pair must differ")
    return pair


def _is_blank(value) -> bool:
    return (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value)


def _prompt_text(record: dict) -> str:
    prompt = record["prompt"]
    try:
        if isinstance(prompt, str):
            task = {"instruction": prompt, "input": record.get("input") or "", "output": ""}
            return format_task_row(task).prompt
        if isinstance(prompt, list):
            return CHAT_TEMPLATE.prompt(prompt)
    except ValueError as e:
        raise BadPreferenceRow("bad_format", f"prompt: {e}") from None
    raise BadPreferenceRow("bad_format", f"'prompt' must be a string or a list of chat messages, got "
                  f"{type(prompt).__name__}")


def _response_text(value, side: str) -> str:
    """A response given as text, one assistant message, or a list holding one."""
    if isinstance(value, str):
        return value
    messages = [value] if isinstance(value, dict) else value
    role = CHAT_TEMPLATE.response_role
    if not isinstance(messages, list) or len(messages) != 1:
        raise BadPreferenceRow("bad_format", f"{side!r} must be a string or one {role} message, got "
                      f"{len(messages) if isinstance(messages, list) else type(value).__name__}"
                      f"{' messages' if isinstance(messages, list) else ''}")
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != role \
            or not isinstance(message.get("content"), str):
        raise BadPreferenceRow("bad_format", f"{side!r} must be a {{'role': {role!r}, 'content': str}} "
                      f"message, got {message!r}")
    return message["content"]


# ----------------------------------------------------------------------------- synthetic

def arithmetic_pairs(split: str, count: int, digits: int = 2, rationale: bool = False,
                     seed: int = 0, operation: str = "plus") -> list[PreferencePair]:
    """``count`` distinct questions of ``split`` (``lm.instruct.synthetic.arithmetic_split``):
    chosen the right answer, rejected the dropped carry or a digit off by one; with
    ``rationale`` both are worked steps, the rejected ones making the mistake visibly."""
    pairs = []
    for instance in synthetic.arithmetic_split(split, count, digits, rationale, seed, operation):
        a, question_operation, b = synthetic.parse_arithmetic(instance)
        wrong = arithmetic.wrong_answer(a, b, question_operation, seed)
        pairs.append(PreferencePair(instance.prompt, instance.responses[0],
                                    arithmetic.answer_text(wrong, rationale)))
    return pairs


def sampled_pairs(prompts: Sequence[str], generate: Generate, reward: Union[str, RewardFn],
                  samples_per_prompt: int) -> tuple[list[PreferencePair], SkipCounts]:
    """Best vs worst of ``samples_per_prompt`` samples per prompt under ``reward`` (a callable
    or a name of ``lm.align.rewards``). Non-finite rewards leave their sample out
    ('bad_reward'); a prompt whose scored samples all tie is skipped ('no_spread')."""
    if isinstance(samples_per_prompt, bool) or not isinstance(samples_per_prompt, int) \
            or samples_per_prompt < 2:
        raise ValueError(f"samples_per_prompt={samples_per_prompt!r} must be an integer of at "
                         "least 2: a pair needs two samples to rank")
    reward_fn = reward_function(reward) if isinstance(reward, str) else reward
    prompts = list(prompts)
    samples = list(generate(prompts, samples_per_prompt))
    if len(samples) != len(prompts):
        raise ValueError(f"generate returned samples for {len(samples)} prompts, not {len(prompts)}")
    pairs, skips = [], SkipCounts()
    for index, (prompt, texts) in enumerate(zip(prompts, samples)):
        if len(texts) != samples_per_prompt:
            raise ValueError(f"generate returned {len(texts)} samples for prompt {index}, not "
                             f"{samples_per_prompt}")
        scored = []
        for text in texts:
            value = float(reward_fn(prompt, text))
            if math.isfinite(value):
                scored.append((value, text))
            else:
                skips.add("bad_reward", f"prompt {index}: reward {value} for {text[:60]!r}")
        values = [value for value, _ in scored]
        if len(values) < 2 or min(values) == max(values):
            skips.add("no_spread", f"prompt {index}: {len(scored)} scored samples, all tied")
            continue
        best = max(scored, key=lambda scored_text: scored_text[0])  # the first of equals
        worst = min(scored, key=lambda scored_text: scored_text[0])
        pair = PreferencePair(prompt, best[1], worst[1])
        if pair.identical:  # possible only with a reward that scores one text two ways
            skips.add("identical", f"prompt {index}: best and worst are the same text")
            continue
        pairs.append(pair)
    return pairs, skips


# ----------------------------------------------------------------------------- rows

@dataclasses.dataclass
class PairReport:
    pairs: int = 0  # given
    kept: int = 0  # in the rows
    response_tokens: int = 0  # weighted target positions, both sides together
    skipped_too_long: int = 0
    skipped_unrepresentable: int = 0
    skipped_identical: int = 0
    skipped_no_response: int = 0  # never: a pair's instances always end in a response's EOS
    skip_reasons: dict[int, str] = dataclasses.field(default_factory=dict)  # pair index -> why

    @property
    def skipped(self) -> int:
        return self.skipped_too_long + self.skipped_unrepresentable + self.skipped_identical

    def summary(self) -> str:
        return (f"{self.kept}/{self.pairs} pairs in rows, {self.response_tokens} trained tokens; "
                f"skipped {self.skipped_too_long} too long, {self.skipped_unrepresentable} with "
                f"unrepresentable characters, {self.skipped_identical} identical")

    def __str__(self) -> str:
        return self.summary()


def pair_rows(pairs: Sequence[PreferencePair], vocab, seq_len: int, on_overflow: str = "skip",
              on_unrepresentable: str = "skip") -> tuple[rows.Arrays, PairReport]:
    """Both sides of every encodable pair as instruction rows (see the module docstring);
    'error' for either policy raises naming the pair instead of skipping it."""
    for name, value in (("on_overflow", on_overflow), ("on_unrepresentable", on_unrepresentable)):
        if value not in rows.OVERFLOW_CHOICES:
            raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, rows.OVERFLOW_CHOICES))}")
    report = PairReport(pairs=len(pairs))
    kept, prompt_lengths, lengths = [], [], {side: [] for side in SIDES}
    for index, pair in enumerate(pairs):
        encoded = _encode_pair(index, pair, vocab, seq_len, on_overflow, on_unrepresentable, report)
        if encoded is not None:
            kept.append(pair)
            prompt_lengths.append(encoded[0])
            for side, n in zip(SIDES, encoded[1]):
                lengths[side].append(n)
    arrays: rows.Arrays = {}
    for side_number, side in enumerate(SIDES):
        instances = [pair.instances()[side_number] for pair in kept]
        side_arrays, side_report = rows.instruction_rows(instances, vocab, seq_len, on_overflow="error")
        real_nt = np.arange(seq_len)[None, :] < np.asarray(lengths[side], np.int64).reshape(-1, 1)
        side_arrays["segment_ids"] = real_nt.astype(np.int32)  # one instance per row: 1, 0 on padding
        arrays.update({f"{side}_{key}": values for key, values in side_arrays.items()})
        report.response_tokens += side_report.response_tokens
    arrays["prompt_lengths"] = np.asarray(prompt_lengths, np.int32)
    report.kept = len(kept)
    return arrays, report


def _encode_pair(index, pair, vocab, seq_len, on_overflow, on_unrepresentable,
                 report: PairReport) -> Optional[tuple[int, tuple[int, int]]]:
    """(prompt tokens, (chosen, rejected) row lengths), or None after counting the skip."""
    if pair.identical:
        report.skipped_identical += 1
        report.skip_reasons[index] = f"pair {index}: chosen and rejected are the same text"
        return None
    row_lengths = []
    for side, instance in zip(SIDES, pair.instances()):
        encoded = rows.encode_or_skip(index, instance, vocab, seq_len, on_overflow, on_unrepresentable,
                                      report, f"pair {index} ({side})")
        if encoded is None:
            return None
        tokens, weights = encoded
        row_lengths.append(len(tokens) - 1)  # inputs are the tokens but the last
    return int(np.argmax(weights > 0)), tuple(row_lengths)


def side_batch(batch: rows.Arrays, side: str) -> rows.Arrays:
    """One side of a pair batch under the plain batch keys (inputs, targets, ...)."""
    if side not in SIDES:
        raise ValueError(f"side={side!r} must be one of {', '.join(SIDES)}")
    prefix = side + "_"
    return {key[len(prefix):]: values for key, values in batch.items() if key.startswith(prefix)}


def pair_batch_at(arrays: rows.Arrays, batch_size: int, seed: int, step: int,
                  process_index: int = 0, process_count: int = 1) -> rows.Arrays:
    """This host's pairs of global batch ``step``, in the seeded epoch order of
    ``lm.instruct.rows.batch_at``, so pair batches resume by step alike."""
    if len(arrays["chosen_inputs"]) == 0:
        raise ValueError("no pairs to batch: every pair was skipped (see the PairReport)")
    # batch_at counts rows by 'inputs'; the chosen side stands in for it (no copy).
    picked = rows.batch_at({**arrays, "inputs": arrays["chosen_inputs"]}, batch_size, seed, step,
                           process_index, process_count)
    picked.pop("inputs")
    return picked


def pair_batches(arrays: rows.Arrays, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1) -> pipeline.BatchIterator:
    """Infinite pair batches, epoch after epoch, resumable (``get_state`` / ``set_state``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    return pipeline.BatchIterator(
        lambda step: pair_batch_at(arrays, batch_size, seed, step, process_index, process_count), seed)
