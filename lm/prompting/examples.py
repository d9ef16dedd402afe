"""Demonstrations and queries: an ``Example`` record and a JSONL loader.

Each line of a JSONL file is one JSON object; the field names of the input, the target and the
(optional) rationale are arguments, so GSM8K-, MMLU- or CoT-style files load without conversion.
A target field that holds the rationale too, as GSM8K's ``answer`` does
("...reasoning...\\n#### 72"), is split at the last ``answer_marker``. Blank lines are skipped;
any other bad line raises ``ValueError`` naming the file and the line number.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Example:
    input: str
    target: str
    rationale: str = ""  # the worked reasoning; chain-of-thought demonstrations need it


def example_from_record(record: Mapping[str, Any], input_field: str = "input", target_field: str = "target",
                        rationale_field: Optional[str] = "rationale",
                        answer_marker: Optional[str] = None) -> Example:
    """An ``Example`` from one mapping. The input must be a string; the target a string or a
    number (converted with ``str``); the rationale, when the field is present, a string. With
    ``answer_marker`` the target field is split at its last occurrence into rationale and target."""
    if not isinstance(record, Mapping):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    text = _string_field(record, input_field)
    target = _string_field(record, target_field, numbers=True)
    rationale = ""
    if rationale_field is not None and rationale_field in record:
        rationale = _string_field(record, rationale_field)
    if answer_marker is not None:
        if answer_marker not in target:
            raise ValueError(f"field {target_field!r} has no answer marker {answer_marker!r}: {target[:80]!r}")
        head, _, target = target.rpartition(answer_marker)
        rationale = rationale or head.strip()
    return Example(input=text, target=target.strip(), rationale=rationale.strip())


def load_jsonl(path: str | os.PathLike, input_field: str = "input", target_field: str = "target",
               rationale_field: Optional[str] = "rationale", answer_marker: Optional[str] = None) -> list[Example]:
    """Every example of a JSONL file (see ``example_from_record`` for the fields)."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({e.msg})") from None
            try:
                examples.append(example_from_record(record, input_field, target_field, rationale_field,
                                                    answer_marker))
            except ValueError as e:
                raise ValueError(f"{path}, line {line_number}: {e}") from None
    return examples


def _string_field(record: Mapping[str, Any], name: str, numbers: bool = False) -> str:
    if name not in record:
        have = ", ".join(repr(k) for k in record) or "none"
        raise ValueError(f"missing field {name!r} (fields: {have})")
    value = record[name]
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    kind = "a string or a number" if numbers else "a string"
    raise ValueError(f"field {name!r} must be {kind}, got {type(value).__name__} {value!r}")
