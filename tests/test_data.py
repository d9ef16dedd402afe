"""Data subsystem: corpora, vocabularies, batches (array / synthetic / seqio), packing."""
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from lm.configlib import ConfigError
from lm.data import corpus as corpus_lib
from lm.data import pipeline
from lm.data import vocab as vocab_lib
from lm.data.pipeline import DataConfig
from tests.batches import assert_batches_equal, assert_host_slices_join, take

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUTENBERG = ROOT.parent / "shared" / "data" / "gutenberg"
needs_gutenberg = pytest.mark.skipif(not GUTENBERG.is_dir(),
                                     reason=f"{GUTENBERG} (the source of the embedded corpora) "
                                            "is not present")


# ----------------------------------------------------------------------------- corpora

def test_shakespeare_has_42_plays_in_sorted_order():
    names = [d.name for d in corpus_lib.load_documents("shakespeare")]
    assert len(names) == 42
    assert names == sorted(names)
    assert all(n.endswith("_gut.txt") for n in names)


@needs_gutenberg
@pytest.mark.parametrize("corpus, pattern", [("shakespeare", "shakespeare/*_gut.txt"),
                                             ("milton", "milton/*_gut.txt"),
                                             ("britannica", "britannica-11th.txt")])
def test_embedded_corpora_equal_source_files_byte_for_byte(corpus, pattern):
    files = sorted(GUTENBERG.glob(pattern))
    documents = corpus_lib.load_documents(corpus)
    assert [d.name for d in documents] == [f.name for f in files]
    for document, file in zip(documents, files):
        assert document.text.encode("utf-8") == file.read_bytes(), file.name


def test_split_is_exactly_90_10_of_the_sorted_concatenation():
    documents = corpus_lib.load_documents("shakespeare")
    text = "".join(d.text for d in sorted(documents, key=lambda d: d.name))
    train = corpus_lib.split_text("shakespeare", "train")
    validation = corpus_lib.split_text("shakespeare", "validation")
    assert len(train) == int(len(text) * 0.9)
    assert train + validation == text


def test_split_documents_concatenate_to_split_text():
    for split in corpus_lib.SPLITS:
        pieces = corpus_lib.split_documents("milton", split, 0.7)
        assert "".join(d.text for d in pieces) == corpus_lib.split_text("milton", split, 0.7)


def test_text_folder_corpus_reads_sorted_txt_files(tmp_path):
    (tmp_path / "b.txt").write_text("second\r\n")
    (tmp_path / "a.txt").write_text("first ")
    (tmp_path / "notes.md").write_text("ignored")
    assert corpus_lib.corpus_text(str(tmp_path)) == "first second\r\n"


