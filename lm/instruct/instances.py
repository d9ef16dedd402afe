"""Instruction instances and task-dataset templates.

An ``Instance`` is text cut into segments, each flagged whether it is a response (trained on)
or prompt (context only). Keeping the cut in the data, not in the token stream, lets one
instance be tokenized by any vocabulary and still mask the loss exactly at the boundary.

``TaskTemplate`` turns rows of a task dataset (a dict per example) into instances laid out
like Alpaca, with characters the default character vocabulary has (no '#')::

    Instruction: Classify the review as positive or negative.
    Input: A fine play, well acted.
    Response: positive

The input line is left out when the row's input is empty. The instruction is a ``str.format``
string over the row's fields, so one template serves fixed instructions ("Answer the
question.") and per-row ones ("{instruction}").
"""
from __future__ import annotations

import dataclasses
import string
from typing import Any, Mapping, Optional, Sequence

Segment = tuple[str, bool]  # (text, is_response)


@dataclasses.dataclass(frozen=True)
class Instance:
    """Text pieces in order; each response piece is followed by EOS in the token stream.

    The first piece must be prompt text: the first token is only ever context (nothing
    precedes it to predict it from), so a leading response token could not be trained.
    """
    segments: tuple[Segment, ...]

    def __post_init__(self):
        segments = tuple((text, is_response) for text, is_response in self.segments)
        for i, (text, is_response) in enumerate(segments):
            if not isinstance(text, str) or not isinstance(is_response, bool):
                raise TypeError(f"segment {i} must be (str, bool), got "
                                f"({type(text).__name__}, {type(is_response).__name__})")
        if not segments or segments[0][1] or not segments[0][0]:
            raise ValueError("an instance must start with non-empty prompt text (the first "
                             f"token is never predicted); got segments {segments[:2]!r}")
        object.__setattr__(self, "segments", _merge_adjacent(segments))

    @classmethod
    def from_pair(cls, prompt: str, response: str) -> "Instance":
        """A single-turn instance: ``prompt`` then one trained ``response``."""
        return cls(((prompt, False), (response, True)))

    @property
    def prompt(self) -> str:
        """The text before the first response (all of it when there is none)."""
        head = []
        for text, is_response in self.segments:
            if is_response:
                break
            head.append(text)
        return "".join(head)

    @property
    def responses(self) -> tuple[str, ...]:
        return tuple(text for text, is_response in self.segments if is_response)

    @property
    def text(self) -> str:
        """Every segment joined (EOS marks are not text)."""
        return "".join(text for text, _ in self.segments)

    @property
    def is_single_turn(self) -> bool:
        """One prompt and one response after it: the (inputs, targets) shape of seqio tasks."""
        return len(self.segments) == 2 and self.segments[1][1]


def _merge_adjacent(segments: tuple[Segment, ...]) -> tuple[Segment, ...]:
    """Joins neighbouring prompt pieces, so segments alternate prompt / response.

    Neighbouring responses stay apart: each one ends with its own EOS.
    """
    merged: list[Segment] = []
    for text, is_response in segments:
        if merged and not is_response and not merged[-1][1]:
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, is_response))
    return tuple(merged)


@dataclasses.dataclass(frozen=True)
class TaskTemplate:
    """Rows of a task dataset -> instruction / input / response instances."""
    instruction: str  # str.format over the row's fields, e.g. "Answer the question." or "{instruction}"
    input_field: str  # '' for tasks without an input
    output_field: str
    labels: tuple[str, ...] = ()  # classification: allowed outputs; an int output indexes them
    instruction_prefix: str = "Instruction: "
    input_prefix: str = "Input: "
    response_prefix: str = "Response: "
    line_separator: str = "\n"

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(self.labels))
        try:
            self.instruction_fields()
        except ValueError as e:
            raise ValueError(f"TaskTemplate.instruction {self.instruction!r} is not a valid "
                             f"format string ({e}); write braces as '{{{{' and '}}}}'") from None

    def instruction_fields(self) -> set[str]:
        """The row fields the instruction reads."""
        return {name for _, name, _, _ in string.Formatter().parse(self.instruction) if name}

    def format(self, row: Mapping[str, Any], index: Optional[int] = None) -> Instance:
        """The instance of one row; ``index`` (the row's position) goes into error messages."""
        where = "row" if index is None else f"row {index}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where} must be a JSON object / dict, got {type(row).__name__}")
        fields = {name: _field(row, name, where) for name in self.instruction_fields()}
        lines = [self.instruction_prefix + self.instruction.format(**fields)]
        task_input = _field(row, self.input_field, where) if self.input_field else ""
        if task_input:
            lines.append(self.input_prefix + task_input)
        lines.append(self.response_prefix)
        return Instance.from_pair(self.line_separator.join(lines), self._output(row, where))

    def format_all(self, rows: Sequence[Mapping[str, Any]]) -> list[Instance]:
        return [self.format(row, i) for i, row in enumerate(rows)]

    def _output(self, row: Mapping[str, Any], where: str) -> str:
        value = row.get(self.output_field) if isinstance(row, Mapping) else None
        if self.labels and isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(self.labels):
                raise ValueError(f"{where}: label index {value} is outside the "
                                 f"{len(self.labels)} labels {list(self.labels)}")
            return self.labels[value]
        output = _field(row, self.output_field, where)
        if self.labels and output not in self.labels:
            raise ValueError(f"{where}: field {self.output_field!r} is {output!r}, not one of the "
                             f"labels {list(self.labels)}")
        return output


def _field(row: Mapping[str, Any], name: str, where: str) -> str:
    if name not in row:
        have = ", ".join(repr(k) for k in row) or "none"
        raise ValueError(f"{where} has no field {name!r} (fields: {have})")
    value = row[name]
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: field {name!r} must be a string or a number, got "
                     f"{type(value).__name__} {value!r}")


def classification_template(labels: Sequence[str], text_field: str = "text",
                            label_field: str = "label", task: str = "Classify the text") -> TaskTemplate:
    """Text classification: the instruction lists the labels; the output is one of them (or an
    int indexing them, as in many datasets' label columns)."""
    labels = tuple(labels)
    if len(labels) < 2:
        raise ValueError(f"a classification template needs at least two labels, got {list(labels)}")
    return TaskTemplate(instruction=f"{task} as one of: {', '.join(labels)}.",
                        input_field=text_field, output_field=label_field, labels=labels)


def qa_template(question_field: str = "question", answer_field: str = "answer",
                context_field: str = "") -> TaskTemplate:
    """Question answering; with ``context_field`` the passage goes into the instruction."""
    instruction = "Answer the question."
    if context_field:
        instruction = "Answer the question from the passage.\nPassage: {" + context_field + "}"
    return TaskTemplate(instruction=instruction, input_field=question_field,
                        output_field=answer_field)


# Rows with 'instruction', optional 'input' and 'output' fields (the Alpaca / Self-Instruct
# layout): the instruction is read from the row.
INSTRUCTION_TEMPLATE = TaskTemplate(instruction="{instruction}", input_field="input",
                                    output_field="output")
QA_TEMPLATE = qa_template()


def format_task_row(row: Mapping[str, Any], index: Optional[int] = None,
                    template: TaskTemplate = INSTRUCTION_TEMPLATE) -> Instance:
    """An instruction row; a missing, null or empty 'input' means a task without input."""
    if isinstance(row, Mapping) and template.input_field and row.get(template.input_field) is None:
        row = {**row, template.input_field: ""}
    return template.format(row, index)
