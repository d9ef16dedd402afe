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


def _loss_of(positions: str, seed: int, arch: str = "decoder"):
    """(batch, packed) -> summed cross-entropy of a small model with random weights."""
    cfg = ModelConfig(arch=arch, vocab_size=40, num_layers=2, d_model=32, num_heads=4, max_len=LENGTH,
                      positions=positions, init_std=0.2)
    graphdef, state = nnx.split(build(cfg, seed=seed))
    params = state.to_pure_dict()
    jitted = jax.jit(lambda b, packed: loss_sums(graphdef, params, b, 0.0, packed)[1][0],
                     static_argnums=1)
    return lambda batch, packed: float(jitted(batch, packed))


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi", "sinusoidal"])
def test_packed_loss_equals_documents_run_one_by_one(positions):
    loss = _loss_of(positions, seed=3)

    documents = _documents()
    targets, positions_bt = pack_examples(documents, LENGTH)
    batch = packed_batch(targets, positions_bt)
    assert targets.shape[0] < len(documents)  # several documents share a row
    packed_mean = loss(batch, True) / batch["weights"].sum()

    per_document = [loss(_alone(d), False) for d in documents]
    expected_mean = sum(per_document) / sum(len(d) for d in documents)
    np.testing.assert_allclose(packed_mean, expected_mean, rtol=1e-5)

    # Without the segment mask the documents would see each other: the check can fail.
    leaky_mean = loss(batch, False) / batch["weights"].sum()
    assert abs(leaky_mean - expected_mean) > 1e-3


def _pairs(seed=1, count=7, vocab=40):
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, vocab, rng.integers(1, 10)).astype(np.int32),
             rng.integers(3, vocab, rng.integers(1, 10)).astype(np.int32)) for _ in range(count)]


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_packed_prefix_lm_loss_equals_examples_run_one_by_one(positions):
    from lm.data.features import pack_prefix_lm
    loss = _loss_of(positions, seed=5, arch="prefix_decoder")

    pairs = _pairs()
    batch = pack_prefix_lm(pairs, LENGTH)
    assert batch["targets"].shape[0] < len(pairs)
    assert batch["weights"].sum() == sum(len(t) for _, t in pairs)  # targets only are scored
    packed_mean = loss(batch, True) / batch["weights"].sum()

    alone = [loss(pack_prefix_lm([pair], LENGTH), False) for pair in pairs]
    expected_mean = sum(alone) / sum(len(t) for _, t in pairs)
    np.testing.assert_allclose(packed_mean, expected_mean, rtol=1e-5)

    causal = dict(batch)
    del causal["bidirectional"]  # the same rows read as a causal LM: the prefix mask matters
    assert abs(loss(causal, True) / batch["weights"].sum() - expected_mean) > 1e-3


def test_prefix_lm_target_tokens_never_see_later_targets():
    from lm.data.features import pack_prefix_lm
    cfg = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=4, max_len=LENGTH,
                      init_std=0.2)
    model = build(cfg, seed=0)
    inputs, targets = np.array([5, 6, 7], np.int32), np.array([8, 9, 10, 11], np.int32)
    batch = pack_prefix_lm([(inputs, targets)], LENGTH)
    changed_targets = targets.copy()
    changed_targets[1] = 30  # token len(inputs)+1 of the sequence, read as input at the next position
    other = pack_prefix_lm([(inputs, changed_targets)], LENGTH)
    run = lambda b: np.asarray(model(b["inputs"], b["positions"], b["segment_ids"], None,  # noqa: E731
                                     b["bidirectional"]))
    a, b = run(batch), run(other)
    reader = len(inputs) + 2  # first position whose input is the changed token
    np.testing.assert_array_equal(a[0, :reader], b[0, :reader])  # earlier positions: blind to it
    assert np.abs(a[0, reader] - b[0, reader]).max() > 1e-4      # the reader: sees it
    changed_inputs = inputs.copy()
    changed_inputs[-1] = 30  # an input token: every position sees the whole prefix
    c = run(pack_prefix_lm([(changed_inputs, targets)], LENGTH))
    assert np.abs(c[0, 0] - a[0, 0]).max() > 1e-4


def test_packed_encoder_decoder_loss_equals_examples_run_one_by_one():
    from lm.data.features import pack_encoder_decoder
    cfg = ModelConfig(arch="encoder_decoder", vocab_size=40, num_layers=2, d_model=32, num_heads=4,
                      max_len=LENGTH, positions="rope", init_std=0.2)
    graphdef, state = nnx.split(build(cfg, seed=7))
    params = state.to_pure_dict()
    loss = jax.jit(lambda b: loss_sums(graphdef, params, b, 0.0)[1][0])

    pairs = _pairs()
    batch = pack_encoder_decoder(pairs, LENGTH, LENGTH)
    assert batch["targets"].shape[0] < len(pairs)
    assert batch["weights"].sum() == sum(len(t) for _, t in pairs)
    np.testing.assert_array_equal(batch["inputs"][batch["positions"] == 0], 0)  # each target starts behind 0
    alone = [float(loss(pack_encoder_decoder([pair], LENGTH, LENGTH))) for pair in pairs]
    np.testing.assert_allclose(float(loss(batch)), sum(alone), rtol=1e-5)