@pytest.mark.parametrize("name, content, fragment", [
    ("missing.txt", None, "neither an embedded corpus"),
    ("empty.txt", b"", "is empty"),
    ("latin1.txt", b"caf\xe9", "not valid UTF-8"),
])
def test_corpus_errors_name_the_file_and_the_fix(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(corpus_lib.CorpusError, match=fragment) as error:
        corpus_lib.load_documents(str(path))
    assert path.name in str(error.value)


def test_empty_folder_is_a_corpus_error(tmp_path):
    with pytest.raises(corpus_lib.CorpusError, match="no .txt or .jsonl files"):
        corpus_lib.load_documents(str(tmp_path))


# ----------------------------------------------------------------------------- vocabularies

def test_char_vocabulary_follows_the_seqio_id_convention():
    vocab = vocab_lib.CharVocabulary.from_text("hello world")
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.chars == " dehlorw"  # sorted set of characters
    assert vocab.encode(" dw") == [3, 4, 10]
    assert vocab.vocab_size == 3 + 8
    assert vocab.encode("hez") == [6, 5, 2]  # 'z' is unknown
    assert vocab.decode([0, 6, 1, 5, 2, 0]) == "he\N{REPLACEMENT CHARACTER}"


def test_char_vocabulary_round_trips_the_corpus_and_json():
    text = corpus_lib.corpus_text("britannica")  # has non-ASCII characters
    vocab = vocab_lib.make_vocabulary("char", "britannica")
    ids = vocab.encode_array(text)
    assert ids.dtype == np.int32 and ids.min() >= 3
    assert vocab.decode(ids) == text
    assert vocab.encode(text[:500]) == [vocab.chars.index(c) + 3 for c in text[:500]]
    again = vocab_lib.vocabulary_from_json(vocab.to_json())
    assert again.chars == vocab.chars
    assert again.encode("\u0915\U0001F600") == [2, 2]  # never seen, also past the table


def test_sentencepiece_model_loads_and_round_trips():
    vocab = vocab_lib.make_vocabulary("sentencepiece", "shakespeare")
    assert vocab.vocab_size == 1024
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    text = corpus_lib.split_text("shakespeare", "validation")[:20000] + "\u00e9 \U0001F600 1234\n"
    ids = vocab.encode_array(text)
    assert ids.tolist() == vocab.encode(text)
    assert len(ids) < len(text) / 2  # it compresses
    assert vocab.decode(ids) == text  # byte fallback: nothing is lost
    assert vocab.decode([1, 0] + ids[:5].tolist()) == vocab.decode(ids[:5])
    assert vocab_lib.vocabulary_from_json(vocab.to_json()).encode(text) == ids.tolist()


# ----------------------------------------------------------------------------- config

def test_data_config_from_config_and_errors():
    assert DataConfig.from_config({"seq_len": 32}).seq_len == 32
    with pytest.raises(ConfigError, match="config.data.seq_len"):
        DataConfig.from_config({"seq_lenn": 32})
    with pytest.raises(ConfigError, match="backend"):
        DataConfig(backend="tfds")
    with pytest.raises(ConfigError, match="batch_size"):
        DataConfig(batch_size=0)
    with pytest.raises(ConfigError, match="train_fraction"):
        DataConfig(train_fraction=1.0)
    with pytest.raises(ConfigError, match="multiple of 2"):
        pipeline.make_train_iterator(DataConfig(batch_size=3), 0, 0, 2)


# ----------------------------------------------------------------------------- batches

BACKEND_CONFIGS = [DataConfig(), DataConfig(backend="synthetic"), DataConfig(packing=True),
                   DataConfig(vocab="sentencepiece", seq_len=32, batch_size=4)]


@pytest.mark.parametrize("cfg", BACKEND_CONFIGS, ids=lambda c: f"{c.backend}-{c.vocab}-{c.packing}")
def test_batch_format(cfg):
    batches = take(pipeline.make_train_iterator(cfg, seed=0), 2)
    batches += pipeline.make_eval_batches(cfg)[:2]
    for batch in batches:
        assert set(batch) == set(pipeline.BATCH_KEYS)
        for key, array in batch.items():
            assert array.shape == (cfg.batch_size, cfg.seq_len), key
            assert array.dtype == (np.float32 if key == "weights" else np.int32), key
        assert batch["targets"].max() < pipeline.vocab_size(cfg)
        np.testing.assert_array_equal(batch["weights"], batch["segment_ids"] > 0)
    assert len(pipeline.make_eval_batches(cfg)) == cfg.eval_batches


def test_rows_are_nanogpt_windows_of_the_train_text():
    cfg = DataConfig()
    batch = next(pipeline.make_train_iterator(cfg, seed=5))
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    vocab, train = pipeline.vocabulary(cfg), corpus_lib.split_text("shakespeare", "train")
    for inputs, targets in zip(batch["inputs"], batch["targets"]):
        assert vocab.decode(inputs) + vocab.decode(targets[-1:]) in train
    np.testing.assert_array_equal(batch["positions"][0], np.arange(cfg.seq_len))


def test_batch_i_depends_only_on_seed_and_index():
    cfg = DataConfig()
    first = take(pipeline.make_train_iterator(cfg, seed=1), 4)
    second = take(pipeline.make_train_iterator(cfg, seed=1), 4)
    assert_batches_equal(first, second)
    other_seed = next(pipeline.make_train_iterator(cfg, seed=2))
    assert not np.array_equal(first[0]["inputs"], other_seed["inputs"])
    assert not np.array_equal(first[0]["inputs"], first[1]["inputs"])


@pytest.mark.parametrize("cfg", BACKEND_CONFIGS[:3], ids=lambda c: f"{c.backend}-{c.packing}")
def test_iterator_state_round_trip(cfg):
    iterator = pipeline.make_train_iterator(cfg, seed=3)
    take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 2)
    resumed = pipeline.make_train_iterator(cfg, seed=3)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 2), expected)
    with pytest.raises(ValueError, match="seed"):
        pipeline.make_train_iterator(cfg, seed=4).set_state(state)


