"""Using a trained model stays on the mesh: decoding, scoring, the cache and the restored
parameters with (data=2, fsdp=2, tensor=2) and (data=2, tensor=4, one KV head) on 8 fake
devices, against one device."""
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lm.infer.decode import DecodeSettings, generate
from lm.parallel.axes import axis_rules
from lm.train.run import Run
from tests.helpers import small_config

LAYOUTS = {"data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2, kv_heads=2),
           "data2_tensor4_one_kv_head": dict(data=2, fsdp=1, tensor=4, kv_heads=1)}
ARCHS = ["decoder", "prefix_decoder", "encoder_decoder", "lstm"]
PEFT = ["lora", "adapter", "prefix", "prompt"]
PROMPTS = [[5, 6, 7], [9], [1, 2, 3, 4, 5, 6], [11, 12]]
slow = pytest.mark.slow


def cases(names, fast_in_second_layout=()):
    """(layout, name) pairs: every name in the first layout by default; the second layout (one
    KV head over tensor=4) by default only for ``fast_in_second_layout``, the rest under -m slow."""
    first, second = LAYOUTS
    return ([(first, name) for name in names] +
            [pytest.param(second, name, marks=() if name in fast_in_second_layout else slow)
             for name in names])


def config_for(layout: dict, arch: str = "decoder", peft: str = "none"):
    config = small_config(arch=arch, num_kv_heads=layout["kv_heads"], max_len=32)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = layout["data"], layout["fsdp"], layout["tensor"]
    if arch in ("encoder_decoder", "lstm"):
        config.data.packing = False
    if arch in ("prefix_decoder", "encoder_decoder"):
        config.data.objective = "prefix_lm"
    if peft != "none":
        config.peft = ml_collections.ConfigDict({"method": peft, "lora_rank": 4, "adapter_dim": 8,
                                                 "prefix_length": 3, "prompt_length": 3})
    return config


def model_pair(config):
    """(run on the 8-device mesh, its parameters sharded, the same values on one device). The
    values are perturbed so that every parameter (zero-initialised LoRA B included) matters."""
    run = Run(config, "", jax.devices())
    params = run.init_params()
    noise = jax.tree.map(lambda x, k: x + 0.05 * jax.random.normal(k, x.shape, x.dtype), params,
                         _keys(params))
    sharded = jax.device_put(noise, run.param_shardings)
    single = jax.device_put(noise, jax.devices()[0])
    return run, sharded, single


def _keys(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(jax.random.key(7), len(leaves))))


def _greedy(run, params, mesh=None, **settings):
    settings = DecodeSettings(max_new_tokens=8, temperature=0.0, **settings)
    rules = run.rules if mesh is not None else None
    return generate(run.graphdef, params, PROMPTS, settings, context=24, mesh=mesh, rules=rules).tokens


@pytest.mark.parametrize("layout,arch", cases(ARCHS, fast_in_second_layout=("decoder",)))
def test_greedy_decoding_on_the_mesh_equals_one_device(layout, arch):
    run, sharded, single = model_pair(config_for(LAYOUTS[layout], arch))
    assert _greedy(run, sharded, run.mesh) == _greedy(run, single)


@pytest.mark.parametrize("layout,peft", cases(PEFT))
def test_greedy_decoding_of_every_peft_method_on_the_mesh_equals_one_device(layout, peft):
    run, sharded, single = model_pair(config_for(LAYOUTS[layout], "decoder", peft))
    assert _greedy(run, sharded, run.mesh) == _greedy(run, single)


def test_beam_search_on_the_mesh_equals_one_device():
    run, sharded, single = model_pair(config_for(LAYOUTS["data2_fsdp2_tensor2"]))
    assert _greedy(run, sharded, run.mesh, beam_size=2) == _greedy(run, single, beam_size=2)


@pytest.mark.parametrize("layout,arch", cases(["decoder"], fast_in_second_layout=("decoder",)) +
                         [pytest.param(layout, arch, marks=slow) for layout in LAYOUTS for arch in ARCHS[1:]])
def test_loglikelihoods_on_the_mesh_agree_with_one_device(layout, arch):
    from lm.eval.scoring import ModelScorer
    run, sharded, single = model_pair(config_for(LAYOUTS[layout], arch))
    exp = run.exp
    reference = ModelScorer(run.graphdef, single, exp.model, run.vocab, exp.data.seq_len, batch_size=4)
    scorer = run.scorer(sharded, batch_size=4)
    pairs = [([5, 6, 7], [8, 9]), ([9], [10]), ([1, 2, 3, 4, 5, 6], [7, 8, 9]), ([11, 12], [13]),
             ([3], [4, 5, 6, 7])]
    documents = [list(range(1, 40)), [7, 8, 9, 10, 11]]
    for (got, greedy), (want, want_greedy) in zip(scorer.loglikelihood_tokens(pairs),
                                                  reference.loglikelihood_tokens(pairs)):
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert greedy == want_greedy
    np.testing.assert_allclose(scorer.loglikelihood_rolling_tokens(documents),
                               reference.loglikelihood_rolling_tokens(documents), rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_kv_cache_is_sharded_by_the_layout(layout):
    """Rows over the batch axes, KV heads over tensor where they divide (one KV head stays
    whole): each device holds its share of the cache, not a copy."""
    axes = LAYOUTS[layout]
    run, sharded, _ = model_pair(config_for(axes))

    def empty_cache(params):
        return nnx.merge(run.graphdef, params).init_cache(8, 16)
    with axis_rules(run.mesh, run.rules):
        cache = jax.jit(empty_cache)(sharded)
    key = cache["key"] if "key" in cache else cache["self"]["key"]
    layers, batch, heads, slots, features = key.shape
    shard = key.addressable_shards[0].data.shape
    kv_split = axes["tensor"] if heads % axes["tensor"] == 0 else 1
    assert shard == (layers, batch // (axes["data"] * axes["fsdp"]), heads // kv_split, slots, features)
