"""Prompting for in-context learning, independent of any model: demonstrations (examples),
prompt rendering for k-shot and chain-of-thought (templates), choosing demonstrations for a query
(selection), answer extraction and self-consistency voting (answers), and few-shot accuracy
with any text generator (run)."""
from lm.prompting.answers import (PATTERNS, AnswerPattern, Vote, extract_answer, majority_vote,
                                  normalize_answer, self_consistency)
from lm.prompting.examples import Example, example_from_record, load_jsonl
from lm.prompting.run import few_shot_accuracy
from lm.prompting.selection import SELECTION_METHODS, TfidfIndex, select_demonstrations
from lm.prompting.templates import (PromptTemplate, render_cot, render_few_shot, render_zero_shot,
                                    render_zero_shot_cot)

__all__ = [
    "PATTERNS", "AnswerPattern", "Vote", "extract_answer", "majority_vote", "normalize_answer",
    "self_consistency", "Example", "example_from_record", "load_jsonl", "few_shot_accuracy",
    "SELECTION_METHODS", "TfidfIndex", "select_demonstrations", "PromptTemplate", "render_cot",
    "render_few_shot", "render_zero_shot", "render_zero_shot_cot",
]
