"""The pre-tokenized cache: same batches as the in-memory pipeline, atomic builds."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lm.data import cache, pipeline
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = pipeline.DataConfig(corpus="shakespeare", vocab="sentencepiece", seq_len=64)
    return cfg, cache.build_cache(cfg, str(tmp_path_factory.mktemp("c") / "sp"))


def test_tokens_and_packed_rows_equal_the_pipeline(built):
    cfg, path = built
    for split in cache.SPLITS:
        cached = cache.TokenCache(path, split)
        np.testing.assert_array_equal(cached.tokens, pipeline.split_tokens(cfg, split))
        targets, positions = pipeline.packed_rows(pipeline.DataConfig(
            corpus="shakespeare", vocab="sentencepiece", seq_len=64, packing=True), split)
        np.testing.assert_array_equal(cached.packed_targets, targets)
        np.testing.assert_array_equal(cached.packed_positions, positions)
        assert cached.tokens.dtype == np.uint16  # 1024-token vocabulary: half the bytes


def test_window_batches_equal_the_array_backend(built):
    cfg, path = built
    cfg = pipeline.DataConfig(corpus="shakespeare", vocab="sentencepiece", seq_len=64,
                              batch_size=12)
    expected = next(pipeline.make_train_iterator(cfg, seed=7))
    got = cache.TokenCache(path).window_batch(7, np.arange(12), 64)
    for key in pipeline.BATCH_KEYS:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_interrupted_build_keeps_the_old_cache(built, monkeypatch, tmp_path):
    cfg, _ = built
    path = cache.build_cache(cfg, str(tmp_path / "c"))
    before = cache.TokenCache(path).meta

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(cache, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.build_cache(cfg, path)
    assert cache.TokenCache(path).meta == before
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no half-written directory left behind


def test_reading_needs_no_tensorflow_or_tokenizer(built):
    _, path = built
    code = ("import sys, numpy as np; from lm.data.cache import TokenCache; "
            f"c = TokenCache({path!r}); b = c.packed_batch(np.arange(4)); "
            "assert b['inputs'].shape == (4, 64); "
            "assert 'tensorflow' not in sys.modules and 'sentencepiece' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_array_backend_reads_the_cache(built):
    cfg, path = built
    for packing in (False, True):
        plain = pipeline.DataConfig(corpus="shakespeare", vocab="sentencepiece", seq_len=64,
                                    packing=packing)
        from_cache = pipeline.DataConfig(corpus="shakespeare", vocab="sentencepiece", seq_len=64,
                                         packing=packing, cache_dir=path)
        expected = next(pipeline.make_train_iterator(plain, seed=3))
        got = next(pipeline.make_train_iterator(from_cache, seed=3))
        for key in pipeline.BATCH_KEYS:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        for a, b in zip(pipeline.make_eval_batches(from_cache), pipeline.make_eval_batches(plain)):
            np.testing.assert_array_equal(a["targets"], b["targets"])


def test_cache_of_another_config_is_refused(built):
    _, path = built
    other = pipeline.DataConfig(corpus="shakespeare", vocab="char", seq_len=64, cache_dir=path)
    with pytest.raises(pipeline.ConfigError, match="built for another data config.*vocab: cache "
                                                   "'sentencepiece', config 'char'"):
        next(pipeline.make_train_iterator(other, seed=0))
