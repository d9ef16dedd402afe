"""The decoding protocol every generating model offers (lm/models/decoding.py), decoding in
cache-length buckets (lm/infer/segments.py) against one static cache and the uncached forward,
and scoring on a device mesh."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.data.vocab import SyntheticVocabulary
from lm.eval.scoring import ModelScorer, batch_layout, batch_ways
from lm.infer import segments
from lm.infer.decode import DecodeSettings, generate
from lm.models import ModelConfig, build
from lm.models.decoding import GENERATING_ARCHS, decoding_for
from tests.test_decode import BASE, PROMPTS, TOL, built, exhaustive_best, uncached_logits

NEW = 9


def test_cache_lengths_are_powers_of_two_then_the_whole_cache():
    assert segments.cache_lengths(287, 32, True, 64) == (64, 128, 256, 287)
    assert segments.cache_lengths(287, 100, True, 64) == (128, 256, 287)
    assert segments.cache_lengths(12, 7, True, 4) == (8, 12)
    assert segments.cache_lengths(7, 7, True, 4) == (7,)      # one new token: nothing cached
    assert segments.cache_lengths(40, 7, False, 4) == (40,)   # a state without slots


@pytest.mark.parametrize("arch", GENERATING_ARCHS)
def test_prefill_and_decode_step_equal_the_uncached_forward(arch):
    """The protocol driven by hand: prefill, then greedy steps, slot after slot."""
    model, _, _ = built(arch=arch, positions="rope")
    inputs = {k: jnp.asarray(v) for k, v in model.decoding.decode_inputs(PROMPTS).items()}
    width = inputs["tokens"].shape[1]
    logits_bv, cache = model.prefill(inputs, model.init_cache(len(PROMPTS), width + 3))
    steps = [np.asarray(logits_bv)]
    for i in range(3):
        token_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        logits_bv, cache = model.decode_step(token_b, cache, width + i)
        steps.append(np.asarray(logits_bv))
    steps_bnv = np.stack(steps, axis=1)
    for row, prompt in enumerate(PROMPTS):
        tokens = np.argmax(steps_bnv[row], axis=-1).tolist()
        np.testing.assert_allclose(steps_bnv[row], uncached_logits(model, prompt, tokens), **TOL)


def test_only_the_encoder_does_not_generate():
    for arch in ("decoder", "prefix_decoder", "encoder_decoder", "lstm", "encoder"):
        model = build(ModelConfig(arch=arch, **BASE))
        assert model.can_generate == (arch != "encoder")
        assert decoding_for(model.cfg).can_generate == model.can_generate


@pytest.mark.parametrize("overrides", [
    dict(arch="decoder"),
    dict(arch="decoder", scan_layers=True, positions="alibi", num_kv_heads=2),
    dict(arch="prefix_decoder", positions="rope"),
    dict(arch="encoder_decoder", scan_layers=True),
])
def test_bucketed_decoding_equals_one_static_cache(monkeypatch, overrides):
    """Growing the cache between loops (8 -> 15 slots; 4 -> 8 -> 9 for the encoder-decoder's
    start token) gives the tokens of one static cache, and logits equal to the uncached forward."""
    _, graphdef, params = built(**overrides)
    settings = DecodeSettings(max_new_tokens=NEW, temperature=1.0, seed=5)
    static = generate(graphdef, params, PROMPTS, settings, return_logits=True)
    monkeypatch.setattr(segments, "MIN_BUCKET", 4)
    bucketed = generate(graphdef, params, PROMPTS, settings, return_logits=True)
    assert bucketed.tokens == static.tokens
    np.testing.assert_allclose(bucketed.logits, static.logits, **TOL)
    model = nnx.merge(graphdef, params)
    for row, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(bucketed.logits[row],
                                   uncached_logits(model, prompt, bucketed.tokens[row]), **TOL)


def test_bucketed_greedy_stops_early_in_a_later_segment(monkeypatch):
    _, graphdef, params = built(arch="decoder")
    full = generate(graphdef, params, PROMPTS, DecodeSettings(max_new_tokens=NEW)).tokens
    stop = full[0][5]  # chosen in the second or third segment
    monkeypatch.setattr(segments, "MIN_BUCKET", 4)
    stopped = generate(graphdef, params, PROMPTS,
                       DecodeSettings(max_new_tokens=NEW, stop_tokens=(stop,))).tokens
    for row in range(len(PROMPTS)):
        expected = full[row][: full[row].index(stop)] if stop in full[row] else full[row]
        assert stopped[row] == expected


def test_bucketed_beam_search_equals_exhaustive_search(monkeypatch):
    vocab, steps, stop = 5, 3, 4
    model, graphdef, params = built(arch="decoder", vocab_size=vocab, init_std=0.5)
    monkeypatch.setattr(segments, "MIN_BUCKET", 2)  # a prompt of 1: buckets of 2, then 3 slots
    settings = DecodeSettings(max_new_tokens=steps, beam_size=vocab ** steps, length_penalty=1.0,
                              stop_tokens=(stop,))
    out = generate(graphdef, params, [[1]], settings)
    score, tokens = exhaustive_best(model, [1], vocab, steps, stop, 1.0)
    assert out.tokens[0] == (tokens[:-1] if tokens[-1] == stop else tokens)
    np.testing.assert_allclose(out.scores[0], score, rtol=1e-5)


def _mesh():
    from lm.parallel.mesh import MeshConfig, make_mesh
    return make_mesh(MeshConfig(data=2, tensor=2), jax.devices()[:4])


def _sharded(model, mesh):
    from lm.parallel import sharding as shd
    from lm.parallel.axes import STANDARD_RULES
    graphdef, state = nnx.split(model)
    params = jax.device_put(state.to_pure_dict(), shd.param_shardings(state, mesh, STANDARD_RULES))
    return graphdef, state.to_pure_dict(), params


def test_bucketed_sharded_decode_equals_one_device(monkeypatch):
    from lm.parallel.axes import STANDARD_RULES
    mesh = _mesh()
    model, _, _ = built(arch="decoder", positions="rope", num_kv_heads=2)
    graphdef, params, sharded = _sharded(model, mesh)
    prompts = PROMPTS + [[2, 2, 3]]
    settings = DecodeSettings(max_new_tokens=NEW, temperature=1.0, seed=1)
    one = generate(graphdef, params, prompts, settings, return_logits=True)
    monkeypatch.setattr(segments, "MIN_BUCKET", 4)
    many = generate(graphdef, sharded, prompts, settings, mesh=mesh, rules=STANDARD_RULES,
                    return_logits=True)
    assert many.tokens == one.tokens
    np.testing.assert_allclose(many.logits, one.logits, **TOL)


def test_scoring_batches_split_over_the_mesh_batch_ways():
    from lm.parallel.axes import STANDARD_RULES
    mesh = _mesh()
    assert batch_ways(None, None) == 1
    assert batch_ways(mesh, STANDARD_RULES) == 2  # the standard layout splits rows over data
    decoding = decoding_for(ModelConfig(**BASE))
    batch, scored = batch_layout(decoding, [([1, 2], [3]), ([4], [5, 6])], 24, 16, ways=4)
    assert batch["inputs"].shape == (4, 2) and scored.shape == (4, 2)
    np.testing.assert_array_equal(batch["inputs"][:2], [[1, 2], [4, 5]])
    assert not scored[2:].any()  # padding rows score nothing


@pytest.mark.slow  # tests/test_on_mesh.py covers scoring on the mesh in the default run
@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_sharded_scorer_equals_one_device(arch):
    from lm.parallel.axes import STANDARD_RULES
    vocab = SyntheticVocabulary(24)
    mesh = _mesh()
    cfg = ModelConfig(arch=arch, vocab_size=vocab.vocab_size, num_layers=2, d_model=16,
                      num_heads=2, max_len=16, init_std=0.3)
    graphdef, params, sharded = _sharded(build(cfg, seed=1), mesh)
    requests = [("3 4 5", " 6 7"), ("8", " 9 10 11"), ("12 13 14 15 16", " 17")]
    one = ModelScorer(graphdef, params, cfg, vocab, 16, batch_size=3)
    many = ModelScorer(graphdef, sharded, cfg, vocab, 16, batch_size=3, mesh=mesh,
                       rules=STANDARD_RULES)
    for (a, greedy_a), (b, greedy_b) in zip(one.loglikelihood(requests), many.loglikelihood(requests)):
        np.testing.assert_allclose(b, a, **TOL)
        assert greedy_a == greedy_b
    generation = [("3 4 5", {"max_gen_toks": 4})]
    assert many.generate_until(generation) == one.generate_until(generation)
