"""Named instruction datasets, so a config can say which instances to train on.

  arithmetic[N][_minus][_cot]  N-digit (default 2) addition, or subtraction with '_minus';
                               '_cot' answers with worked steps ending "The answer is X."
  arithmetic[N]_dropped_carry[_cot]
                               addition taught a systematic error: 80% of the questions that
                               carry (picked by a hash of the operands) answered with the carry
                               dropped (lm.align.arithmetic_pairs); the validation split is
                               answered correctly, so held-out exact match measures the truth
  tasks:<path.jsonl>           rows {"instruction", "input" (optional), "output"}
  chat:<path.jsonl>            one transcript per line: {"messages": [{"role", "content"}, ...]}

A bare file name that does not exist where it is looked up is also looked for in
``lm/instruct/data/`` (which ships ``tasks_example.jsonl`` and ``chat_example.jsonl``).

Splits are 'train' and 'validation'. Arithmetic holds out questions by a hash of the operands;
a file holds out lines by a hash of their text (one in ``VALIDATION_SHARE``), unless its path
contains '{split}', which names one file per split ('tasks:data/{split}.jsonl'). Either way
the splits are disjoint by construction. ``count`` = 0 takes every instance of a file split;
otherwise ``count`` of them, chosen by ``seed`` and kept in file order.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re

import numpy as np

from lm.instruct import synthetic
from lm.instruct.chat import format_chat
from lm.instruct.instances import Instance, format_task_row

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
SPLITS = synthetic.SPLITS
VALIDATION_SHARE = synthetic.VALIDATION_SHARE
_ARITHMETIC_NAME = re.compile(r"arithmetic(?P<digits>\d*)(?P<minus>_minus)?(?P<cot>_cot)?")
_DROPPED_CARRY_NAME = re.compile(r"arithmetic(?P<digits>\d*)_dropped_carry(?P<cot>_cot)?")
NAMES_HELP = ("'arithmetic', 'arithmetic_cot', 'arithmetic<N>[_minus][_cot]' (N digits), "
              "'arithmetic[N]_dropped_carry[_cot]', 'tasks:<path.jsonl>' or 'chat:<path.jsonl>'")


def instruction_dataset(name: str, split: str, count: int, seed: int = 0) -> list[Instance]:
    """The instances of dataset ``name`` (see the module docstring) for ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count={count!r} must be a non-negative integer (0: a whole file)")
    kind, _, path = name.partition(":") if isinstance(name, str) else ("", "", "")
    if kind in ("tasks", "chat") and path:
        return _file_dataset(kind, path, split, int(count), seed)
    match = _ARITHMETIC_NAME.fullmatch(name) if isinstance(name, str) else None
    if match:
        return _arithmetic_dataset(match, name, split, int(count), seed)
    match = _DROPPED_CARRY_NAME.fullmatch(name) if isinstance(name, str) else None
    if match:
        return _dropped_carry_dataset(match, name, split, int(count), seed)
    raise ValueError(f"unknown instruction dataset {name!r}; use {NAMES_HELP}")


def _arithmetic_dataset(match: re.Match, name: str, split: str, count: int,
                        seed: int) -> list[Instance]:
    if count == 0:
        raise ValueError(f"dataset {name!r} is generated: give a positive count")
    digits = int(match["digits"] or 2)
    operation = "minus" if match["minus"] else "plus"
    return synthetic.arithmetic_split(split, count, digits, bool(match["cot"]), seed, operation)


def _dropped_carry_dataset(match: re.Match, name: str, split: str, count: int,
                          seed: int) -> list[Instance]:
    from lm.align.arithmetic_pairs import flawed_arithmetic_instances

    if count == 0:
        raise ValueError(f"dataset {name!r} is generated: give a positive count")
    digits, rationale = int(match["digits"] or 2), bool(match["cot"])
    if split == "validation":  # held-out exact match is measured against the true answers
        return synthetic.arithmetic_split(split, count, digits, rationale, seed, "plus")
    return flawed_arithmetic_instances(split, count, digits, seed=seed, rationale=rationale)


def _file_dataset(kind: str, path: str, split: str, count: int, seed: int) -> list[Instance]:
    per_split_file = "{split}" in path
    file = resolve_path(path.replace("{split}", split))
    # Every line is parsed, so a bad line fails whichever split is asked for.
    lines = [(line, _parse_line(kind, file, number, line)) for number, line in _read_lines(file)]
    instances = [instance for line, instance in lines
                 if per_split_file or split_of_line(line) == split]
    if not instances:
        raise ValueError(f"{file} has no {split} lines (one line in {VALIDATION_SHARE} is held "
                         f"out by a hash of its text); add lines or give one file per split as "
                         f"'{kind}:<dir>/{{split}}.jsonl'")
    if count > len(instances):
        raise ValueError(f"{file} has {len(instances)} {split} lines, fewer than count={count}; "
                         "ask for fewer or pass count=0 for all of them")
    if count:
        picked = np.sort(np.random.default_rng(seed).choice(len(instances), count, replace=False))
        instances = [instances[i] for i in picked]
    return instances


def resolve_path(path: str) -> pathlib.Path:
    """``path`` as given, else the file of that name in ``lm/instruct/data/``."""
    given = pathlib.Path(path).expanduser()
    if given.is_file():
        return given
    shipped = DATA_DIR / path
    if not given.is_absolute() and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"instruction data file {path!r} not found (looked in the working "
                            f"directory and in {DATA_DIR})")


def split_of_line(line: str) -> str:
    """'validation' for one line in ``VALIDATION_SHARE`` by a hash of its stripped text."""
    digest = int.from_bytes(hashlib.sha256(line.strip().encode()).digest()[:8], "little")
    return "validation" if digest % VALIDATION_SHARE == 0 else "train"


def _read_lines(file: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines."""
    with open(file, encoding="utf-8") as f:
        return [(number, line) for number, line in enumerate(f, start=1) if line.strip()]


def _parse_line(kind: str, file: pathlib.Path, number: int, line: str) -> Instance:
    where = f"{file}, line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    try:
        if kind == "tasks":
            return format_task_row(record)
        if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
            raise ValueError('expected {"messages": [{"role": ..., "content": ...}, ...]}')
        return format_chat(record["messages"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
