"""Self-Instruct with a trained model: new instruction tasks bootstrapped from seed tasks.

    python -m lm.instruct.bootstrap --workdir=RUN --seed_tasks=tasks_example.jsonl \\
        --out=runs/generated_tasks.jsonl [--rounds=2 --per_round=16 --temperature=0.8]

The model (the latest checkpoint of ``--workdir``) continues prompts that show a few known tasks
in the training layout (``lm.instruct.synthetic.self_instruct``); accepted tasks (parsed, long
enough, not near-duplicates, representable) are written as JSON lines of instruction / input /
output, ready to train on as the dataset ``tasks:<out>``. A report of the rejections is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from lm.eval.trained import scorer_from_workdir
from lm.fileio import write_atomically

TASK_END = "\n\n"  # the separator between tasks in a self-instruct prompt


def scorer_generator(scorer, max_new_tokens: int = 128,
                     temperature: float = 0.8) -> Callable[[Sequence[str]], list[str]]:
    """``generate(prompts) -> texts`` for ``self_instruct``, by a ``ModelScorer``: sampled (or
    greedy at temperature 0) continuations that stop at the end of a task."""
    arguments = {"until": [TASK_END], "max_gen_toks": max_new_tokens, "temperature": temperature,
                 "do_sample": temperature > 0}
    return lambda prompts: scorer.generate_until([(prompt, arguments) for prompt in prompts])


def read_seed_tasks(path: str) -> list[dict]:
    from lm.instruct.datasets import resolve_path

    rows = []
    with open(resolve_path(path), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
    return rows


def bootstrap(scorer, seed_tasks: list[dict], out: str, rounds: int, per_round: int, seed: int,
              max_new_tokens: int, temperature: float):
    """Runs self-instruct with ``scorer`` and writes the accepted tasks to ``out`` (atomically)."""
    from lm.instruct.synthetic import self_instruct_with_report

    generate = scorer_generator(scorer, max_new_tokens, temperature)
    _, report = self_instruct_with_report(seed_tasks, generate, rounds, per_round, seed, vocab=scorer.vocab)
    write_atomically(out, "".join(json.dumps(task, ensure_ascii=False) + "\n" for task in report.tasks))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="trained run whose latest checkpoint writes the tasks")
    parser.add_argument("--seed_tasks", required=True, help="JSON lines of instruction / input / output")
    parser.add_argument("--out", required=True, help="where the accepted tasks go (JSON lines)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per_round", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        scorer = scorer_from_workdir(args.workdir, seed=args.seed)
        report = bootstrap(scorer, read_seed_tasks(args.seed_tasks), args.out, args.rounds, args.per_round,
                           args.seed, args.max_new_tokens, args.temperature)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rejected = ", ".join(f"{reason} {count}" for reason, count in sorted(report.rejected.items())) or "none"
    print(f"{report.accepted} of {report.prompts} generated tasks accepted ({rejected} rejected); "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
