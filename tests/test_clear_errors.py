"""A user's mistake ends in one line on stderr naming the file or field and the fix, exit code 2,
no traceback, and nothing made or lost: a missing or broken experiment file, a workdir or output
that cannot be written (a file in the way, a read-only folder, a full disk), an evaluation whose
report could not be written, wrong lm-eval model_args; prompt characters the vocabulary lacks
are named in one warning line."""
import errno
import io
import json
import os
import pathlib
import re
import shutil

import jax
import pytest

from lm import fileio
from tests.helpers import run_module

SMOKE = "--config=experiments/shakespeare_char.py:smoke"
# absl's log lines ('I1129 12:34:04.768495 1401 run.py:115] ...'): progress, not messages.
ABSL_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ ")
as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")


def the_one_line(done, code: int = 2) -> str:
    """The only non-empty stderr line of a command that exited with ``code``."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    return lines[0]


def messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not ABSL_LOG.match(line)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A character-level run of 2 steps: a tiny model with one checkpoint."""
    from experiments import shakespeare_char
    from lm.train.loop import pretrain

    config = shakespeare_char.get_config("smoke")
    config.train.update(steps=2, eval_every=2, checkpoint_every=2, sample_tokens=0, progress=False,
                        async_checkpoint=False)
    config.model.update(num_layers=1, d_model=32, num_heads=2)
    config.data.update(batch_size=4, seq_len=32, eval_batches=1)
    config.mesh.data = 1
    workdir = str(tmp_path_factory.mktemp("clear_errors") / "run")
    pretrain(config, workdir, devices=jax.devices()[:1])
    return workdir


def copy_of(workdir: str, tmp_path) -> str:
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    return copy


# ----------------------------------------------------------------------------- experiment files

@pytest.mark.parametrize("source,spec,expected", [
    (None, "experiments/nope.py", "no file experiments/nope.py; experiments has "),
    (None, "experiments/shakespear_char.py", "did you mean experiments/shakespeare_char.py?"),
    ("def get_config(:\n    pass\n", "{file}", "line 1: invalid syntax; fix the file"),
    ("X = 1\n", "{file}", "defines no get_config(variant)"),
    (None, "experiments/shakespeare_char.py:bogus", "unknown variant 'bogus' of shakespeare_char"),
], ids=["missing", "misspelt", "syntax error", "no get_config", "unknown variant"])
def test_a_broken_config_file_is_one_line(tmp_path, source, spec, expected):
    file = tmp_path / "experiment.py"
    if source is not None:
        file.write_text(source)
    spec = spec.format(file=file)
    workdir = tmp_path / "run"
    line = the_one_line(run_module("launch.main", f"--config={spec}", f"--workdir={workdir}"))
    assert line.startswith(f"error: --config={spec}: ") and expected in line, line
    assert not workdir.exists()


# ----------------------------------------------------------------------------- unwritable places

def test_a_workdir_under_a_file_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("kept\n")
    line = the_one_line(run_module("launch.main", SMOKE, f"--workdir={blocker}/run"))
    assert line == (f"error: cannot write --workdir={blocker}/run: {blocker} is a file, not a "
                    "folder; point --workdir at a folder you can write to")
    assert blocker.read_text() == "kept\n"


@as_root
def test_a_workdir_in_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o555)
    line = the_one_line(run_module("launch.main", SMOKE, f"--workdir={folder}/run"))
    assert f"no permission to write in {folder}; point --workdir at" in line
    assert not os.listdir(folder)


def test_a_full_disk_is_one_line_naming_the_file(capsys):
    """/dev/full fails every write with ENOSPC, as a full disk does mid-run."""
    from launch.common import main_with_clear_errors

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(SystemExit) as stopped:
        main_with_clear_errors(lambda: fileio.append_text("/dev/full", '{"step": 1}\n'))
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("error: cannot write /dev/full: No space left on device; free "
                                       "space on that disk (or point --workdir at another one) and "
                                       "run again\n")


