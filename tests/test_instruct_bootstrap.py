"""Self-Instruct with a model (lm/instruct/bootstrap.py): the generator's requests, the written
tasks, and a real (untrained) model through the whole loop."""
from __future__ import annotations

import json

from flax import nnx

from lm.data.pipeline import DataConfig, vocabulary
from lm.eval.scoring import ModelScorer
from lm.instruct.bootstrap import TASK_END, bootstrap, read_seed_tasks
from lm.instruct.instances import format_task_row
from lm.models import ModelConfig, build

VOCAB = vocabulary(DataConfig())
SEEDS = read_seed_tasks("tasks_example.jsonl")


class ScriptedScorer:
    vocab = VOCAB

    def __init__(self):
        self.requests = []

    def generate_until(self, requests):
        self.requests.extend(requests)
        return [f"Name a colour that rhymes with {i} red things.\nResponse: Bed red{TASK_END}junk"
                if i % 2 else "Say red\nResponse: Red" for i in range(len(requests))]


def test_bootstrap_writes_the_accepted_tasks(tmp_path):
    scorer, out = ScriptedScorer(), str(tmp_path / "new" / "tasks.jsonl")
    report = bootstrap(scorer, SEEDS, out, rounds=1, per_round=4, seed=0, max_new_tokens=64, temperature=0.7)
    assert len(scorer.requests) == 4
    prompt, arguments = scorer.requests[0]
    assert prompt.endswith("Instruction: ")
    assert arguments == {"until": [TASK_END], "max_gen_toks": 64, "temperature": 0.7, "do_sample": True}
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == report.accepted >= 1 and report.prompts == 4
    assert all(r["instruction"].startswith("Name a colour that rhymes") for r in rows)
    assert report.rejected == {"too_short": 2, "near_duplicate": 1}  # two-word instructions, a repeat
    assert [format_task_row(r).responses for r in rows] == [("Bed red",)]  # rows of the 'tasks:' format


def test_bootstrap_with_a_real_model(tmp_path):
    model = build(ModelConfig(vocab_size=VOCAB.vocab_size, num_layers=1, d_model=32, num_heads=2,
                              max_len=64), seed=0)
    graphdef, state = nnx.split(model)
    scorer = ModelScorer(graphdef, state.to_pure_dict(), model.cfg, VOCAB, 64, batch_size=4)
    report = bootstrap(scorer, SEEDS, str(tmp_path / "tasks.jsonl"), rounds=1, per_round=3, seed=1,
                       max_new_tokens=12, temperature=1.0)
    assert report.prompts == 3 and report.accepted + sum(report.rejected.values()) == 3