@pytest.mark.parametrize("cfg", BACKEND_CONFIGS[:3], ids=lambda c: f"{c.backend}-{c.packing}")
def test_host_slices_concatenate_to_the_global_batch(cfg):
    assert_host_slices_join(cfg, train_batches=2)


def test_eval_batches_cover_the_validation_split():
    cfg = DataConfig(seq_len=16, batch_size=4, eval_batches=10)
    windows = pipeline.validation_windows(pipeline.split_tokens(cfg, "validation"), cfg.seq_len)
    batches = pipeline.make_eval_batches(cfg)
    np.testing.assert_array_equal(batches[0]["inputs"][0], windows[0, :-1])
    np.testing.assert_array_equal(batches[-1]["targets"][-1], windows[-1, 1:])
    assert_batches_equal(batches, pipeline.make_eval_batches(cfg))


def test_synthetic_tokens_stay_in_range():
    cfg = DataConfig(backend="synthetic", synthetic_vocab_size=11, batch_size=64)
    batch = next(pipeline.make_train_iterator(cfg, seed=0))
    assert batch["inputs"].min() >= 3 and batch["inputs"].max() < 11
    assert set(np.unique(batch["inputs"])) == set(range(3, 11))


def test_packed_rows_follow_lm_feature_converter_rules():
    cfg = DataConfig(packing=True, seq_len=8)
    examples = [np.array([3, 9, 1]), np.array([4, 1]), np.array([5, 6, 7, 8, 9, 1])]
    targets, positions = pipeline.pack_examples(examples, cfg.seq_len)
    batch = pipeline.packed_batch(targets, positions)
    np.testing.assert_array_equal(batch["targets"], [[3, 9, 1, 4, 1, 0, 0, 0],
                                                     [5, 6, 7, 8, 9, 1, 0, 0]])
    np.testing.assert_array_equal(batch["inputs"], [[0, 3, 9, 0, 4, 0, 0, 0],
                                                    [0, 5, 6, 7, 8, 9, 0, 0]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 2, 2, 0, 0, 0],
                                                         [1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 0, 1, 0, 0, 0],
                                                       [0, 1, 2, 3, 4, 5, 0, 0]])


def test_array_batch_takes_well_under_a_millisecond():
    iterator = pipeline.make_train_iterator(DataConfig(), seed=0)
    next(iterator)  # tokenizes the split
    start = time.perf_counter()
    take(iterator, 500)
    assert (time.perf_counter() - start) / 500 < 0.5e-3


def test_array_and_synthetic_backends_never_import_tensorflow():
    program = (
        "import sys\n"
        "from lm.data import pipeline\n"
        "for cfg in [pipeline.DataConfig(), pipeline.DataConfig(backend='synthetic'),\n"
        "            pipeline.DataConfig(packing=True, vocab='sentencepiece')]:\n"
        "    next(pipeline.make_train_iterator(cfg, 0)); pipeline.make_eval_batches(cfg)\n"
        "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", program], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------- seqio

@pytest.fixture(scope="module")
def tasks():
    pytest.importorskip("seqio")
    from lm.data import tasks as tasks_lib
    return tasks_lib


