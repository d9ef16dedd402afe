"""The evaluation report in a workdir: ``eval/step<N>.json``, ``eval/step<N>.md`` and
``eval/step<N>_samples/<task>.jsonl``, each written atomically (lm.fileio)."""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

from lm.eval.tasks import EvalTask
from lm.fileio import write_atomically

# Metrics where lower is better, marked in the table so nobody reads them the wrong way round.
LOWER_IS_BETTER = ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity", "loss",
                   "perplexity")


def write(directory: str, step: int, validation: Mapping, tasks: Sequence[EvalTask],
          results: Mapping[str, Mapping[str, float]], samples: Mapping[str, list[dict]]) -> None:
    summary = {"step": step, "validation": {k: v for k, v in validation.items() if k != "step"},
               "tasks": {t.name: {"kind": t.kind, "rows": len(t.rows), "metrics": dict(results[t.name])}
                         for t in tasks}}
    write_atomically(os.path.join(directory, f"step{step}.json"), json.dumps(summary, indent=2) + "\n")
    write_atomically(os.path.join(directory, f"step{step}.md"), markdown_table(step, tasks, results))
    sample_dir = os.path.join(directory, f"step{step}_samples")
    for name, rows in samples.items():
        write_atomically(os.path.join(sample_dir, f"{name}.jsonl"),
                      "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def markdown_table(step: int, tasks: Sequence[EvalTask], results: Mapping[str, Mapping[str, float]]) -> str:
    lines = [f"# Evaluation at step {step}", "",
             "| task | kind | rows | metric | value |", "|---|---|---:|---|---:|"]
    for task in tasks:
        for metric, value in results[task.name].items():
            arrow = " (lower is better)" if metric in LOWER_IS_BETTER else ""
            lines.append(f"| {task.name} | {task.kind} | {len(task.rows)} | {metric}{arrow} | {value:.4f} |")
    return "\n".join(lines) + "\n"
