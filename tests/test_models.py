"""The decoder against a float64 NumPy reference (tests/numpy_reference.py), option by option;
parameter counts of the presets; logical axis names on every parameter."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import numpy_reference as ref
from configs import models as presets
from lm.models import ModelConfig, build
from lm.parallel.axes import STANDARD_RULES, logical_to_spec
from lm.train.state import abstract_model, param_count

# Small shapes; init_std 0.2 (not 0.02) so that attention scores are O(1) and the attention
# pattern, the positions and the masks visibly change the logits.
BASE = dict(vocab_size=37, num_layers=2, d_model=32, num_heads=4, max_len=16, init_std=0.2)
B, T = 2, 12
TOL = dict(rtol=1e-5, atol=1e-5)


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**BASE, **overrides})


def tokens(seed: int = 0, batch: int = B, length: int = T) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, BASE["vocab_size"], (batch, length)).astype(np.int32)


def perturb(model, seed: int = 1):
    """Replaces the zero biases and unit norm scales by random values, so that they matter."""
    graphdef, state = nnx.split(model)
    rng = np.random.RandomState(seed)

    def randomize(path, x):
        name = path[-1].key
        if name == "bias":
            return jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype)
        if name == "scale":
            return jnp.asarray(1.0 + 0.3 * rng.standard_normal(x.shape), x.dtype)
        return x
    pure = jax.tree_util.tree_map_with_path(randomize, state.to_pure_dict())
    state.replace_by_pure_dict(pure)
    return nnx.merge(graphdef, state)


def params_of(model) -> dict:
    return jax.tree.map(np.asarray, nnx.split(model)[1].to_pure_dict())


def run(model, toks, **kwargs) -> np.ndarray:
    out = model(jnp.asarray(toks), **{k: None if v is None else jnp.asarray(v) for k, v in kwargs.items()})
    assert out.dtype == jnp.float32
    return np.asarray(out)


def assert_matches_reference(model, cfg, toks, positions=None, segment_ids=None):
    got = run(model, toks, positions_bt=positions, segment_ids_bt=segment_ids)
    want = ref.forward(params_of(model), cfg, toks, positions, segment_ids)
    assert got.shape == (toks.shape[0], toks.shape[1], cfg.vocab_size)
    np.testing.assert_allclose(got, want, **TOL)


# ----------------------------------------------------------------------------- the reference itself


def test_reference_sinusoidal_and_alibi_follow_the_papers():
    table = ref.sinusoidal_table(np.arange(5)[None], 8)[0]
    for p in range(5):
        for i in range(4):
            w = 1.0 / 10000 ** (2 * i / 8)
            assert table[p, 2 * i] == pytest.approx(np.sin(p * w))
            assert table[p, 2 * i + 1] == pytest.approx(np.cos(p * w))
    # Press et al.: 8 heads -> 1/2, 1/4, ..., 1/256.
    np.testing.assert_allclose(ref.alibi_slopes(8), 0.5 ** np.arange(1, 9))


def test_reference_rope_is_relative():
    """<rope(q, m), rope(k, n)> depends on m - n only, and the rotation keeps norms."""
    rng = np.random.RandomState(0)
    q, k = rng.standard_normal((2, 1, 1, 1, 8))
    def score(m, n):
        return float(np.sum(ref.rope(q, np.array([[m]]), 100.0) * ref.rope(k, np.array([[n]]), 100.0)))
    assert score(7, 3) == pytest.approx(score(4, 0)) == pytest.approx(score(13, 9))
    assert score(7, 3) != pytest.approx(score(3, 0))
    np.testing.assert_allclose(np.linalg.norm(ref.rope(q, np.array([[5]]), 100.0)), np.linalg.norm(q))


def test_reference_rejects_unused_parameters():
    cfg = config()
    params = params_of(build(cfg, 0))
    params["blocks"][0]["mlp"]["wi_up"] = {"kernel": np.zeros((32, 128))}
    with pytest.raises(AssertionError, match="wi_up"):
        ref.forward(params, cfg, tokens())


# ----------------------------------------------------------------------------- every option


CASES = {
    # positions
    "learned": dict(positions="learned"),
    "sinusoidal": dict(positions="sinusoidal"),
    "rope": dict(positions="rope"),
    "rope_theta": dict(positions="rope", rope_theta=50.0),
    "alibi": dict(positions="alibi"),
    "alibi_gqa_exact": dict(positions="alibi", num_kv_heads=2, attention="exact"),
    "none": dict(positions="none"),
    # norms (with LayerNorm bias on and off)
    "layernorm_bias": dict(norm="layernorm", use_bias=True),
    "rmsnorm": dict(norm="rmsnorm"),
    "rmsnorm_bias": dict(norm="rmsnorm", use_bias=True),
    "norm_eps": dict(norm="layernorm", norm_eps=0.5),
    # MLPs
    "gelu": dict(mlp="gelu", use_bias=True),
    "relu": dict(mlp="relu", use_bias=True),
    "swiglu": dict(mlp="swiglu", use_bias=True),
    "geglu": dict(mlp="geglu"),
    "d_ff": dict(mlp="swiglu", d_ff=48),
    # attention heads
    "mqa": dict(num_kv_heads=1, positions="rope"),
    "gqa": dict(num_kv_heads=2, positions="rope", use_bias=True),
    "gqa_exact": dict(num_kv_heads=2, positions="rope", attention="exact"),
    "head_dim": dict(head_dim=12, num_kv_heads=2, positions="rope"),
    "exact": dict(attention="exact", use_bias=True),
    # blocks and head
    "parallel": dict(block="parallel", use_bias=True),
    "untied": dict(tie_embeddings=False),
    "untied_bias": dict(tie_embeddings=False, use_bias=True, num_layers=3),
    "no_residual_scaling": dict(scale_residual_init=False),
    # scanned layers, alone and with everything else
    "scan": dict(scan_layers=True, use_bias=True),
    "palm_like": dict(positions="rope", norm="layernorm", mlp="swiglu", block="parallel",
                      num_kv_heads=1, scan_layers=True, num_layers=4),
    "gpt_like": dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True,
                     num_layers=4),
    "llama_like": dict(positions="rope", norm="rmsnorm", mlp="swiglu", num_kv_heads=2,
                       tie_embeddings=False, scan_layers=True, num_layers=3),
}


@pytest.mark.parametrize("overrides", list(CASES.values()), ids=list(CASES))
def test_matches_reference(overrides):
    cfg = config(**overrides)
    model = perturb(build(cfg, seed=3))
    assert_matches_reference(model, cfg, tokens())


@pytest.mark.parametrize("overrides", [dict(positions="learned"), dict(positions="sinusoidal"),
                                       dict(positions="rope"), dict(positions="alibi")],
                         ids=["learned", "sinusoidal", "rope", "alibi"])
def test_explicit_positions_match_reference(overrides):
    """Positions given explicitly (offset, not 0..T-1) are the ones used."""
    cfg = config(**overrides)
    model = perturb(build(cfg, seed=4))
    positions = np.broadcast_to(np.arange(T) + 3, (B, T)).astype(np.int32)
    assert_matches_reference(model, cfg, tokens(), positions)
    if cfg.positions != "alibi":  # ALiBi depends on position differences only
        assert not np.allclose(run(model, tokens(), positions_bt=positions), run(model, tokens()))


# ----------------------------------------------------------------------------- packed sequences


def packed_inputs():
    """Two rows of segments [5, 4, 3] and [7, 5]; positions restart at each segment."""
    segments = np.array([[1] * 5 + [2] * 4 + [3] * 3, [1] * 7 + [2] * 5], np.int32)
    positions = np.zeros_like(segments)
    for row in range(segments.shape[0]):
        for t in range(1, segments.shape[1]):
            same = segments[row, t] == segments[row, t - 1]
            positions[row, t] = positions[row, t - 1] + 1 if same else 0
    return tokens(5), positions, segments


@pytest.mark.parametrize("overrides", [
    dict(positions="learned"), dict(positions="rope", num_kv_heads=2),
    dict(positions="alibi"), dict(positions="alibi", attention="exact", num_kv_heads=1),
    dict(positions="rope", attention="exact", scan_layers=True)],
    ids=["learned", "rope_gqa", "alibi", "alibi_exact_mqa", "rope_exact_scan"])
def test_segment_ids_match_reference(overrides):
    cfg = config(**overrides)
    model = perturb(build(cfg, seed=5))
    toks, positions, segments = packed_inputs()
    assert_matches_reference(model, cfg, toks, positions, segments)


def test_reference_segments_do_not_leak():
    """In the reference, each packed segment alone gives the logits it gets inside the pack
    (so the model, equal to the reference above, keeps segments apart too)."""
    cfg = config(positions="rope", num_kv_heads=2, use_bias=True)
    params = params_of(perturb(build(cfg, seed=5)))
    toks, positions, segments = packed_inputs()
    packed = ref.forward(params, cfg, toks, positions, segments)
    unpacked = ref.forward(params, cfg, toks, positions)
    assert not np.allclose(packed, unpacked, atol=1e-3)
    for row in range(B):
        for seg in np.unique(segments[row]):
            idx = np.flatnonzero(segments[row] == seg)
            alone = ref.forward(params, cfg, toks[row:row + 1, idx])
            np.testing.assert_allclose(packed[row, idx], alone[0], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- equivalences


def test_dot_product_and_exact_attention_agree():
    toks, positions, segments = packed_inputs()
    for overrides in (dict(positions="rope", num_kv_heads=2), dict(positions="alibi", num_kv_heads=1)):
        outs = []
        for attention in ("dot_product", "exact"):
            cfg = config(attention=attention, **overrides)
            model = perturb(build(cfg, seed=6))
            outs.append((run(model, toks), run(model, toks, positions_bt=positions, segment_ids_bt=segments)))
        for a, b in zip(*outs):
            np.testing.assert_allclose(a, b, **TOL)


def test_scanned_and_unscanned_agree_on_the_same_parameters():
    """Stacking the list model's per-layer parameters into the scanned model gives its logits."""
    cfg = config(use_bias=True, positions="rope", num_kv_heads=2, num_layers=3)
    unscanned = perturb(build(cfg, seed=7))
    scanned = build(dataclasses.replace(cfg, scan_layers=True), seed=7)
    params = nnx.split(unscanned)[1].to_pure_dict()
    layers = [params["blocks"][i] for i in range(cfg.num_layers)]
    params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    graphdef, state = nnx.split(scanned)
    state.replace_by_pure_dict(params)
    scanned = nnx.merge(graphdef, state)
    np.testing.assert_allclose(run(scanned, tokens()), run(unscanned, tokens()), rtol=1e-6, atol=1e-6)


