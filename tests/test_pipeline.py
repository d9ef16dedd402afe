"""Pipeline parallelism (lm/parallel/pipeline.py): the schedule on plain arrays, the pipelined
decoder against the sequential one with the same weights (logits and gradients), sharded over
the pipeline mesh axis against one device, the bubble, and the config checks."""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.configlib import ConfigError
from lm.models import ModelConfig, build
from lm.parallel import MeshConfig, axis_rules, make_mesh
from lm.parallel.pipeline import bubble_fraction, num_iterations, pipeline_apply
from lm.parallel.rules import STANDARD
from lm.parallel.sharding import batch_sharding, param_shardings
from lm.train.experiment import Experiment
from lm.train.state import abstract_model, param_count
from tests.helpers import small_config
from tests.test_pipeline_init import as_list_of_layers

# 8 layers so that S=4 (GPipe) and S=2 x R=2 (circular) both divide them; init_std 0.2 so that
# attention patterns, and so the positions and segments riding with each microbatch, matter.
BASE = dict(vocab_size=37, num_layers=8, d_model=32, num_heads=4, num_kv_heads=2, max_len=16,
            init_std=0.2, positions="rope", use_bias=True, scan_layers=True)
B, T = 8, 12
RTOL = 1e-5


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**BASE, **overrides})


def pipelined(cfg: ModelConfig, stages: int, microbatches: int, repeats: int = 1) -> ModelConfig:
    return dataclasses.replace(cfg, pipeline_stages=stages, pipeline_microbatches=microbatches,
                               pipeline_repeats=repeats)


def packed_batch() -> dict:
    """Rows packed with 1 to 4 segments of different lengths; positions restart per segment."""
    rng = np.random.RandomState(0)
    segments = np.zeros((B, T), np.int32)
    for row in range(B):
        cuts = np.sort(rng.choice(np.arange(1, T), size=row % 4, replace=False))
        segments[row] = 1 + np.searchsorted(cuts, np.arange(T), side="right")
    positions = np.zeros_like(segments)
    for t in range(1, T):
        positions[:, t] = np.where(segments[:, t] == segments[:, t - 1], positions[:, t - 1] + 1, 0)
    tokens = rng.randint(0, BASE["vocab_size"], (B, T)).astype(np.int32)
    return dict(tokens=tokens, positions=positions, segment_ids=segments)


def random_params(cfg: ModelConfig, seed: int = 1) -> dict:
    """The seed's parameters with random biases and norm scales (they start at 0 and 1), so
    that those matter too."""
    params = nnx.split(build(cfg, seed))[1].to_pure_dict()
    rng = np.random.RandomState(seed)

    def randomize(path, x):
        noise = rng.standard_normal(x.shape).astype(np.float32)
        if path[-1].key == "scale":
            return jnp.asarray(1.0 + 0.3 * noise)
        return jnp.asarray(0.3 * noise if path[-1].key == "bias" else np.asarray(x))
    return jax.tree_util.tree_map_with_path(randomize, params)


def blocks_to_pipeline(params: dict, cfg: ModelConfig) -> dict:
    """Sequential layout [L, ...] -> [S, Lp, ...] or [R, S, Lp, ...]: a reshape, no reordering."""
    lead = (cfg.pipeline_stages, cfg.layers_per_stage)
    lead = (cfg.pipeline_repeats, *lead) if cfg.pipeline_repeats > 1 else lead
    blocks = jax.tree.map(lambda w: w.reshape(*lead, *w.shape[1:]), params["blocks"])
    return {**params, "blocks": blocks}


def blocks_to_sequential(params: dict, cfg: ModelConfig) -> dict:
    lead = 2 if cfg.pipeline_repeats == 1 else 3
    blocks = jax.tree.map(lambda w: w.reshape(-1, *w.shape[lead:]), params["blocks"])
    return {**params, "blocks": blocks}


