"""Corpus cleaning: boilerplate, quality, exact/near de-duplication, privacy, robustness."""
import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import pytest

from lm.data.clean import CleanConfig, InputLimits, clean_files, list_inputs
from lm.data.clean import minhash, pipeline
from lm.data.clean.__main__ import main as cli_main
from lm.data.clean.boilerplate import strip_boilerplate
from lm.data.clean.privacy import reduce_personal_data
from lm.data.clean.quality import filter_quality
from lm.data.clean.shards import read_shards
from lm.data.clean.stats import StageStats
from tests.conftest import SHARED_DATA

GUTENBERG = pathlib.Path(SHARED_DATA) / "gutenberg"
needs_gutenberg = pytest.mark.skipif(not GUTENBERG.is_dir(),
                                     reason=f"{GUTENBERG} (shared data) is absent")
# Markers of Project Gutenberg licence/header text, none of which may survive cleaning.
LICENCE_MARKERS = ("Project Gutenberg", "gutenberg.org", "*** START OF", "*** END OF",
                   "SMALL PRINT")
PROSE = ("The committee met again on Tuesday to discuss the harvest, and after a long "
         "debate it agreed that the mill should be repaired before the winter. ")


def _prose(seed: int, sentences: int = 20) -> str:
    """Distinct, well-formed prose: quality filters keep it, de-duplication tells it apart."""
    rng = np.random.default_rng(seed)
    words = PROSE.split()
    return "\n".join(" ".join(rng.permutation(words)) + "." for _ in range(sentences)) + "\n"


# --- Gutenberg corpus --------------------------------------------------------------------

@pytest.fixture(scope="module")
def gutenberg_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean_gutenberg")
    assert cli_main([f"--input={GUTENBERG}", f"--output={out}", "--workers=2"]) == 0
    return out, json.loads((out / "report.json").read_text())


def _milton_copies_by_hash() -> set[frozenset[str]]:
    by_digest = {}
    for path in sorted((GUTENBERG / "milton").glob("*.txt")):
        by_digest.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(
            f"milton/{path.name}")
    return {frozenset(names) for names in by_digest.values() if len(names) > 1}


@needs_gutenberg
def test_milton_byte_identical_copies_are_exact_duplicates(gutenberg_run):
    _, report = gutenberg_run
    expected = _milton_copies_by_hash()
    assert len(expected) == 7
    found = {frozenset([c["kept"], *c["copies"]]) for c in report["duplicate_clusters"]}
    assert found == expected


@needs_gutenberg
def test_no_gutenberg_licence_text_left(gutenberg_run):
    out, report = gutenberg_run
    documents = read_shards(out)
    assert len(documents) == report["stages"]["exact_dedup_paragraphs"]["documents_out"] > 80
    for document in documents:
        for marker in LICENCE_MARKERS:
            assert marker.lower() not in document["text"].lower(), document["name"]
    assert not report["skipped"]


# First Folio file name -> modern-spelling file name where the titles are spelled differently.
FOLIO_TO_MODERN = {
    "all_is_well_that_ends_well_gut_f.txt": "alls_well_that_ends_well_gut.txt",
    "anthonie_and_cleopatra_gut_f.txt": "antony_and_cleopatra_gut.txt",
    "comedy_of_errours_gut_f.txt": "comedy_of_errors_gut.txt",
    "loves_labour_lost_gut_f.txt": "loves_labours_lost_gut.txt",
    "midsummer_nights_dreame_gut_f.txt": "midsummer_nights_dream_gut.txt",
    "titus_andronicus_gut_f.txt": "tragedy_of_titus_andronicus_gut.txt",
    "twelfe-night_gut_f.txt": "twelfth_night_gut.txt",
}