def _logits_loss_and_grads(model, toks, dropout_rng=None):
    """Logits without dropout, and the next-token loss and its gradients with ``dropout_rng``."""
    graphdef, state = nnx.split(model)
    toks = jnp.asarray(toks)
    targets = jnp.roll(toks, -1, axis=1)

    def loss_fn(state):
        model = nnx.merge(graphdef, state)
        logp = jax.nn.log_softmax(model(toks, dropout_rng=dropout_rng).astype(jnp.float32))
        loss = -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
        return loss, model(toks)
    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state)
    return np.asarray(logits), float(loss), jax.tree.map(np.asarray, grads.to_pure_dict())


@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["list", "scan"])
def test_remat_gives_identical_logits_and_gradients(scan):
    """Rematerialisation changes what is stored, not what is computed. With dropout on, the
    recomputed forward pass must draw the same masks."""
    toks = tokens()
    results = {}
    for remat in ("none", "minimal", "full"):
        cfg = config(remat=remat, scan_layers=scan, use_bias=True, positions="rope", dropout=0.1)
        results[remat] = _logits_loss_and_grads(perturb(build(cfg, seed=8)), toks, jax.random.key(0))
    base_logits, base_loss, base_grads = results["none"]
    for remat in ("minimal", "full"):
        logits, loss, grads = results[remat]
        np.testing.assert_allclose(logits, base_logits, rtol=1e-6, atol=1e-7)
        assert loss == pytest.approx(base_loss, rel=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     grads, base_grads)


