"""Few-shot accuracy with any text generator.

``generate_fn(prompts) -> samples`` takes a list of prompt strings and returns, for each prompt,
a list of ``n_samples`` generated continuations. With the cached decoder, for example (rows of
one batch sample independently, so a prompt repeated n times gives n samples)::

    settings = DecodeSettings(max_new_tokens=128, temperature=0.7, stop_strings=("\\n\\nQ:",))
    def generate_fn(prompts):
        return [generate_text(graphdef, params, vocab, [p] * n_samples, settings) for p in prompts]

Greedy decoding (temperature 0) with ``n_samples=1`` is plain few-shot evaluation. Stopping at
the next question keeps a rambling model from answering questions of its own.
"""
from __future__ import annotations

from typing import Callable, Sequence

from lm.prompting.answers import DEFAULT_PATTERNS, extract_answer, majority_vote, normalize_answer
from lm.prompting.examples import Example
from lm.prompting.selection import TfidfIndex, select_demonstrations
from lm.prompting.templates import (PromptTemplate, render_cot, render_few_shot, render_zero_shot_cot)

GenerateFn = Callable[[list[str]], Sequence[Sequence[str]]]


def build_prompts(pool: Sequence[Example], queries: Sequence[Example], template: PromptTemplate, k: int,
                  selection: str = "first", cot: bool = False, seed: int = 0) -> list[str]:
    """One prompt per query: k demonstrations chosen from ``pool`` (query i draws with seed
    ``seed + i`` under 'random'); ``cot`` renders chain of thought (zero-shot CoT when k is 0)."""
    index = TfidfIndex([e.input for e in pool]) if selection == "nearest" else None
    prompts = []
    for i, query in enumerate(queries):
        demonstrations = select_demonstrations(pool, query, k, selection, seed=seed + i, index=index)
        if not cot:
            prompts.append(render_few_shot(template, demonstrations, query))
        elif k == 0:
            prompts.append(render_zero_shot_cot(template, query))
        else:
            prompts.append(render_cot(template, demonstrations, query))
    return prompts


def few_shot_accuracy(generate_fn: GenerateFn, pool: Sequence[Example], queries: Sequence[Example],
                      template: PromptTemplate, k: int, selection: str = "first", n_samples: int = 1,
                      cot: bool = False, patterns=DEFAULT_PATTERNS, seed: int = 0) -> dict:
    """Exact-match accuracy (a fraction in [0, 1]) of the majority-voted answers over
    ``n_samples`` generations per query, answers and targets normalised alike.

    Returns accuracy, correct, total, answered (queries with any extractable answer), and per
    query: predictions (None when unanswered), vote_shares and prompts."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    prompts = build_prompts(pool, queries, template, k, selection, cot, seed)
    samples = generate_fn(prompts)
    _check_samples(samples, len(prompts), n_samples)
    votes = [majority_vote([extract_answer(text, patterns) for text in row]) for row in samples]
    correct = sum(v.answer is not None and v.answer == normalize_answer(q.target) for v, q in zip(votes, queries))
    return {
        "accuracy": correct / len(queries) if queries else 0.0,
        "correct": correct,
        "total": len(queries),
        "answered": sum(v.answer is not None for v in votes),
        "predictions": [v.answer for v in votes],
        "vote_shares": [v.share for v in votes],
        "prompts": prompts,
    }


def _check_samples(samples: Sequence[Sequence[str]], n_prompts: int, n_samples: int) -> None:
    if len(samples) != n_prompts:
        raise ValueError(f"generate_fn returned {len(samples)} rows for {n_prompts} prompts")
    for i, row in enumerate(samples):
        if isinstance(row, str) or len(row) != n_samples:
            got = "a string" if isinstance(row, str) else f"{len(row)} samples"
            raise ValueError(f"generate_fn returned {got} for prompt {i}; expected a list of {n_samples} strings")