def _play_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(modern, First Folio) file names of the plays present in both editions."""
    pairs = []
    for folio in (n for n in names if n.endswith("_gut_f.txt")):
        modern = FOLIO_TO_MODERN.get(folio, folio.replace("_gut_f.txt", "_gut.txt"))
        if modern in names:
            pairs.append((modern, folio))
    return pairs


def _check_play_pair_decisions(report: dict, names: list[str], threshold: float,
                               prefix: str = "") -> list[float]:
    """The similarity of each play pair; asserts it is reported and decided by the threshold."""
    pairs = {frozenset([p["kept"], p["other"]]): p for p in report["near_duplicate_pairs"]}
    similarities = []
    play_pairs = _play_pairs(names)
    assert play_pairs
    for modern, folio in play_pairs:
        pair = pairs[frozenset([prefix + modern, prefix + folio])]
        assert pair["removed"] == (pair["similarity"] >= threshold), pair
        similarities.append(pair["similarity"])
    return similarities


@needs_gutenberg
def test_every_play_pair_reported_and_kept_at_default_threshold(gutenberg_run):
    _, report = gutenberg_run
    names = [p.name for p in (GUTENBERG / "shakespeare").glob("*.txt")]
    similarities = _check_play_pair_decisions(report, names, threshold=0.8,
                                              prefix="shakespeare/")
    assert len(similarities) == 35
    assert 0.05 < min(similarities) and max(similarities) < 0.5  # spelling differs a lot


@needs_gutenberg
def test_play_pair_decisions_follow_a_low_threshold(tmp_path):
    names = ["hamlet_gut.txt", "hamlet_gut_f.txt", "macbeth_gut.txt", "macbeth_gut_f.txt",
             "richard_iii_gut.txt", "richard_iii_gut_f.txt", "tempest_gut.txt",
             "tempest_gut_f.txt", "metadata.txt"]
    paths = [GUTENBERG / "shakespeare" / n for n in names]
    config = _config(near_dup_threshold=0.15)
    report = clean_files(paths, tmp_path, config, progress=False)
    similarities = _check_play_pair_decisions(report, names, threshold=0.15)
    # The subset straddles the threshold: some Folio editions go, some stay.
    assert min(similarities) < 0.15 <= max(similarities)


def _config(near_dup_threshold=0.8, **kwargs) -> CleanConfig:
    base = CleanConfig(workers=1)
    return dataclasses.replace(base, dedup=dataclasses.replace(
        base.dedup, near_dup_threshold=near_dup_threshold), **kwargs)


# --- Boilerplate -------------------------------------------------------------------------

MODERN_GUTENBERG = """The Project Gutenberg EBook of Hamlet, by William Shakespeare

This eBook is for the use of anyone anywhere at no cost.

*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

Produced by volunteers.

{body}
End of the Project Gutenberg EBook of Hamlet

*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

***** This file should be named 1524.txt *****
Updated editions will replace the previous one.
"""

OLD_GUTENBERG = """**The Project Gutenberg Etext of Paradise Lost**
Copyright laws are changing all over the world.

**Welcome To The World of Free Plain Vanilla Electronic Texts**
*****These Etexts Are Prepared By Thousands of Volunteers!*****

***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***
Why is this "Small Print!" statement here? You know: lawyers.
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