def loss_fn(graphdef, params, batch, dropout_rng=None):
    """Next-token cross-entropy; the logits come back as the auxiliary output."""
    model = nnx.merge(graphdef, params)
    logits = model(batch["tokens"], batch["positions"], batch["segment_ids"], dropout_rng)
    targets = jnp.roll(batch["tokens"], -1, axis=1)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1)), logits


@functools.cache
def _jitted_grads(cfg: ModelConfig):
    """One compiled forward + gradient per config (compiling dominates these tests' time)."""
    graphdef = abstract_model(cfg)[0]
    return jax.jit(jax.grad(functools.partial(loss_fn, graphdef), has_aux=True))


def logits_and_grads(cfg: ModelConfig, params: dict, batch: dict, dropout_rng=None):
    grads, logits = _jitted_grads(cfg)(params, jax.tree.map(jnp.asarray, batch), dropout_rng)
    return np.asarray(logits), jax.tree.map(np.asarray, grads)


def assert_close(got, want, rtol: float = RTOL):
    """Per array: max |got - want| <= rtol * max |want|."""
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (jax.tree_util.keystr(path), a.shape, b.shape)
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
        assert err <= rtol, f"{jax.tree_util.keystr(path)}: relative error {err:.2e} > {rtol}"


# ----------------------------------------------------------------------------- the schedule alone


@pytest.mark.parametrize("stages,microbatches,repeats", [
    (1, 3, 1), (2, 2, 1), (4, 4, 1), (4, 8, 1), (3, 5, 1), (2, 2, 2), (2, 3, 3), (4, 4, 2),
    (4, 6, 2)])
def test_schedule_applies_every_layer_in_order_to_every_microbatch(stages, microbatches, repeats):
    """Layer l maps x -> 1.5 x + w_l + row value + 0.01 * microbatch: non-commuting affine maps,
    so any layer out of order, skipped or repeated, any row input travelling with the wrong
    microbatch, or a wrong microbatch index shows in the result."""
    layers_per_stage, batch = 2, 2 * microbatches
    num_layers = repeats * stages * layers_per_stage
    w_l = jnp.arange(num_layers, dtype=jnp.float32) ** 2 / 7.0
    x_bd = jnp.arange(batch * 3, dtype=jnp.float32).reshape(batch, 3) / 10.0
    rows = {"shift": jnp.arange(batch, dtype=jnp.float32)[:, None] * 0.1}

    def layer_fn(w, x, row, layer, microbatch):
        assert w.shape == ()
        return 1.5 * x + w + row["shift"] + 0.01 * microbatch + 0.0 * layer

    microbatch_of_row = (jnp.arange(batch) % microbatches)[:, None]  # rows i, i+M, ... form one
    want = x_bd
    for layer in range(num_layers):
        want = 1.5 * want + w_l[layer] + rows["shift"] + 0.01 * microbatch_of_row
    lead = (stages, layers_per_stage) if repeats == 1 else (repeats, stages, layers_per_stage)
    got = pipeline_apply(layer_fn, w_l.reshape(lead), x_bd, rows, stages=stages,
                         microbatches=microbatches, repeats=repeats)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_schedule_passes_logical_layer_indices():
    """layer_fn sees l = (r*S + s)*Lp + j: the index the sequential model folds into dropout."""
    stages, repeats, layers_per_stage, microbatches = 2, 2, 2, 3
    num_layers = stages * repeats * layers_per_stage

    def layer_fn(w, x, row, layer, microbatch):  # x: the layer indices seen so far, in base L
        return x * num_layers + layer + 1 + w

    got = pipeline_apply(layer_fn, jnp.zeros((repeats, stages, layers_per_stage), jnp.int32),
                         jnp.zeros((microbatches, 1), jnp.int32), stages=stages,
                         microbatches=microbatches, repeats=repeats)
    want = 0
    for layer in range(num_layers):
        want = want * num_layers + layer + 1
    np.testing.assert_array_equal(np.asarray(got), np.full((microbatches, 1), want))


