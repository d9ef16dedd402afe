"""The prefetching loader keeps the checkpointed position exact."""
import numpy as np

from lm.data import pipeline
from lm.data.loader import Prefetcher


def _cfg():
    return pipeline.DataConfig(backend="synthetic", batch_size=4, seq_len=8)


def test_prefetched_batches_and_state_equal_the_plain_iterator():
    plain = pipeline.make_train_iterator(_cfg(), seed=1)
    ahead = Prefetcher(pipeline.make_train_iterator(_cfg(), seed=1), depth=3)
    for _ in range(5):
        np.testing.assert_array_equal(next(ahead)["inputs"], next(plain)["inputs"])
        assert ahead.get_state() == plain.get_state()  # consumed, not produced
    ahead.close()


def test_prefetcher_resumes_from_a_saved_state():
    first = Prefetcher(pipeline.make_train_iterator(_cfg(), seed=1), depth=2)
    for _ in range(3):
        next(first)
    state = first.get_state()
    expected = next(first)["inputs"]
    first.close()
    resumed = Prefetcher(pipeline.make_train_iterator(_cfg(), seed=1), depth=2)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["inputs"], expected)
    resumed.close()


def test_errors_in_the_producer_reach_the_consumer():
    class Failing:
        def __next__(self):
            raise OSError("corpus file vanished")

        def get_state(self):
            return {}
    ahead = Prefetcher(Failing())
    try:
        next(ahead)
        raise AssertionError("the error was swallowed")
    except OSError as e:
        assert "vanished" in str(e)
    ahead.close()


def test_cleaned_jsonl_shards_are_a_corpus(tmp_path):
    """The cleaning CLI's output (JSONL shards) trains like a folder of text files."""
    import json

    import pytest

    from lm.data import corpus
    shard = tmp_path / "shard-00000.jsonl"
    shard.write_text("\n".join(json.dumps({"name": n, "text": t}) for n, t in
                               [("a.txt", "First document. " * 20), ("b.txt", "Second one. " * 20)]))
    (tmp_path / "notes.txt").write_text("A plain text file too. " * 10)
    docs = corpus.load_documents(str(tmp_path))
    assert [d.name for d in docs] == ["notes.txt", "a.txt", "b.txt"]  # files in sorted order
    batch = next(pipeline.make_train_iterator(
        pipeline.DataConfig(corpus=str(tmp_path), batch_size=2, seq_len=16), seed=0))
    assert batch["inputs"].shape == (2, 16)

    (tmp_path / "shard-00001.jsonl").write_text('{"name": "c"}\n')
    corpus._load_documents_cached.cache_clear()
    with pytest.raises(corpus.CorpusError, match="shard-00001.jsonl' line 1 is not a JSON object"):
        corpus.load_documents(str(tmp_path))
