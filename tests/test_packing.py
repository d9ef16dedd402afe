"""Packing is exact: a packed batch's loss equals the token-weighted loss of its documents alone."""
import jax
import numpy as np
import pytest
from flax import nnx

from lm.data.pipeline import pack_examples, packed_batch
from lm.models import ModelConfig, build
from lm.train.step import loss_sums

LENGTH = 32


def _documents(seed=0, count=9, vocab=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, rng.integers(3, 20)).astype(np.int32) for _ in range(count)]


def _alone(document):
    """One document in its own row, padded at the end (causal attention ignores the padding)."""
    targets = np.zeros((1, LENGTH), np.int32)
    positions = np.zeros((1, LENGTH), np.int32)
    targets[0, :len(document)] = document
    positions[0, :len(document)] = np.arange(len(document))
    return packed_batch(targets, positions)


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi", "sinusoidal"])
def test_packed_loss_equals_documents_run_one_by_one(positions):
    cfg = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=4, max_len=LENGTH,
                      positions=positions, init_std=0.2)
    graphdef, state = nnx.split(build(cfg, seed=3))
    params = state.to_pure_dict()
    loss = jax.jit(lambda p, b, packed: loss_sums(graphdef, p, b, 0.0, packed)[1][0],
                   static_argnums=2)

    documents = _documents()
    targets, positions_bt = pack_examples(documents, LENGTH)
    batch = packed_batch(targets, positions_bt)
    assert targets.shape[0] < len(documents)  # several documents share a row
    packed_mean = float(loss(params, batch, True)) / batch["weights"].sum()

    per_document = [float(loss(params, _alone(d), False)) for d in documents]
    expected_mean = sum(per_document) / sum(len(d) for d in documents)
    np.testing.assert_allclose(packed_mean, expected_mean, rtol=1e-5)

    # Without the segment mask the documents would see each other: the check can fail.
    leaky_mean = float(loss(params, batch, False)) / batch["weights"].sum()
    assert abs(leaky_mean - expected_mean) > 1e-3