@pytest.mark.parametrize("stages,microbatches,repeats", [
    (1, 4, 1), (2, 2, 1), (4, 4, 1), (4, 8, 1), (4, 16, 1), (2, 4, 2), (4, 4, 4), (8, 8, 2)])
def test_bubble_fraction_closed_form(stages, microbatches, repeats):
    assert num_iterations(stages, microbatches, repeats) == repeats * microbatches + stages - 1
    assert bubble_fraction(stages, microbatches, repeats) == pytest.approx(
        (stages - 1) / (repeats * microbatches + stages - 1))
    # Idle stage-iterations over all stage-iterations, counted from the schedule itself.
    iterations = num_iterations(stages, microbatches, repeats)
    idle = sum(not 0 <= t - s < repeats * microbatches
               for t in range(iterations) for s in range(stages))
    assert bubble_fraction(stages, microbatches, repeats) == pytest.approx(
        idle / (stages * iterations))


def test_bubble_fraction_values():
    assert bubble_fraction(1, 8) == 0.0
    assert bubble_fraction(4, 4) == pytest.approx(3 / 7)
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction(4, 4, 2) == pytest.approx(3 / 11)  # circular halves GPipe's 3/7 ...
    assert bubble_fraction(4, 8, 2) == pytest.approx(3 / 19)  # ... as doubling M would


def test_microbatches_must_divide_the_batch():
    with pytest.raises(ValueError, match="does not split into 3 pipeline microbatches"):
        pipeline_apply(lambda w, x, *_: x, jnp.zeros((2, 1)), jnp.zeros((8, 4)),
                       stages=2, microbatches=3)


# ----------------------------------------------------------------------------- configs


def test_config_rejects_layers_not_divisible_by_stages_times_repeats():
    with pytest.raises(ConfigError, match=r"num_layers=8 .*pipeline_stages \* pipeline_repeats"):
        config(pipeline_stages=3)
    with pytest.raises(ConfigError, match=r"num_layers=8 .*pipeline_stages \* pipeline_repeats"):
        config(pipeline_stages=4, pipeline_repeats=4)
    config(pipeline_stages=4, pipeline_repeats=2)  # 8 = 2 * 4 * 1


def test_config_rejects_fewer_microbatches_than_stages():
    with pytest.raises(ConfigError, match="pipeline_microbatches=3 .*a microbatch count below "
                                          "the stage count .*pipeline_stages=4"):
        config(pipeline_stages=4, pipeline_microbatches=3)
    with pytest.raises(ConfigError, match="a microbatch count below the stage count"):
        config(pipeline_stages=4, pipeline_microbatches=2, pipeline_repeats=2)
    assert config(pipeline_stages=4).microbatches == 4  # 0 means one per stage
    assert config(pipeline_stages=2, pipeline_microbatches=3, pipeline_repeats=2).microbatches == 3


def test_config_rejects_nonsense_pipeline_values():
    with pytest.raises(ConfigError, match="pipeline_stages=0 must be >= 1"):
        config(pipeline_stages=0)
    # The stage count comes from the mesh, so an unpipelined model is refused once resolved.
    with pytest.raises(ConfigError, match="pipeline_repeats=2 needs pipeline_stages > 1"):
        config(pipeline_repeats=2).check_pipeline()
    experiment = small_config(num_layers=4, pipeline_repeats=2)
    with pytest.raises(ConfigError, match="pipeline_repeats=2 needs pipeline_stages > 1"):
        Experiment.from_config(experiment)
    experiment.mesh.update(dict(pipeline=2, data=4))  # the mesh makes it pipelined: accepted
    assert Experiment.from_config(experiment).model.pipeline_stages == 2
    with pytest.raises(ConfigError, match="pipeline_microbatches=-1 must be >= 0"):
        config(pipeline_stages=2, pipeline_microbatches=-1)


# ----------------------------------------------------------------------------- the model's layout