def test_seqio_tasks_register_and_produce_windows(tasks):
    import seqio

    names = tasks.register_tasks(seq_len=16)
    assert {"shakespeare_char_seq16", "shakespeare_sp1024_seq16", "milton_char_docs",
            "britannica_sp1024_docs"} <= set(names)
    task = seqio.get_mixture_or_task("shakespeare_char_seq16")
    example = next(task.get_dataset({"targets": 17}, split="train", shuffle=False,
                                    seed=0).as_numpy_iterator())
    assert example["targets"].shape == (17,) and example["targets"].dtype == np.int32
    vocabulary = task.output_features["targets"].vocabulary
    assert vocabulary.decode(example["targets"]) in corpus_lib.split_text("shakespeare", "train")


def test_seqio_char_vocabulary_matches_in_tensorflow(tasks):
    import tensorflow as tf

    from lm.data.seqio_vocab import as_seqio_vocabulary

    vocab = vocab_lib.make_vocabulary("char", "britannica")
    seqio_vocab = as_seqio_vocabulary(vocab)
    text = corpus_lib.corpus_text("britannica")[:3000] + "\U0001F600"
    ids = seqio_vocab.encode_tf(tf.constant(text)).numpy()
    assert ids.tolist() == vocab.encode(text) == seqio_vocab.encode(text)
    assert seqio_vocab.decode_tf(tf.constant(ids)).numpy().decode() == vocab.decode(ids)


@pytest.mark.parametrize("vocab", ["char", "sentencepiece"])
def test_seqio_backend_gives_the_array_batches(tasks, vocab):
    array_cfg = DataConfig(vocab=vocab, seq_len=32, batch_size=4, eval_batches=3)
    seqio_cfg = DataConfig(backend="seqio", vocab=vocab, seq_len=32, batch_size=4,
                           eval_batches=3)
    seqio_iterator = pipeline.make_train_iterator(seqio_cfg, seed=9, process_index=1,
                                                  process_count=2)
    expected = take(pipeline.make_train_iterator(array_cfg, 9, 1, 2), 3)
    assert_batches_equal(take(seqio_iterator, 3), expected)
    seqio_iterator.set_state({"batch_index": 1, "seed": 9})  # resume replays the stream
    assert_batches_equal(take(seqio_iterator, 2), expected[1:])
    assert_batches_equal(pipeline.make_eval_batches(seqio_cfg),
                          pipeline.make_eval_batches(array_cfg))


def test_seqio_packing_equals_numpy_packing(tasks, tmp_path):
    import seqio

    for i, words in enumerate(["to be or not to be\n", "that is\n", "the question " * 9]):
        (tmp_path / f"doc{i}.txt").write_text(words)
    array_cfg = DataConfig(corpus=str(tmp_path), packing=True, seq_len=16, batch_size=2,
                           train_fraction=0.8, eval_batches=2)
    seqio_cfg = DataConfig(backend="seqio", corpus=str(tmp_path), packing=True, seq_len=16,
                           batch_size=2, train_fraction=0.8, eval_batches=2)
    lengths = {"targets": 16}
    task = seqio.get_mixture_or_task(tasks.register_docs_task(seqio_cfg))
    converted = seqio.LMFeatureConverter(pack=True)(
        task.get_dataset(lengths, split="train", shuffle=False), lengths)
    rows = next(converted.batch(100).as_numpy_iterator())
    mine = pipeline.packed_batch(*pipeline.packed_rows(array_cfg, "train"))
    for key, theirs in [("inputs", "input_tokens"), ("targets", "target_tokens"),
                        ("weights", "loss_weights"), ("segment_ids", "segment_ids"),
                        ("positions", "positions")]:
        np.testing.assert_array_equal(mine[key], rows[f"decoder_{theirs}"], err_msg=key)
    assert_batches_equal(take(pipeline.make_train_iterator(seqio_cfg, 0), 3),
                          take(pipeline.make_train_iterator(array_cfg, 0), 3))
    assert_batches_equal(pipeline.make_eval_batches(seqio_cfg),
                          pipeline.make_eval_batches(array_cfg))
