"""A trained run used on the mesh gives what it gives on one device: the eval suite's report and
SFT's before/after exact match (with the same answers), with (data=2, fsdp=2, tensor=2)."""
import json
import os

import jax
import pytest

from experiments import sft_arithmetic, shakespeare_char
from tests.helpers import pretrained_smoke_run
from lm.eval.runner import evaluate_workdir
from lm.train.sft import sft

MESH = {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return pretrained_smoke_run(str(tmp_path_factory.mktemp("mesh") / "base"))


def _on(config, mesh: dict):
    for axis, size in mesh.items():
        config.mesh[axis] = size
    return config


def _eval_config(mesh: dict):
    config = shakespeare_char.get_config("smoke")
    config.mode, config.train.progress = "eval", False
    config.eval.tasks = "heldout_docs,next_line_choice,last_word,next_line"
    return _on(config, mesh)


def _report(workdir: str) -> tuple[dict, dict]:
    summary = json.load(open(os.path.join(workdir, "eval", "step20.json")))
    folder = os.path.join(workdir, "eval", "step20_samples")
    samples = {name: [json.loads(line) for line in open(os.path.join(folder, name))]
               for name in sorted(os.listdir(folder))}
    return summary, samples


def test_the_eval_suite_report_on_the_mesh_equals_one_device(base):
    one = evaluate_workdir(_eval_config({"data": 1}), base, devices=jax.devices()[:1])
    one_report = _report(base)
    mesh = evaluate_workdir(_eval_config(MESH), base, devices=jax.devices())
    summary, samples = _report(base)
    assert samples["next_line.jsonl"] == one_report[1]["next_line.jsonl"]  # generations: identical
    assert samples["last_word.jsonl"] == one_report[1]["last_word.jsonl"]
    assert sorted(mesh) == sorted(one)
    for key, value in one.items():
        assert mesh[key] == pytest.approx(value, rel=1e-5), key
    assert summary["tasks"].keys() == one_report[0]["tasks"].keys()


@pytest.mark.slow
def test_sft_exact_match_on_the_mesh_equals_one_device(base, tmp_path):
    results, answers = {}, {}
    for name, mesh, devices in (("one", {"data": 1}, jax.devices()[:1]), ("mesh", MESH, jax.devices())):
        config = _on(sft_arithmetic.get_config("smoke"), mesh)
        config.init_from, config.peft.method, config.train.progress = base, "lora", False
        workdir = str(tmp_path / name)
        results[name] = sft(config, workdir, devices=devices)
        answers[name] = open(os.path.join(workdir, "sft_answers.jsonl")).read()
    for key in ("sft/before/exact_match", "sft/after/exact_match", "sft/before/answer_accuracy",
                "sft/after/answer_accuracy"):
        assert results["mesh"][key] == results["one"][key], key
    assert answers["mesh"] == answers["one"]
