"""lm.fileio.write_atomically: whole files with the usual permissions."""
import os
import stat

import pytest

from lm import fileio


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_file_and_created_folder_get_the_usual_permissions(tmp_path, umask_022):
    path = tmp_path / "made" / "deeper" / "result.json"
    fileio.write_atomically(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert _mode(path) == 0o644
    assert _mode(tmp_path / "made") == 0o755
    assert _mode(tmp_path / "made" / "deeper") == 0o755


def test_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        fileio.write_atomically(tmp_path / "private" / "notes.txt", b"x")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "private" / "notes.txt") == 0o640
    assert _mode(tmp_path / "private") == 0o750


def test_umask_is_read_without_being_changed(umask_022):
    assert fileio.current_umask() == 0o022
    assert os.umask(0o022) == 0o022  # still what the fixture set


def test_umask_round_trip_when_proc_does_not_report_it(monkeypatch, umask_022):
    monkeypatch.setattr(fileio, "_umask_from_proc", lambda: None)
    assert fileio.current_umask() == 0o022
    assert os.umask(0o022) == 0o022


def test_overwrite_replaces_the_whole_file_and_leaves_no_temporary(tmp_path, umask_022):
    path = tmp_path / "a.txt"
    fileio.write_atomically(path, "old contents, longer than the new")
    fileio.write_atomically(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    fileio.write_atomically(path, "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fileio.write_atomically(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_append_text_adds_records_to_a_log_with_the_usual_permissions(tmp_path, umask_022):
    log = tmp_path / "new" / "metrics.jsonl"
    fileio.append_text(log, '{"step": 1}\n')
    fileio.append_text(log, '{"step": 2}\n')
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert _mode(log) == 0o644 and _mode(tmp_path / "new") == 0o755


def test_append_text_writes_the_rest_after_a_short_write(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(fileio.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    fileio.append_text(tmp_path / "log.txt", "a whole record\n")
    assert (tmp_path / "log.txt").read_text() == "a whole record\n"


def test_exported_folder_is_not_left_owner_only(tmp_path, umask_022):
    """lm.interop writes an export into a mkdtemp folder (0700) and renames it into place."""
    from lm.interop.files import write_folder_atomically, write_json

    write_folder_atomically(str(tmp_path / "hf"), lambda folder: write_json(os.path.join(folder, "config.json"), {}))
    assert _mode(tmp_path / "hf") == 0o755 and _mode(tmp_path / "hf" / "config.json") == 0o644