@pytest.mark.parametrize("stages,repeats", [(4, 1), (2, 2)])
def test_pipelined_parameters_are_stacked_by_stage(stages, repeats):
    sequential = config()
    cfg = pipelined(dataclasses.replace(sequential, scan_layers=False), stages, stages, repeats)
    _, state = abstract_model(cfg)
    assert param_count(state) == param_count(abstract_model(sequential)[1])
    lead = (stages, 8 // stages) if repeats == 1 else (repeats, stages, 8 // (stages * repeats))
    names = ("stage", "layers") if repeats == 1 else ("circular_repeats", "stage", "layers")
    blocks = list(nnx.to_flat_state(state["blocks"]))
    assert blocks
    for path, variable in blocks:
        shape = variable.get_value().shape
        axes = variable.get_metadata()["out_sharding"]
        assert shape[:len(lead)] == lead and axes[:len(names)] == names, (path, shape, axes)
        assert len(axes) == len(shape), (path, shape, axes)


def test_pipelined_model_initialises_like_the_list_of_layers():
    """Same seed, same weights: block l of the plain model (a list of layers) is [r, s, j] of the
    pipelined one (every form: tests/test_pipeline_init.py)."""
    cfg = pipelined(config(), 2, 2, 2)
    plain = nnx.split(build(config(scan_layers=False), seed=5))[1].to_pure_dict()
    stacked = nnx.split(build(cfg, seed=5))[1].to_pure_dict()
    assert jax.tree.structure(as_list_of_layers(stacked, cfg)) == jax.tree.structure(plain)
    assert_close(as_list_of_layers(stacked, cfg), plain, rtol=0.0)


# ----------------------------------------------------------------------------- same weights


SCHEDULES = {
    "gpipe_s4_m4": (4, 4, 1), "gpipe_s4_m8": (4, 8, 1),
    "circular_s4_r2_m4": (4, 4, 2), "circular_s2_r2_m4": (2, 4, 2),
}


@pytest.fixture(scope="module")
def sequential_results():
    """The sequential (scan_layers) model's logits and gradients, per remat setting."""
    batch, params = packed_batch(), random_params(config())
    return {remat: logits_and_grads(config(remat=remat), params, batch)
            for remat in ("none", "full")}


@pytest.mark.parametrize("remat", ["none", "full"])
@pytest.mark.parametrize("schedule", list(SCHEDULES.values()), ids=list(SCHEDULES))
def test_pipeline_equals_sequential_model(schedule, remat, sequential_results):
    cfg = pipelined(config(remat=remat), *schedule)
    want_logits, want_grads = sequential_results[remat]
    params = blocks_to_pipeline(random_params(config()), cfg)
    logits, grads = logits_and_grads(cfg, params, packed_batch())
    assert_close(logits, want_logits)
    assert_close(blocks_to_sequential(grads, cfg), want_grads)


def test_pipeline_equals_sequential_model_llama_like_without_scan_layers():
    """RMSNorm, SwiGLU, GQA, untied head, no biases, and a parallel block; scan_layers off (the
    pipeline stacks the blocks regardless)."""
    arch = dict(norm="rmsnorm", mlp="swiglu", block="parallel", tie_embeddings=False,
                use_bias=False)
    sequential = config(**arch)
    cfg = pipelined(config(**arch, scan_layers=False), 4, 8)
    params = random_params(sequential)
    want_logits, want_grads = logits_and_grads(sequential, params, packed_batch())
    logits, grads = logits_and_grads(cfg, blocks_to_pipeline(params, cfg), packed_batch())
    assert_close(logits, want_logits)
    assert_close(blocks_to_sequential(grads, cfg), want_grads)


def test_batch_that_does_not_split_runs_the_layers_in_sequence():
    """Sampling one sequence from a pipelined model: 3 rows do not split into 4 microbatches,
    so the [R, S, Lp] stack runs as its 8 layers in order."""
    cfg, params = pipelined(config(), 2, 4, 2), random_params(config())
    sequential = nnx.merge(abstract_model(config())[0], params)
    pipeline = nnx.merge(abstract_model(cfg)[0], blocks_to_pipeline(params, cfg))
    tokens = jnp.asarray(packed_batch()["tokens"][:3])
    assert_close(np.asarray(jax.jit(pipeline)(tokens)), np.asarray(jax.jit(sequential)(tokens)))


def test_pipeline_dropout_is_deterministic_and_survives_remat():
    """Masks are drawn per (layer, microbatch) from the step's rng: the same key gives the same
    result, and the rematerialised forward pass redraws exactly the masks it recomputes."""
    batch, key = packed_batch(), jax.random.key(3)
    results = {}
    for remat in ("none", "full"):
        cfg = pipelined(config(dropout=0.2, remat=remat), 2, 2)
        params = blocks_to_pipeline(random_params(config()), cfg)
        results[remat] = logits_and_grads(cfg, params, batch, key)
    assert_close(results["full"], results["none"])
    logits = results["none"][0]
    assert not np.allclose(logits_and_grads(cfg, params, batch, jax.random.key(4))[0], logits,
                           atol=1e-3)


# ----------------------------------------------------------------------------- sharded


def sharded_logits_and_grads(cfg: ModelConfig, params: dict, batch: dict, mesh_cfg: MeshConfig):
    """Forward + gradient jitted over the 8 devices; returns them, the placed parameters and the
    compile time in seconds."""
    mesh = make_mesh(mesh_cfg)
    graphdef, state = abstract_model(cfg)
    shardings = param_shardings(state, mesh, STANDARD)
    rows = batch_sharding(mesh, STANDARD)

    def grads_and_logits(p, b):
        with axis_rules(mesh, STANDARD):
            return jax.grad(lambda p: loss_fn(graphdef, p, b), has_aux=True)(p)
    placed = jax.device_put(params, shardings)
    placed_batch = jax.device_put(jax.tree.map(jnp.asarray, batch), rows)
    start = time.perf_counter()
    compiled = jax.jit(grads_and_logits, in_shardings=(shardings, rows)).lower(
        placed, placed_batch).compile()
    compile_s = time.perf_counter() - start
    grads, logits = compiled(placed, placed_batch)
    return np.asarray(logits), jax.tree.map(np.asarray, grads), placed, compile_s


# The schedules are among SCHEDULES, so the one-device results come from the compile cache.
@pytest.mark.parametrize("mesh,schedule", [
    (dict(pipeline=4, data=2), SCHEDULES["gpipe_s4_m4"]),
    (dict(pipeline=2, fsdp=2, tensor=2), SCHEDULES["circular_s2_r2_m4"]),
    (dict(pipeline=2, data=4), SCHEDULES["gpipe_s4_m8"]),
], ids=["gpipe_pipeline4_data2", "circular_pipeline2_fsdp2_tensor2", "gpipe_s4_on_pipeline2"])
def test_sharded_pipeline_matches_one_device(mesh, schedule, capsys):
    cfg = pipelined(config(), *schedule)
    params, batch = blocks_to_pipeline(random_params(config()), cfg), packed_batch()
    want_logits, want_grads = logits_and_grads(cfg, params, batch)
    logits, grads, placed, compile_s = sharded_logits_and_grads(
        cfg, params, batch, MeshConfig(**mesh))
    with capsys.disabled():
        print(f"\n  {mesh} S,M,R={schedule}: forward+grad compiled in {compile_s:.1f} s")
    assert_close(logits, want_logits)
    assert_close(grads, want_grads)
    # Each shard holds S / pipeline of the stages (axis 1 under the circular 'circular_repeats').
    stage_axis = 0 if cfg.pipeline_repeats == 1 else 1
    stages_per_shard = cfg.pipeline_stages // mesh["pipeline"]
    for path, weight in jax.tree_util.tree_flatten_with_path(placed["blocks"])[0]:
        assert weight.sharding.spec[stage_axis] == "pipeline", jax.tree_util.keystr(path)
        shard = weight.addressable_shards[0].data
        assert shard.shape[stage_axis] == stages_per_shard, (jax.tree_util.keystr(path),
                                                             shard.shape)
