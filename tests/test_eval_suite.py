"""The seqio evaluation suite (lm/eval/{tasks,seqio_suite,runner,report}.py): each kind of task
through seqio.Evaluator against hand-computed metrics, the real model's answers against
ModelScorer's string requests, and the task builders."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flax import nnx

from lm.configlib import ConfigError
from lm.data.vocab import CharVocabulary
from lm.eval import report
from lm.eval.humaneval import read_problems
from lm.eval.runner import run_tasks
from lm.eval.scoring import ModelScorer
from lm.eval.tasks import EvalConfig, EvalTask, build_tasks, file_task, next_line_choice, word_order_choice
from lm.models import ModelConfig, build

PROBLEMS = list(read_problems().values())[:3]
TEXT = "".join(p["prompt"] + p["canonical_solution"] + p["test"] for p in PROBLEMS)
VOCAB = CharVocabulary.from_text(TEXT + "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n.,;:!?'")


class ScriptedScorer:
    """A stand-in for ModelScorer that answers from tables, so that metrics are hand-computable."""

    def __init__(self, logliks=None, completions=None):
        self.vocab, self.batch_size, self.seed = VOCAB, 2, 0
        self.logliks = logliks or {}          # (context, target) text -> log-likelihood
        self.completions = completions or {}  # prompt text -> list of completions, used in turn
        self.rolled: list[list[int]] = []

    def loglikelihood_tokens(self, pairs):
        return [(self.logliks[(VOCAB.decode(c), VOCAB.decode(t))], False) for c, t in pairs]

    def loglikelihood_rolling_tokens(self, documents):
        self.rolled.extend(list(d) for d in documents)
        return [-0.5 * len(d) for d in documents]

    def generate_tokens(self, prompts, settings):
        return [VOCAB.encode(self.completions[VOCAB.decode(p)].pop(0)) for p in prompts]


def run_one(scorer, task):
    results, samples = run_tasks(scorer, [task], progress=False)
    return results[task.name], samples[task.name]


def test_choice_task_scores_every_choice_and_regroups_them():
    rows = ({"context": "Q1\n", "choices": ["aa", "b", "cccc"], "label": 2},
            {"context": "Q2\n", "choices": ["x", "yyyy"], "label": 0})
    logliks = {("Q1\n", "aa"): -2.0, ("Q1\n", "b"): -1.0, ("Q1\n", "cccc"): -3.0,
               ("Q2\n", "x"): -1.0, ("Q2\n", "yyyy"): -2.0}
    metrics, samples = run_one(ScriptedScorer(logliks), EvalTask("mc", "choice", rows))
    # acc: argmax picks 'b' (wrong) then 'x' (right); acc_norm per byte picks 'cccc' (-0.75) and
    # 'yyyy' (-0.5 > -1.0, wrong).
    assert metrics == {"acc": 50.0, "acc_norm": 50.0}
    assert [(s["row"], s["option"], s["loglikelihood"]) for s in samples] == [
        (0, 0, -2.0), (0, 1, -1.0), (0, 2, -3.0), (1, 0, -1.0), (1, 1, -2.0)]


def test_rolling_task_gives_document_perplexities():
    texts = ["to be or not", "that is the question\nwhether"]
    scorer = ScriptedScorer()
    metrics, _ = run_one(scorer, EvalTask("docs", "rolling", tuple({"text": t} for t in texts)))
    assert [VOCAB.decode(d) for d in scorer.rolled] == texts  # whole documents, nothing cut
    total = -0.5 * sum(len(t) for t in texts)  # one char is one token here
    words = sum(len(t.split()) for t in texts)
    assert metrics["word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-12)
    assert metrics["bits_per_byte"] == pytest.approx(0.5 / math.log(2), rel=1e-12)
    assert metrics["token_perplexity"] == pytest.approx(math.exp(0.5), rel=1e-12)


def test_generate_task_cuts_at_stop_strings_and_scores():
    rows = ({"context": "one ", "target": "two"}, {"context": "three ", "target": "four"},
            {"context": "five ", "target": "six"})
    completions = {"one ": ["two three"], "three ": ["four\nfive"], "five ": ["seven"]}
    task = EvalTask("gen", "generate", rows, metrics=("exact_match", "chrf"), stop=(" ", "\n"))
    metrics, samples = run_one(ScriptedScorer(completions=completions), task)
    assert [s["prediction"] for s in samples] == ["two", "four", "seven"]
    assert metrics["exact_match"] == pytest.approx(100 * 2 / 3)
    assert 0 < metrics["chrf"] < 100


def test_code_task_runs_completions_in_the_sandbox():
    rows = tuple({k: p[k] for k in ("task_id", "prompt", "test", "entry_point")} for p in PROBLEMS)
    wrong = "    return None\n"
    # Two samples per problem: problem 0 right twice, problem 1 right once, problem 2 never.
    completions = {PROBLEMS[0]["prompt"]: [PROBLEMS[0]["canonical_solution"]] * 2,
                   PROBLEMS[1]["prompt"]: [wrong, PROBLEMS[1]["canonical_solution"] + "\ndef junk():\n"],
                   PROBLEMS[2]["prompt"]: [wrong, wrong]}
    task = EvalTask("code", "code", rows, samples=2, temperature=0.8, pass_ks=(1, 2), max_new_tokens=200,
                    stop=("\ndef",))
    metrics, samples = run_one(ScriptedScorer(completions=completions), task)
    assert metrics["pass@1"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert metrics["pass@2"] == pytest.approx(100 * 2 / 3)
    assert "junk" not in samples[3]["prediction"]  # cut at the stop string before running


def test_seqio_path_equals_string_requests_on_a_real_model():
    """The suite tokenizes through seqio; ModelScorer's string requests tokenize in Python: the
    same model must get the same numbers both ways."""
    model = build(ModelConfig(vocab_size=VOCAB.vocab_size, num_layers=2, d_model=32, num_heads=2,
                              max_len=32, init_std=0.3), seed=3)
    graphdef, state = nnx.split(model)
    scorer = ModelScorer(graphdef, state.to_pure_dict(), model.cfg, VOCAB, 32, batch_size=4)
    rows = ({"context": "def f(x):\n", "choices": ["    return x", "    pass"], "label": 0},
            {"context": "", "choices": ["import math", "for i"], "label": 1})
    choice, _ = run_one(scorer, EvalTask("mc", "choice", rows))
    logliks = [[ll for ll, _ in scorer.loglikelihood([(r["context"], c) for c in r["choices"]])] for r in rows]
    expected = np.mean([int(np.argmax(ls)) == r["label"] for ls, r in zip(logliks, rows)]) * 100
    assert choice["acc"] == pytest.approx(expected)
    texts = [PROBLEMS[0]["prompt"], PROBLEMS[1]["prompt"][:50]]
    rolling, samples = run_one(scorer, EvalTask("docs", "rolling", tuple({"text": t} for t in texts)))
    direct = scorer.loglikelihood_rolling(texts)
    np.testing.assert_allclose([s["loglikelihood"] for s in samples], direct, rtol=1e-6)
    generated, samples = run_one(scorer, EvalTask("gen", "generate", ({"context": "def", "target": "x"},),
                                                  metrics=("exact_match",), max_new_tokens=8, stop=()))
    assert samples[0]["prediction"] == scorer.generate_until([("def", {"max_gen_toks": 8})])[0]


def test_next_line_choice_label_points_at_the_true_next_line():
    text = "\n".join(f"Line number {i} of the play, spoken." for i in range(40))
    task = next_line_choice(EvalConfig(), lambda: text, questions=10)
    assert len(task.rows) == 10
    for row in task.rows:
        last_context_line = row["context"].rstrip("\n").split("\n")[-1]
        number = int(last_context_line.split()[2])
        assert row["choices"][row["label"]] == f"Line number {number + 1} of the play, spoken."
        assert len(set(row["choices"])) == 4
    assert next_line_choice(EvalConfig(), lambda: text, questions=10) == task  # deterministic


def test_word_order_choice_shuffles_the_true_line():
    text = "\n".join(f"Now is the winter {i} of our discontent" for i in range(40))
    task = word_order_choice(EvalConfig(), lambda: text, questions=10)
    assert len(task.rows) == 10
    for row in task.rows:
        true_line = row["choices"][row["label"]]
        assert true_line.startswith("Now is the winter") and len(set(row["choices"])) == 4
        assert all(sorted(c.split()) == sorted(true_line.split()) for c in row["choices"])
    assert {row["label"] for row in task.rows} != {task.rows[0]["label"]}  # the label moves


def test_build_tasks_limits_rows_and_refuses_bad_names(tmp_path):
    text = "\n".join(f"Words on line {i} and more words here." for i in range(300))
    tasks = build_tasks(EvalConfig(tasks="heldout_docs, last_word", num_examples=5), lambda: text)
    assert [t.name for t in tasks] == ["heldout_docs", "last_word"]
    assert [len(t.rows) for t in tasks] == [5, 5]
    with pytest.raises(ConfigError, match="unknown task 'lastword'.*last_word"):
        build_tasks(EvalConfig(tasks="lastword"), lambda: text)
    with pytest.raises(ConfigError, match="pass_k"):
        EvalConfig(pass_k="1,x")
    # The same names are refused when the section is validated, before a checkpoint is read.
    with pytest.raises(ConfigError, match="unknown task 'lastword'.*last_word"):
        EvalConfig(tasks="lastword")
    with pytest.raises(ConfigError, match="existing file"):
        EvalConfig(tasks=f"choice:{tmp_path}/missing.jsonl")
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"context": "2+2=", "target": "4"}) + "\n\n" + json.dumps({"context": "x"}) + "\n")
    with pytest.raises(ConfigError, match="row 1: missing field.*target"):
        file_task(f"generate:{path}")
    with pytest.raises(ConfigError, match="no file"):
        file_task(f"choice:{tmp_path}/missing.jsonl")


def test_report_files(tmp_path):
    task = EvalTask("docs", "rolling", ({"text": "abc"},))
    report.write(str(tmp_path), 7, {"step": 7, "eval/loss": 1.5}, [task],
                 {"docs": {"bits_per_byte": 2.0}}, {"docs": [{"index": 0, "loglikelihood": -1.0}]})
    summary = json.loads((tmp_path / "step7.json").read_text())
    assert summary == {"step": 7, "validation": {"eval/loss": 1.5},
                       "tasks": {"docs": {"kind": "rolling", "rows": 1, "metrics": {"bits_per_byte": 2.0}}}}
    assert "| docs | rolling | 1 | bits_per_byte (lower is better) | 2.0000 |" in (tmp_path / "step7.md").read_text()
    assert json.loads((tmp_path / "step7_samples" / "docs.jsonl").read_text()) == {"index": 0, "loglikelihood": -1.0}