def test_dropout():
    toks = tokens()
    model = perturb(build(config(dropout=0.3, use_bias=True), seed=9))
    without = perturb(build(config(dropout=0.0, use_bias=True), seed=9))
    # No rng: deterministic, and the same as a model without dropout (same seed, same parameters).
    np.testing.assert_array_equal(run(model, toks), run(model, toks))
    np.testing.assert_array_equal(run(model, toks), run(without, toks))
    # An rng: outputs change, reproducibly for one key, differently for another.
    key = jax.random.key(1)
    with_rng = run(model, toks, dropout_rng=key)
    assert not np.allclose(with_rng, run(model, toks), atol=1e-3)
    np.testing.assert_array_equal(with_rng, run(model, toks, dropout_rng=key))
    assert not np.allclose(with_rng, run(model, toks, dropout_rng=jax.random.key(2)), atol=1e-3)
    # Rate 0 with an rng is a no-op.
    np.testing.assert_array_equal(run(without, toks, dropout_rng=key), run(without, toks))


# ----------------------------------------------------------------------------- parameter counts


def _preset_count(name: str) -> int:
    cfg = ModelConfig(**presets.get(name).to_dict())
    return param_count(abstract_model(cfg)[1])


@pytest.mark.parametrize("name,expected,rel", [
    ("palm_8b", 8.63e9, 0.005), ("palm_62b", 62.50e9, 0.005), ("palm_540b", 540.35e9, 0.005),
    ("gpt3_125m", 125e6, 0.03), ("gpt3_350m", 350e6, 0.03), ("gpt3_1_3b", 1.3e9, 0.03)])
