"""Prompt rendering for zero-shot, k-shot and chain-of-thought prompting, as pure functions.

With the default ``PromptTemplate`` a 2-shot prompt reads::

    <instruction>                      (left out when empty)

    Q: <input 1>
    A: <target 1>

    Q: <input 2>
    A: <target 2>

    Q: <query>
    A:

Each demonstration is ``input_format``, ``input_answer_separator``, ``answer_prefix``, a space and
the answer; the query stops at the answer prefix (no trailing space), so the model writes the
answer. In chain-of-thought mode (Wei et al., 2022) each answer is ``cot_answer_format``, by
default "Let's think step by step. <rationale> The answer is <target>.", and every demonstration
must have a rationale. Zero-shot chain of thought (Kojima et al., 2022) ends the prompt with
"A: Let's think step by step.".

Formats use ``str.format`` placeholders: ``{input}``, ``{target}`` and ``{rationale}``; write a
literal brace as ``{{`` or ``}}``. Values are substituted once, so braces inside the examples'
text need no escaping.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Sequence, Union

from lm.prompting.examples import Example

Query = Union[str, Example]

# field -> (placeholders it must contain, placeholders it may contain)
_PLACEHOLDERS = {
    "input_format": ({"input"}, {"input"}),
    "answer_format": ({"target"}, {"target", "rationale"}),
    "cot_answer_format": ({"rationale", "target"}, {"rationale", "target"}),
}


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    instruction: str = ""                  # header before the demonstrations; '' for none
    input_format: str = "Q: {input}"       # the question part of a demonstration and of the query
    answer_prefix: str = "A:"              # opens every answer; the prompt ends with it
    answer_format: str = "{target}"        # a direct answer, after the prefix and a space
    cot_answer_format: str = "Let's think step by step. {rationale} The answer is {target}."
    cot_trigger: str = "Let's think step by step."  # zero-shot chain of thought, after the prefix
    input_answer_separator: str = "\n"     # between the question and the answer prefix
    separator: str = "\n\n"                # between the instruction, the demonstrations and the query

    def __post_init__(self):
        for field, (required, allowed) in _PLACEHOLDERS.items():
            found = _placeholders(field, getattr(self, field))
            if required - found:
                raise ValueError(f"PromptTemplate.{field} {getattr(self, field)!r} lacks the placeholder(s) "
                                 f"{_braced(required - found)}")
            if found - allowed:
                raise ValueError(f"PromptTemplate.{field} {getattr(self, field)!r} has unknown placeholder(s) "
                                 f"{_braced(found - allowed)}; allowed: {_braced(allowed)}")
        for field in ("instruction", "answer_prefix", "cot_trigger"):
            if _placeholders(field, getattr(self, field)):
                raise ValueError(f"PromptTemplate.{field} is plain text; write braces as '{{{{' and '}}}}'")


def render_zero_shot(template: PromptTemplate, query: Query) -> str:
    """The instruction (if any) and the query, ending with the answer prefix."""
    return render_few_shot(template, [], query)


def render_few_shot(template: PromptTemplate, demonstrations: Sequence[Example], query: Query) -> str:
    """k-shot prompt (k = len(demonstrations)): each demonstration answered directly."""
    shots = [_demonstration(template, d, template.answer_format) for d in demonstrations]
    return _join(template, shots, _question(template, query) + template.answer_prefix)


def render_cot(template: PromptTemplate, demonstrations: Sequence[Example], query: Query) -> str:
    """Few-shot chain of thought: each demonstration reasons (its rationale) before its answer."""
    for i, demonstration in enumerate(demonstrations):
        if not demonstration.rationale.strip():
            raise ValueError(f"chain-of-thought demonstration {i} (input {demonstration.input[:60]!r}) "
                             "has no rationale")
    shots = [_demonstration(template, d, template.cot_answer_format) for d in demonstrations]
    return _join(template, shots, _question(template, query) + template.answer_prefix)


def render_zero_shot_cot(template: PromptTemplate, query: Query) -> str:
    """Zero-shot chain of thought: the query's answer opens with ``template.cot_trigger``."""
    return _join(template, [], f"{_question(template, query)}{template.answer_prefix} {template.cot_trigger}")


def _demonstration(template: PromptTemplate, example: Example, answer_format: str) -> str:
    answer = answer_format.format(target=example.target, rationale=example.rationale)
    return f"{_question(template, example)}{template.answer_prefix} {answer}"


def _question(template: PromptTemplate, query: Query) -> str:
    text = query.input if isinstance(query, Example) else query
    if not isinstance(text, str):
        raise TypeError(f"a query is a string or an Example, got {type(query).__name__}")
    return template.input_format.format(input=text) + template.input_answer_separator


def _join(template: PromptTemplate, shots: list[str], query: str) -> str:
    parts = ([template.instruction] if template.instruction else []) + shots + [query]
    return template.separator.join(parts)


def _placeholders(field: str, text: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise ValueError(f"PromptTemplate.{field} {text!r} is not a valid format string ({e})") from None


def _braced(names: set[str]) -> str:
    return ", ".join("{" + n + "}" for n in sorted(names))
