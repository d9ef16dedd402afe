"""Assertions on host batches shared by the data tests."""
import numpy as np

from lm.data import pipeline


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_host_slices_join(cfg, train_batches: int):
    """Two hosts' train and eval slices, concatenated, equal the one-host global batches."""
    whole = take(pipeline.make_train_iterator(cfg, seed=7), train_batches)
    hosts = [take(pipeline.make_train_iterator(cfg, 7, p, 2), train_batches) for p in range(2)]
    whole_eval = pipeline.make_eval_batches(cfg)
    hosts_eval = [pipeline.make_eval_batches(cfg, p, 2) for p in range(2)]
    for batches, halves in [(whole, hosts), (whole_eval, hosts_eval)]:
        joined = [{k: np.concatenate([h[i][k] for h in halves]) for k in batches[0]}
                  for i in range(len(batches))]
        assert_batches_equal(joined, batches)