@pytest.mark.parametrize("error,expected", [
    (OSError(errno.EROFS, "Read-only file system", "/runs/a/metrics.jsonl"),
     "cannot write /runs/a/metrics.jsonl: Read-only file system; point --workdir at a folder you "
     "can write to"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"),
     "cannot write to disk: Disk quota exceeded; free space on that disk"),
], ids=["read-only", "quota without a file name"])
def test_write_failures_are_one_line(capsys, error, expected):
    from launch.common import main_with_clear_errors

    def fail():
        raise error
    with pytest.raises(SystemExit) as stopped:
        main_with_clear_errors(fail)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + expected) and err.count("\n") == 1, err


def test_other_os_errors_keep_their_traceback(tmp_path):
    """Reading a file that is not there, or making a folder twice, is no mistake in where to
    write: the error goes on as it was."""
    from launch.common import main_with_clear_errors

    with pytest.raises(FileNotFoundError):
        main_with_clear_errors(lambda: open(tmp_path / "missing.txt"))
    with pytest.raises(FileExistsError):
        main_with_clear_errors(lambda: os.mkdir(tmp_path))


def test_a_run_that_stopped_itself_is_one_line(capsys):
    from launch.common import main_with_clear_errors
    from lm.train.errors import RunStopped

    def stop():
        raise RunStopped("training diverged after 3 rollbacks;\ncheckpoint 200 is intact")
    with pytest.raises(SystemExit) as stopped:
        main_with_clear_errors(stop)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("error: training diverged after 3 rollbacks; checkpoint 200 "
                                       "is intact\n")


def test_a_failed_clean_up_does_not_hide_why_the_run_stopped(capsys):
    """Closing the logs on the disk that stopped the run fails too: the reason comes first."""
    from launch.common import main_with_clear_errors
    from lm.train.errors import RunStopped

    def stop_then_fail_to_close():
        try:
            raise RunStopped("the checkpoint at step 10 could not be written: disk full")
        finally:
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(SystemExit) as stopped:
        main_with_clear_errors(stop_then_fail_to_close)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: the checkpoint at step 10 could not be written: disk full\n"


# ----------------------------------------------------------------------------- eval and sample

