"""Tokenizer CLI: PaLM-style SentencePiece options, exact round trip, tokens per byte."""
import os
import pathlib
import subprocess
import sys

import pytest

from lm.data import corpus as corpus_lib
from lm.data import tokenizer
from lm.data import vocab as vocab_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECIALS = ("<sep>", "<cls>")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """Three .txt files of Shakespeare with numbers mixed in (about 120 KB)."""
    folder = tmp_path_factory.mktemp("corpus")
    text = corpus_lib.split_text("shakespeare", "validation")[:120_000]
    for i in range(3):
        piece = text[i * 40_000:(i + 1) * 40_000]
        (folder / f"part{i}.txt").write_text(f"Act {i + 1}, scene 1990{i}.\n{piece}")
    return folder


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    """Runs the CLI once; returns (model path, stdout)."""
    output = tmp_path_factory.mktemp("model") / "small"
    command = [sys.executable, "-m", "lm.data.tokenizer", f"--input={small_corpus}",
               "--vocab_size=512", "--model_type=bpe", f"--output={output}",
               f"--user_defined_symbols={','.join(SPECIALS)}",
               f"--compare={vocab_lib.DEFAULT_SENTENCEPIECE_MODEL}"]
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return pathlib.Path(f"{output}.model"), result.stdout


def test_cli_writes_a_model_with_seqio_ids(trained):
    path, _ = trained
    vocab = vocab_lib.SentencePieceVocabulary(path)  # checks pad/eos/unk = 0/1/2
    assert vocab.vocab_size == 512


def test_round_trip_is_exact(trained):
    vocab = vocab_lib.SentencePieceVocabulary(trained[0])
    text = "  Two  spaces,\ttab\r\nthen 3.14159 and \u00e9\u00e8 \U0001F600 \u4e2d\n\n end "
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab_lib.UNK_ID not in vocab.encode(text)  # byte fallback, never UNK


def test_digits_are_split(trained):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(trained[0]))
    pieces = processor.encode("in 19900 and 2024", out_type=str)
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digit_pieces == list("199002024")


def test_special_tokens_are_single_pieces(trained):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(trained[0]))
    for special in SPECIALS:
        special_id = processor.piece_to_id(special)
        assert special_id != vocab_lib.UNK_ID
        assert special_id in processor.encode(f"left{special}right")
    assert processor.piece_to_id("\n") != vocab_lib.UNK_ID


def test_tokens_per_byte_are_reported(trained):
    path, stdout = trained
    rows = {line.split("\t")[0]: line.split("\t") for line in stdout.splitlines()
            if "\t" in line and not line.startswith("tokenizer")}
    assert set(rows) == {"char", str(path), str(vocab_lib.DEFAULT_SENTENCEPIECE_MODEL)}
    assert float(rows["char"][2]) == pytest.approx(1.0, abs=0.01)  # near-ASCII text
    assert 0.2 < float(rows[str(path)][2]) < 0.8  # it compresses


def test_glob_input_validation_is_the_last_tenth(small_corpus):
    pattern = str(small_corpus / "part*.txt")
    text = "".join(p.read_text() for p in sorted(small_corpus.glob("part*.txt")))
    assert tokenizer.input_text(pattern) == text
    assert tokenizer.split_input(pattern, "validation") == text[int(len(text) * 0.9):]
    assert tokenizer.split_input(str(small_corpus), "train") == text[:int(len(text) * 0.9)]


def test_compression_report_matches_tokens_per_byte(small_corpus):
    rows = tokenizer.compression_report(str(small_corpus),
                                        [str(vocab_lib.DEFAULT_SENTENCEPIECE_MODEL)])
    validation = tokenizer.split_input(str(small_corpus), "validation")
    vocab = vocab_lib.SentencePieceVocabulary(vocab_lib.DEFAULT_SENTENCEPIECE_MODEL)
    assert rows[1][2] == len(vocab.encode(validation)) / len(validation.encode("utf-8"))


def test_training_reproduces_the_shipped_model(tmp_path):
    text = tokenizer.split_input("shakespeare", "train")
    options = tokenizer.TokenizerOptions(vocab_size=1024, model_type="bpe")
    path = tokenizer.train(text, options, str(tmp_path / "sp"))
    assert path.read_bytes() == vocab_lib.DEFAULT_SENTENCEPIECE_MODEL.read_bytes()