def test_preset_parameter_counts(name, expected, rel):
    assert _preset_count(name) == pytest.approx(expected, rel=rel)


def closed_form_count(cfg: ModelConfig) -> int:
    d, v, f, L = cfg.d_model, cfg.vocab_size, cfg.ff_dim, cfg.num_layers
    h, g, k = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    bias = int(cfg.use_bias)
    norm = d * (1 + int(cfg.use_bias and cfg.norm == "layernorm"))
    attn = d * h * k + 2 * d * g * k + h * k * d + bias * (h * k + 2 * g * k + d)
    mlp = (3 if cfg.gated_mlp else 2) * d * f + bias * ((2 if cfg.gated_mlp else 1) * f + d)
    block = attn + mlp + norm * (1 if cfg.block == "parallel" else 2)
    count = v * d + L * block + norm
    count += cfg.max_len * d if cfg.positions == "learned" else 0
    count += 0 if cfg.tie_embeddings else d * v + bias * v
    return count


@pytest.mark.parametrize("overrides", [
    dict(), dict(use_bias=True, tie_embeddings=False, scan_layers=True),
    dict(positions="rope", mlp="swiglu", block="parallel", num_kv_heads=1, head_dim=16, d_ff=40),
    dict(norm="rmsnorm", use_bias=True, mlp="geglu", num_kv_heads=2, num_layers=3)],
    ids=["default", "bias_untied_scan", "palm_like", "rms_geglu_gqa"])
def test_closed_form_parameter_count(overrides):
    cfg = config(**overrides)
    assert param_count(abstract_model(cfg)[1]) == closed_form_count(cfg)


def test_closed_form_parameter_count_by_hand():
    # d=32, V=37, 2 layers, 4 heads x 8, ff 128, learned positions (16), tied, no biases:
    # embed 37*32 + positions 16*32 + 2 * (attention 4*32*32 + mlp 2*32*128 + 2 norms 2*32) + final 32.
    assert closed_form_count(config()) == 37 * 32 + 16 * 32 + 2 * (4 * 32 * 32 + 2 * 32 * 128 + 64) + 32


# ----------------------------------------------------------------------------- logical axis names


@pytest.mark.parametrize("overrides", list(CASES.values()), ids=list(CASES))
def test_every_parameter_names_its_axes(overrides):
    cfg = config(**overrides)
    _, state = abstract_model(cfg)
    specs = dict(nnx.to_flat_state(nnx.get_partition_spec(state)))
    known = {name for name, _ in STANDARD_RULES}
    flat = list(nnx.to_flat_state(state))
    assert flat and len(flat) == len(specs)
    for path, variable in flat:
        assert isinstance(variable, nnx.Param), path
        shape = variable.get_value().shape
        names = variable.get_metadata().get("out_sharding")
        assert isinstance(names, tuple) and len(names) == len(shape), (path, names, shape)
        assert set(names) <= known, (path, names)
        spec = specs[path].get_value()
        assert len(spec) == len(shape), (path, spec, shape)
        logical_to_spec(names)  # every name has a rule
        is_block = path[0] == "blocks"
        if cfg.scan_layers and is_block:
            assert names[0] == "layers" and shape[0] == cfg.num_layers, (path, names)
        else:
            assert "layers" not in names, (path, names)