def test_eval_refuses_a_report_it_cannot_write_before_computing(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    blocker = os.path.join(workdir, "eval")
    pathlib.Path(blocker).write_text("not a folder\n")
    before = sorted(os.listdir(workdir))
    line = the_one_line(run_module("launch.main", SMOKE, f"--workdir={workdir}", "--config.mode=eval"))
    assert line == (f"error: cannot write the evaluation report in {blocker}: {blocker} is a file, "
                    f"not a folder; move {blocker} out of the way")
    assert sorted(os.listdir(workdir)) == before  # nothing restored or scored


@as_root
def test_eval_of_a_read_only_run_is_refused_before_computing(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    os.chmod(workdir, 0o555)
    try:
        done = run_module("launch.main", SMOKE, f"--workdir={workdir}", "--config.mode=eval")
    finally:
        os.chmod(workdir, 0o755)
    assert f"cannot write the evaluation report in {workdir}: no permission to write" in the_one_line(done)


def test_scores_are_printed_when_the_report_cannot_be_written(trained, tmp_path, monkeypatch,
                                                               capsys):
    """A disk that fills up during the evaluation: the scores reach stdout before the error."""
    from experiments import shakespeare_char
    from lm.eval import runner

    workdir = copy_of(trained, tmp_path)
    config = shakespeare_char.get_config("smoke")
    config.mode, config.eval.tasks, config.mesh.data = "eval", "", 1

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(runner, "write_atomically", full_disk)
    with pytest.raises(OSError):
        runner.evaluate_workdir(config, workdir, devices=jax.devices()[:1])
    printed = re.search(r"^scores \(not written\): (.*)$", capsys.readouterr().out, re.M)
    scores = json.loads(printed.group(1))
    assert scores["step"] == 2 and scores["eval/loss"] > 0


def test_eval_of_a_missing_run_leaves_no_folder(tmp_path):
    workdir = tmp_path / "never"
    line = the_one_line(run_module("launch.main", SMOKE, f"--workdir={workdir}", "--config.mode=eval"))
    assert f"{workdir} is not a training workdir" in line
    assert not workdir.exists()


def test_prompt_characters_outside_the_vocabulary_are_named(trained):
    done = run_module("launch.main", SMOKE, f"--workdir={trained}", "--config.mode=sample",
                      "--config.sample.prompt=Café € ROMEO:", "--config.sample.max_new_tokens=4",
                      "--config.sample.temperature=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert messages(done.stderr) == ["warning: prompt characters not in the vocabulary, encoded as "
                                     "<unk>: 'é', '€'"]
    assert done.stdout.startswith("Café € ROMEO:")


def test_interactive_lines_are_checked_one_by_one(trained):
    from experiments import shakespeare_char
    from lm.infer.session import sample_workdir

    config = shakespeare_char.get_config("smoke")
    config.mode, config.mesh.data = "sample", 1
    config.sample.update(max_new_tokens=2, temperature=0.0)
    stdout, stderr = io.StringIO(), io.StringIO()
    result = sample_workdir(config, trained, interactive=True, stdin=io.StringIO("ROMEO\nnaïve ½\n"),
                            stdout=stdout, stderr=stderr, devices=jax.devices()[:1])
    assert result["samples"] == 2
    assert stderr.getvalue() == ("warning: prompt characters not in the vocabulary, encoded as <unk>: "
                                 "'ï', '½'\n")


def test_unknown_characters_of_each_vocabulary():
    from lm.data.vocab import CharVocabulary, SyntheticVocabulary, unknown_characters

    vocab = CharVocabulary("abc ")
    assert unknown_characters(vocab, "a cab") == []
    assert unknown_characters(vocab, "dab€d\t") == ["d", "€", "\t"]  # first appearance, once
    assert unknown_characters(SyntheticVocabulary(10), "3 4 5") == []  # ids, not text


# ----------------------------------------------------------------------------- cleaning CLI

@pytest.mark.parametrize("read_only", [False, pytest.param(True, marks=as_root)],
                         ids=["file in the way", "read-only folder"])
def test_the_cleaning_cli_refuses_an_output_it_cannot_write(tmp_path, capsys, read_only):
    from lm.data.clean.__main__ import main as clean_main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Some prose that a cleaner would keep.\n" * 20)
    parent = tmp_path / "out"
    if read_only:
        parent.mkdir(mode=0o555)
        reason = f"no permission to write in {parent}"
    else:
        parent.write_text("a file\n")
        reason = f"{parent} is a file, not a folder"
    output = parent / "shards"
    assert clean_main([f"--input={tmp_path / 'in'}", f"--output={output}"]) == 2
    assert capsys.readouterr().err == (f"error: cannot write --output={output}: {reason}; point "
                                       "--output at a folder you can write to\n")
    assert not output.exists()


# ----------------------------------------------------------------------------- lm-eval adapter

def test_wrong_model_args_on_the_lm_eval_command_line(trained):
    line = the_one_line(run_module("lm.eval.harness", "run", "--model", "lm", "--model_args",
                                   f"workdir={trained},stepz=1", "--tasks", "lm_tiny_mc"))
    assert line == ("error: unknown model_args ['stepz'] for --model lm ('stepz': did you mean "
                    "'step'?); expected workdir=RUN[,step=N][,batch_size=B][,seed=S]")


@pytest.mark.parametrize("model_args,expected", [
    (["batch_size=4"], "--model lm needs model_args workdir=RUN"),
    (["workdir=", "seed=1"], "--model lm needs model_args workdir=RUN"),
    (["{workdir},,step"], "--model_args piece 'step' is not key=value"),
    (["{workdir},batch_size=x"], "model_args batch_size='x' is not an integer >= 1"),
    (["workdir={missing}"], "model_args workdir={missing} (--model lm): {missing} is not a training "
                            "workdir (there is no such folder)"),
    (["workdir={empty}"], "{empty} is not a training workdir (it has no config.json)"),
], ids=["no workdir", "empty workdir", "malformed", "not an integer", "missing folder",
        "empty folder"])
def test_model_args_mistakes_are_one_line_before_lm_eval_starts(trained, tmp_path, capsys,
                                                                model_args, expected):
    from lm.eval import harness

    names = {"workdir": f"workdir={trained}", "missing": str(tmp_path / "missing"),
             "empty": str(tmp_path)}
    arguments = [value.format(**names) for value in model_args]
    with pytest.raises(SystemExit) as stopped:
        harness.main(["run", "--model", "lm", "--model_args", *arguments, "--tasks", "x"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected.format(**names) in err and err.count("\n") == 1, err
