"""The house rules that keep the code readable, checked: small files and functions, no
architecture switches where decoding and scoring live, models that know nothing of PEFT."""
import ast
import os
import re

import pytest

from tests.helpers import ROOT

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
SOURCE_DIRS = ("lm", "launch", "benchmarks", "experiments", "configs")


def _python_files(*dirs):
    for top in dirs:
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(folder, name), ROOT)


def _source(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_no_file_over_the_line_limit():
    long = {path: n for path in _python_files(*SOURCE_DIRS)
            if (n := _source(path).count("\n")) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_the_line_limit():
    long = {}
    for path in _python_files(*SOURCE_DIRS):
        for node in ast.walk(ast.parse(_source(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path}:{node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


ARCH_SWITCH = re.compile(r"\barch\s*(==|!=|\bin\b|\bnot in\b)|(==|!=)\s*\S*\barch\b|"
                         r"[\"'](decoder|prefix_decoder|encoder_decoder|lstm|encoder)[\"']\s*(==|!=|in\b)")


@pytest.mark.parametrize("package", ["lm/infer", "lm/eval"])
def test_decoding_and_scoring_hold_no_architecture_switch(package):
    switches = [f"{path}:{number}: {line.strip()}" for path in _python_files(package)
                for number, line in enumerate(_source(path).splitlines(), 1) if ARCH_SWITCH.search(line)]
    assert not switches, "\n".join(switches)


def test_models_do_not_import_peft():
    imports = [path for path in _python_files("lm/models")
               if re.search(r"^\s*(from|import) lm\.peft", _source(path), re.M)]
    assert not imports, imports


def test_one_place_reads_checkpoints():
    """Parameters are read by lm.train.run alone; the fit loop alone resumes a train state. The
    fault benchmark reads whole checkpoints back as raw arrays (no target) to compare them bit
    for bit, which is what it measures."""
    readers = {path for path in _python_files("lm", "launch", "benchmarks")
               if re.search(r"Checkpointer\(|CheckpointManager\(|PyTreeCheckpointer|\.manager\.restore",
                            _source(path))}
    assert readers == {"lm/train/checkpoint.py", "lm/train/fit.py", "lm/train/run.py",
                       "benchmarks/faults_lib.py"}, readers
