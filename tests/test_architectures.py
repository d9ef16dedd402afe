"""Prefix decoder, encoder and encoder-decoder: masks equal explicit matrices, the models attend
exactly as the masks say, the encoder-decoder matches the float64 NumPy reference, packing keeps
examples apart, and sharded training equals one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import numpy_reference as ref
from lm.models import ModelConfig, build
from lm.models.forward import apply_batch
from lm.models.masks import masks_for
from lm.train.loop import Trainer
from tests.helpers import small_config
from tests.test_sharding import _loss_and_grads, _max_relative_error, _train
from tests.test_models import perturb, params_of

BASE = dict(vocab_size=37, num_layers=2, d_model=32, num_heads=4, max_len=16, init_std=0.2)
TOL = dict(rtol=1e-5, atol=1e-5)

# One row: segment 1 = tokens 0-3 (prefix 0-1), segment 2 = tokens 4-6 (prefix 4), padding 7.
SEGMENTS = np.array([[1, 1, 1, 1, 2, 2, 2, 0]], np.int32)
PREFIX = np.array([[1, 1, 0, 0, 1, 0, 0, 0]], np.int32)
CAUSAL = np.array([[1, 0, 0, 0, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0, 0, 0],
                   [1, 1, 1, 1, 0, 0, 0, 0],
                   [0, 0, 0, 0, 1, 0, 0, 0],
                   [0, 0, 0, 0, 1, 1, 0, 0],
                   [0, 0, 0, 0, 1, 1, 1, 0],
                   [0, 0, 0, 0, 0, 0, 0, 1]], bool)
PREFIX_DECODER = np.array([[1, 1, 0, 0, 0, 0, 0, 0],   # prefix tokens see the whole prefix
                           [1, 1, 0, 0, 0, 0, 0, 0],
                           [1, 1, 1, 0, 0, 0, 0, 0],
                           [1, 1, 1, 1, 0, 0, 0, 0],
                           [0, 0, 0, 0, 1, 0, 0, 0],
                           [0, 0, 0, 0, 1, 1, 0, 0],
                           [0, 0, 0, 0, 1, 1, 1, 0],
                           [0, 0, 0, 0, 0, 0, 0, 1]], bool)
ENCODER = np.array([[1, 1, 1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0, 0, 0],
                    [0, 0, 0, 0, 1, 1, 1, 0],
                    [0, 0, 0, 0, 1, 1, 1, 0],
                    [0, 0, 0, 0, 1, 1, 1, 0],
                    [0, 0, 0, 0, 0, 0, 0, 1]], bool)
# Encoder-decoder: encoder segments [1 1 1 2 2 0], decoder segments [1 1 2 2 2 0].
ENC_SEGMENTS = np.array([[1, 1, 1, 2, 2, 0]], np.int32)
DEC_SEGMENTS = np.array([[1, 1, 2, 2, 2, 0]], np.int32)
CROSS = np.array([[1, 1, 1, 0, 0, 0],
                  [1, 1, 1, 0, 0, 0],
                  [0, 0, 0, 1, 1, 0],
                  [0, 0, 0, 1, 1, 0],
                  [0, 0, 0, 1, 1, 0],
                  [0, 0, 0, 0, 0, 1]], bool)


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**BASE, **overrides})


def decoder_batch(tokens=None):
    tokens = np.arange(3, 11, dtype=np.int32)[None] if tokens is None else tokens
    positions = np.array([[0, 1, 2, 3, 0, 1, 2, 0]], np.int32)
    return {"inputs": tokens, "positions": positions, "segment_ids": SEGMENTS, "bidirectional": PREFIX}


def encdec_batch(enc_tokens=None, dec_tokens=None):
    enc = np.array([[3, 4, 5, 6, 7, 0]], np.int32) if enc_tokens is None else enc_tokens
    dec = np.array([[8, 9, 10, 11, 12, 0]], np.int32) if dec_tokens is None else dec_tokens
    return {"encoder_inputs": enc, "encoder_segment_ids": ENC_SEGMENTS,
            "encoder_positions": np.array([[0, 1, 2, 0, 1, 0]], np.int32),
            "inputs": dec, "segment_ids": DEC_SEGMENTS,
            "positions": np.array([[0, 1, 0, 1, 2, 0]], np.int32)}


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("arch,expected", [("decoder", CAUSAL), ("prefix_decoder", PREFIX_DECODER),
                                           ("encoder", ENCODER)])
def test_self_attention_masks_equal_explicit_matrices(arch, expected):
    masks = masks_for(arch, decoder_batch())
    assert list(masks) == ["self"]
    np.testing.assert_array_equal(np.asarray(masks["self"])[0, 0], expected)


def test_encoder_decoder_masks_equal_explicit_matrices():
    masks = {k: np.asarray(v)[0, 0] for k, v in masks_for("encoder_decoder", encdec_batch()).items()}
    np.testing.assert_array_equal(masks["cross"], CROSS)
    np.testing.assert_array_equal(masks["encoder"], ENC_SEGMENTS[0][:, None] == ENC_SEGMENTS[0][None])
    np.testing.assert_array_equal(masks["decoder"], np.tril(DEC_SEGMENTS[0][:, None] == DEC_SEGMENTS[0][None]))


def _dependence(logits_fn, tokens, vocab):
    """[T_out, T_in]: does output position i change when input token j changes?"""
    base = logits_fn(tokens)
    seen = np.zeros((base.shape[1], tokens.shape[1]), bool)
    for j in range(tokens.shape[1]):
        changed = tokens.copy()
        changed[0, j] = (changed[0, j] + 7) % vocab
        seen[:, j] = np.abs(logits_fn(changed) - base)[0].max(-1) > 1e-6
    return seen


@pytest.mark.parametrize("arch,expected", [("decoder", CAUSAL), ("prefix_decoder", PREFIX_DECODER),
                                           ("encoder", ENCODER)])
def test_one_layer_model_attends_exactly_as_its_mask_says(arch, expected):
    cfg = config(arch=arch, num_layers=1)
    model = build(cfg, seed=0)
    batch = decoder_batch()

    def logits(tokens):
        return np.asarray(apply_batch(model, {**batch, "inputs": jnp.asarray(tokens)}, packed=True))
    np.testing.assert_array_equal(_dependence(logits, batch["inputs"], cfg.vocab_size), expected)


def test_encoder_decoder_attends_exactly_as_its_masks_say():
    cfg = config(arch="encoder_decoder", num_layers=1, num_encoder_layers=1)
    model = build(cfg, seed=0)
    batch = encdec_batch()

    def via_encoder(tokens):
        return np.asarray(apply_batch(model, {**batch, "encoder_inputs": jnp.asarray(tokens)}))

    def via_decoder(tokens):
        return np.asarray(apply_batch(model, {**batch, "inputs": jnp.asarray(tokens)}))
    masks = {k: np.asarray(v)[0, 0] for k, v in masks_for("encoder_decoder", batch).items()}
    # One encoder layer mixes within encoder segments, so decoder i depends on encoder token j
    # exactly when j is in i's segment: the cross mask.
    np.testing.assert_array_equal(_dependence(via_encoder, batch["encoder_inputs"], 37), masks["cross"])
    np.testing.assert_array_equal(_dependence(via_decoder, batch["inputs"], 37), masks["decoder"])


# ----------------------------------------------------------------------------- references

ENCDEC_CASES = {
    "default": dict(),
    "llama_like_scanned": dict(positions="rope", norm="rmsnorm", mlp="swiglu", num_kv_heads=2,
                               tie_embeddings=False, scan_layers=True),
    "alibi_parallel": dict(positions="alibi", block="parallel"),
    "sinusoidal_3_encoder_layers_bias": dict(positions="sinusoidal", num_encoder_layers=3,
                                             use_bias=True, mlp="geglu"),
}


@pytest.mark.parametrize("overrides", list(ENCDEC_CASES.values()), ids=list(ENCDEC_CASES))
def test_encoder_decoder_matches_numpy_reference(overrides):
    cfg = config(arch="encoder_decoder", **overrides)
    model = perturb(build(cfg, seed=3))
    rng = np.random.RandomState(0)
    enc = rng.randint(0, 37, (2, 9)).astype(np.int32)
    dec = rng.randint(0, 37, (2, 7)).astype(np.int32)
    enc_seg = np.array([[1] * 9, [1] * 6 + [0] * 3], np.int32)   # row 2: padded encoder input
    dec_seg = np.array([[1] * 7, [1] * 5 + [0] * 2], np.int32)
    got = np.asarray(model(jnp.asarray(enc), jnp.asarray(dec), encoder_segment_ids_bs=jnp.asarray(enc_seg),
                           decoder_segment_ids_bt=jnp.asarray(dec_seg)))
    want = ref.encoder_decoder_forward(params_of(model), cfg, enc, dec, enc_seg, dec_seg)
    assert got.shape == (2, 7, 37)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi"])
def test_encoder_and_prefix_decoder_match_numpy_reference(positions):
    batch = decoder_batch(np.random.RandomState(1).randint(0, 37, (1, 8)).astype(np.int32))
    for arch, allowed in (("encoder", ENCODER), ("prefix_decoder", PREFIX_DECODER)):
        cfg = config(arch=arch, positions=positions)
        model = perturb(build(cfg, seed=4))
        got = np.asarray(apply_batch(model, {k: jnp.asarray(v) for k, v in batch.items()}, packed=True))
        want = ref.forward(params_of(model), cfg, batch["inputs"], batch["positions"], None, allowed[None])
        np.testing.assert_allclose(got, want, **TOL)


def test_packed_encoder_decoder_equals_examples_alone():
    cfg = config(arch="encoder_decoder")
    model = build(cfg, seed=5)
    packed = encdec_batch()
    logits = np.asarray(apply_batch(model, packed))
    first = {"encoder_inputs": packed["encoder_inputs"][:, :3], "encoder_segment_ids": np.ones((1, 3), np.int32),
             "encoder_positions": np.arange(3)[None], "inputs": packed["inputs"][:, :2],
             "segment_ids": np.ones((1, 2), np.int32), "positions": np.arange(2)[None]}
    second = {"encoder_inputs": packed["encoder_inputs"][:, 3:5], "encoder_segment_ids": np.ones((1, 2), np.int32),
              "encoder_positions": np.arange(2)[None], "inputs": packed["inputs"][:, 2:5],
              "segment_ids": np.ones((1, 3), np.int32), "positions": np.arange(3)[None]}
    np.testing.assert_allclose(logits[:, :2], np.asarray(apply_batch(model, first)), **TOL)
    np.testing.assert_allclose(logits[:, 2:5], np.asarray(apply_batch(model, second)), **TOL)


def test_encoder_decoder_parameter_layout():
    cfg = config(arch="encoder_decoder", num_encoder_layers=3)
    params = nnx.split(build(cfg))[1].to_pure_dict()
    assert sorted(params) == ["decoder_blocks", "embed", "encoder_blocks", "encoder_norm", "final_norm",
                              "position_embedding"]
    assert len(params["encoder_blocks"]) == 3 and len(params["decoder_blocks"]) == 2
    assert "cross_attention" in params["decoder_blocks"][0]


# ----------------------------------------------------------------------------- sharded


ARCH_OBJECTIVES = {"prefix_decoder": "prefix_lm", "encoder_decoder": "span_corruption", "encoder": "mlm"}
STEPS = 4


def _arch_config(arch, **mesh):
    config = small_config(steps=STEPS, arch=arch, num_heads=8, num_kv_heads=0, vocab_size=0)
    config.data.objective = ARCH_OBJECTIVES[arch]
    config.mesh.update(mesh)
    return config


def _loss_grads_and_training(config, devices):
    trainer = Trainer(config, "", devices)
    it = trainer.train_iterator()
    batches = [next(it) for _ in range(STEPS)]
    loss, grads = _loss_and_grads(trainer, batches[0])
    losses, params = _train(trainer, batches)
    return loss, grads, losses, params


MIXED = dict(data=2, fsdp=2, tensor=2)
FSDP = dict(data=1, fsdp=8)
SHARDED_CASES = [  # two in the default run, the rest with the slow tests
    pytest.param("encoder_decoder", MIXED, id="encoder_decoder-data=2,fsdp=2,tensor=2"),
    pytest.param("prefix_decoder", FSDP, id="prefix_decoder-fsdp=8"),
    pytest.param("encoder", MIXED, id="encoder-data=2,fsdp=2,tensor=2", marks=pytest.mark.slow),
    pytest.param("encoder_decoder", FSDP, id="encoder_decoder-fsdp=8", marks=pytest.mark.slow),
    pytest.param("prefix_decoder", MIXED, id="prefix_decoder-data=2,fsdp=2,tensor=2", marks=pytest.mark.slow),
    pytest.param("encoder", FSDP, id="encoder-fsdp=8", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,mesh", SHARDED_CASES)
def test_architecture_sharded_equals_one_device(arch, mesh):
    ref_loss, ref_grads, ref_losses, ref_params = _loss_grads_and_training(_arch_config(arch), jax.devices()[:1])
    loss, grads, losses, params = _loss_grads_and_training(_arch_config(arch, **mesh), jax.devices())
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert _max_relative_error(grads, ref_grads) <= 1e-5
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert _max_relative_error(params, ref_params) <= 1e-4


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("arch,objective", [("encoder", "causal_lm"), ("lstm", "span_corruption"),
                                            ("encoder_decoder", "mlm"), ("prefix_decoder", "causal_lm")])
def test_objective_that_does_not_fit_the_architecture_fails_before_training(arch, objective, tmp_path):
    from lm.configlib import ConfigError
    from lm.train.loop import pretrain
    config = small_config(arch=arch, vocab_size=0)
    config.data.objective = objective
    with pytest.raises(ConfigError, match=f"config.data.objective='{objective}' does not fit "
                                          f"config.model.arch='{arch}'"):
        pretrain(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_model_vocabulary_too_small_for_sentinels_is_refused():
    from lm.configlib import ConfigError
    config = small_config(arch="encoder_decoder")  # vocab_size 64 = the data's, no room for sentinels
    config.data.objective = "span_corruption"
    # Windows of 17: round(0.15 * 17) = 3 noise tokens in round(3 / 3) = 1 span: one sentinel.
    with pytest.raises(ConfigError, match="config.model.vocab_size=64 is smaller than the data's 65 ids"):
        Trainer(config, "", jax.devices()[:1])


def test_span_corruption_pair_by_hand():
    from lm.data.objectives import ObjectiveConfig, span_corruption_pair
    cfg = ObjectiveConfig(objective="span_corruption", seq_len=19, noise_density=0.25,
                          mean_noise_span_length=2.5, base_vocab_size=100)
    assert (cfg.window, cfg.noise_tokens, cfg.noise_spans, cfg.extra_ids) == (20, 5, 2, 2)
    window = np.arange(3, 23, dtype=np.int32)
    inputs, targets = span_corruption_pair(window, cfg, np.random.default_rng(0))
    assert len(inputs) == 20 - 5 + 2 and len(targets) == 5 + 2
    assert targets[0] == 100 and list(inputs).count(100) == 1 and list(inputs).count(101) == 1
    # Undo the corruption: each sentinel in the input takes back the tokens listed after it.
    spans = np.split(targets, np.flatnonzero(targets >= 100)[1:])
    restored = np.concatenate([spans[t - 100][1:] if t >= 100 else [t] for t in inputs])
    np.testing.assert_array_equal(restored, window)


def test_mlm_masks_the_configured_share_and_scores_only_it():
    from lm.data.objectives import ObjectiveConfig, mlm_row
    cfg = ObjectiveConfig(objective="mlm", seq_len=200, mlm_probability=0.15, base_vocab_size=90)
    tokens = np.random.default_rng(1).integers(3, 90, 200).astype(np.int32)
    corrupted, weights = mlm_row(tokens, cfg, np.random.default_rng(2))
    assert weights.sum() == 30
    np.testing.assert_array_equal(corrupted[weights == 0], tokens[weights == 0])
    masked = (corrupted == 90).sum()
    assert 18 <= masked <= 30 and masked == (corrupted[weights == 1] == 90).sum()


def test_learned_positions_must_cover_the_objectives_sequence():
    from lm.configlib import ConfigError
    config = small_config(arch="prefix_decoder", vocab_size=0)  # max_len 16 = seq_len
    config.data.objective = "span_corruption"
    # Input: 17 - 3 hidden + 1 sentinel = 15; target: 1 sentinel + 3 hidden = 4; read as 15 + 4 - 1.
    with pytest.raises(ConfigError, match="max_len=16 is shorter than the 18 positions objective "
                                          "'span_corruption' reads"):
        Trainer(config, "", jax.devices()[:1])
    config.model.max_len = 18
    Trainer(config, "", jax.devices()[:1])