{body}
End of this Project Gutenberg Etext of Paradise Lost.
"""


@pytest.mark.parametrize("template", [MODERN_GUTENBERG, OLD_GUTENBERG])
def test_boilerplate_variants_are_stripped(template):
    body = _prose(0)
    stats = StageStats()
    cleaned = strip_boilerplate(template.format(body=body), stats)
    assert cleaned.strip() == body.strip()
    assert stats.documents_out == 1 and stats.examples


def test_text_without_markers_is_unchanged():
    body = _prose(1)
    assert strip_boilerplate(body, StageStats()) == body


# --- Quality -----------------------------------------------------------------------------

def _verse(seed: int, lines: int = 80) -> str:
    """Lines of eight words ending in commas or nothing, a full stop every eighth line."""
    rng = np.random.default_rng(seed)
    words = PROSE.replace(",", "").replace(".", "").split()
    endings = ["", ",", "", ";", ",", "", ",", "."]
    return "\n".join(" ".join(rng.choice(words, 8)) + endings[i % 8] for i in range(lines))


def test_quality_keeps_prose_and_verse_and_drops_junk():
    config = CleanConfig().quality
    verse = _verse(0)
    stats = StageStats()
    assert filter_quality(_prose(2), config, stats)[0] is not None
    kept_verse, signals = filter_quality(verse, config, stats)
    assert kept_verse is not None and signals["unterminated_line_fraction"] > 0.8
    junk = {"too_few_words": "hello world.",
            "symbol_to_word_ratio": " ".join(["#tag word."] * 100),
            "repeated_lines": "Buy now and save big today.\n" * 60,
            "ellipsis_lines": "\n".join(f"and the story went on and on for a long while, {i}..."
                                         for i in range(60)),
            "mean_word_length": " ".join(["a b c d e."] * 40)}
    for reason, text in junk.items():
        stats = StageStats()
        assert filter_quality(text, config, stats)[0] is None, reason
        assert reason in stats.counts, (reason, stats.counts)


# --- MinHash -----------------------------------------------------------------------------

@pytest.mark.parametrize("overlap", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_minhash_estimate_is_close_to_exact_jaccard(overlap):
    rng = np.random.default_rng(int(overlap * 10))
    vocabulary = [f"w{i}" for i in range(5000)]
    words = list(rng.choice(vocabulary, 3000))
    changed = [w if rng.random() < overlap else rng.choice(vocabulary) for w in words]
    text_a, text_b = " ".join(words), " ".join(changed)
    a, b = minhash.permutations(128, seed=0)
    hashes_a, hashes_b = (minhash.shingle_hashes(t, 5) for t in (text_a, text_b))
    exact = minhash.exact_jaccard(hashes_a, hashes_b)
    estimate = minhash.estimated_jaccard(minhash.signature(hashes_a, a, b),
                                         minhash.signature(hashes_b, a, b))
    assert abs(estimate - exact) < 0.1, (exact, estimate)


def test_near_duplicate_is_removed_and_reported(tmp_path):
    original = _prose(3, sentences=60)
    edited = original.replace("mill", "barn", 2)
    (tmp_path / "in").mkdir()
    for name, text in [("a.txt", original), ("b.txt", edited), ("c.txt", _prose(4, 60))]:
        (tmp_path / "in" / name).write_text(text)
    report = clean_files(list_inputs(str(tmp_path / "in")), tmp_path / "out", _config(),
                         progress=False)
    removed = [p for p in report["near_duplicate_pairs"] if p["removed"]]
    assert [(p["kept"], p["other"]) for p in removed] == [("a.txt", "b.txt")]
    assert removed[0]["similarity"] >= 0.8
    assert [d["name"] for d in read_shards(tmp_path / "out")] == ["a.txt", "c.txt"]


def test_exact_duplicates_ignore_case_and_whitespace(tmp_path):
    text = _prose(5)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(text)
    (tmp_path / "in" / "b.txt").write_text("  " + text.upper().replace(" ", " \t "))
    report = clean_files(list_inputs(str(tmp_path / "in")), tmp_path / "out", _config(),
                         progress=False)
    assert report["duplicate_clusters"] == [{"kept": "a.txt", "copies": ["b.txt"]}]


# --- Privacy -----------------------------------------------------------------------------

def test_each_kind_of_personal_data_is_replaced_and_counted():
    text = ("Write to jane.doe@example.com or j.smith@mail.example.org. "
            "Call +44 20 7946 0958 or (555) 123-4567. Server at 192.168.0.17 "
            "and 10.0.0.1; login via ftp://admin:hunter2@files.example.net/pub. "
            "Born 1564, died 1616; see p. 772.")
    stats = StageStats()
    out = reduce_personal_data(text, stats)
    assert stats.counts == {"<EMAIL>": 2, "<PHONE>": 2, "<IP>": 2, "<CREDENTIALS>": 1}
    for secret in ("jane.doe", "7946", "123-4567", "192.168", "hunter2", "admin"):
        assert secret not in out
    assert "ftp://<CREDENTIALS>@files.example.net/pub" in out
    assert "1564" in out and "772" in out


# --- Robustness --------------------------------------------------------------------------

def _adversarial_inputs(folder: pathlib.Path) -> list[pathlib.Path]:
    """Good documents first (so they are written before the bad ones are met), then junk."""
    folder.mkdir()
    files = {"a_good.txt": _prose(6).encode(), "b_good.txt": _prose(7).encode(),
             "c_empty.txt": b"", "d_nul.txt": b"text\x00with\x00nul" * 100,
             "e_nonprintable.txt": bytes(range(1, 32)) * 100,
             "f_invalid_utf8.txt": _prose(8).encode() + b"\xff\xfe broken",
             "g_one_line_50mb.txt": b"word " * (10 * 2**20),
             "h_vanishes.txt": b"here when listed"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    paths = list_inputs(str(folder))
    (folder / "h_vanishes.txt").unlink()  # gone between listing and reading
    return paths


@pytest.mark.parametrize("max_document_bytes", [20 * 2**20, 64 * 2**20])
def test_adversarial_inputs_are_reported_not_fatal(tmp_path, max_document_bytes):
    paths = _adversarial_inputs(tmp_path / "in")
    config = _config(documents_per_shard=1,
                     limits=InputLimits(max_document_bytes=max_document_bytes))
    report = clean_files(paths, tmp_path / "out", config, progress=False)
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert reasons["c_empty.txt"] == "empty"
    assert reasons["d_nul.txt"].startswith("binary: contains NUL")
    assert reasons["e_nonprintable.txt"].startswith("binary:")
    assert reasons["f_invalid_utf8.txt"].startswith("invalid UTF-8")
    assert reasons["h_vanishes.txt"].startswith("vanished")
    big = reasons["g_one_line_50mb.txt"]
    assert big.startswith("too large" if max_document_bytes < 50 * 2**20 else "line of")
    assert [d["name"] for d in read_shards(tmp_path / "out")] == ["a_good.txt", "b_good.txt"]
    assert "vanished" in (tmp_path / "out" / "report.md").read_text()


def test_output_written_before_a_failure_survives(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        (folder / f"doc{i}.txt").write_text(_prose(10 + i))
    consume = pipeline.CorpusCleaner.consume
    seen = []

    def failing_consume(self, result):
        seen.append(result.name)
        if len(seen) == 3:
            raise KeyboardInterrupt  # the run is stopped mid-way
        consume(self, result)

    monkeypatch.setattr(pipeline.CorpusCleaner, "consume", failing_consume)
    with pytest.raises(KeyboardInterrupt):
        clean_files(list_inputs(str(folder)), tmp_path / "out",
                    _config(documents_per_shard=1), progress=False)
    assert [d["name"] for d in read_shards(tmp_path / "out")] == ["doc0.txt", "doc1.txt"]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_cli_rejects_an_input_without_text_files(tmp_path, capsys):
    assert cli_main([f"--input={tmp_path}/nothing*", f"--output={tmp_path}/out"]) == 2
    assert "no .txt files" in capsys.readouterr().err
