"""Cached decoding (lm/infer/decode.py) against the uncached models, the token-choice controls
against NumPy, beam search against exhaustive search, and the checks on bad requests."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lm.infer import decode
from lm.infer.decode import DecodeSettings, generate
from lm.infer.sample import filter_logits, penalize_repetition, sample_logits
from lm.models import ModelConfig, build

BASE = dict(vocab_size=37, num_layers=2, d_model=32, num_heads=4, max_len=24, init_std=0.2)
PROMPTS = [[3, 5, 7, 9, 11], [4, 6], [8, 1, 2, 30, 12, 14, 20]]
NEW = 6
TOL = dict(rtol=1e-5, atol=1e-5)


def built(**overrides):
    cfg = ModelConfig(**{**BASE, **overrides})
    model = build(cfg)
    graphdef, state = nnx.split(model)
    return model, graphdef, state.to_pure_dict()


def uncached_logits(model, prompt, new_tokens) -> np.ndarray:
    """[N, V]: the full-sequence forward's logits at the positions that chose ``new_tokens``."""
    arch = model.cfg.arch
    if arch == "encoder_decoder":
        decoder_in = jnp.asarray([[decode.DECODER_START_ID] + new_tokens[:-1]])
        return np.asarray(model(jnp.asarray([prompt]), decoder_in)[0])
    sequence = jnp.asarray([prompt + new_tokens[:-1]])
    prefix = None
    if arch == "prefix_decoder":
        prefix = jnp.asarray([[1] * len(prompt) + [0] * (len(new_tokens) - 1)])
    return np.asarray(model(sequence, bidirectional_bt=prefix)[0, len(prompt) - 1:])


CASES = {
    "decoder-list-learned": dict(arch="decoder"),
    "decoder-scan-rope": dict(arch="decoder", scan_layers=True, positions="rope"),
    "decoder-list-alibi-gqa": dict(arch="decoder", positions="alibi", num_kv_heads=2),
    "decoder-scan-sinusoidal-parallel": dict(arch="decoder", scan_layers=True, positions="sinusoidal",
                                             block="parallel", mlp="swiglu", norm="rmsnorm"),
    "decoder-pipelined": dict(arch="decoder", pipeline_stages=2),
    "prefix_decoder-list": dict(arch="prefix_decoder"),
    "prefix_decoder-scan-rope": dict(arch="prefix_decoder", scan_layers=True, positions="rope"),
    "encoder_decoder-list": dict(arch="encoder_decoder"),
    "encoder_decoder-scan-rope": dict(arch="encoder_decoder", scan_layers=True, positions="rope"),
    "lstm": dict(arch="lstm"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cached_logits_equal_uncached_forward_for_batched_prompts(name):
    """Prompts of different lengths in one batch: every row's logits at every new position equal
    the uncached forward of that row alone (so padding is invisible and positions start at 0)."""
    model, graphdef, params = built(**CASES[name])
    settings = DecodeSettings(max_new_tokens=NEW, temperature=1.0, seed=3)
    out = generate(graphdef, params, PROMPTS, settings, return_logits=True)
    for row, prompt in enumerate(PROMPTS):
        assert len(out.tokens[row]) == NEW
        np.testing.assert_allclose(out.logits[row], uncached_logits(model, prompt, out.tokens[row]),
                                   **TOL)


def test_prefix_decoder_prompt_is_bidirectional():
    model, graphdef, params = built(arch="prefix_decoder")
    out = generate(graphdef, params, [PROMPTS[0]], DecodeSettings(max_new_tokens=2), return_logits=True)
    causal = np.asarray(model(jnp.asarray([PROMPTS[0] + out.tokens[0][:1]]))[0, len(PROMPTS[0]) - 1:])
    assert np.abs(out.logits[0] - causal).max() > 1e-3


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder", "lstm"])
def test_batched_prompts_give_the_tokens_of_each_prompt_alone(arch):
    _, graphdef, params = built(arch=arch, positions="rope")
    settings = DecodeSettings(max_new_tokens=NEW)
    together = generate(graphdef, params, PROMPTS, settings).tokens
    alone = [generate(graphdef, params, [p], settings).tokens[0] for p in PROMPTS]
    assert together == alone


def test_greedy_is_argmax_of_the_uncached_model_step_by_step():
    model, graphdef, params = built(arch="decoder")
    tokens = generate(graphdef, params, [PROMPTS[0]], DecodeSettings(max_new_tokens=NEW)).tokens[0]
    sequence = list(PROMPTS[0])
    for _ in range(NEW):
        sequence.append(int(np.argmax(np.asarray(model(jnp.asarray([sequence]))[0, -1]))))
    assert tokens == sequence[len(PROMPTS[0]):]


def test_top_k_never_leaves_the_k_most_likely():
    logits_bv = jax.random.normal(jax.random.key(0), (4, 37)) * 3.0
    top3_bv = np.argsort(-np.asarray(logits_bv), axis=-1)[:, :3]
    draws = jax.vmap(lambda key: sample_logits(logits_bv, key, 1.5, top_k=3))(
        jax.random.split(jax.random.key(1), 500))
    for row in range(4):
        assert set(np.asarray(draws[:, row]).tolist()) <= set(top3_bv[row].tolist())
    assert len(set(np.asarray(draws[:, 0]).tolist())) == 3  # the cut keeps all three


def test_top_k_in_generation_over_many_seeds():
    _, graphdef, params = built(arch="decoder")
    for seed in range(8):
        out = generate(graphdef, params, PROMPTS, DecodeSettings(max_new_tokens=NEW, temperature=2.0,
                                                                 top_k=2, seed=seed), return_logits=True)
        for row, tokens in enumerate(out.tokens):
            top2 = np.argsort(-out.logits[row], axis=-1)[:, :2]
            assert all(token in top2[i] for i, token in enumerate(tokens))


def numpy_nucleus(logits_v: np.ndarray, p: float) -> np.ndarray:
    """Probabilities after keeping the smallest set of most likely tokens with mass >= p."""
    probs = np.exp(logits_v - logits_v.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    mass = np.cumsum(probs[order])
    size = int(np.searchsorted(mass, p - 1e-12) + 1)
    kept = np.zeros_like(probs)
    kept[order[:size]] = probs[order[:size]]
    return kept / kept.sum()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
    logits_bv = np.asarray(jax.random.normal(jax.random.key(2), (5, 37)) * 2.0, np.float64)
    filtered = np.asarray(jax.nn.softmax(filter_logits(jnp.asarray(logits_bv, jnp.float32), 1.0, top_p=p)))
    for row in range(5):
        expected = numpy_nucleus(logits_bv[row], p)
        np.testing.assert_array_equal(filtered[row] > 0, expected > 0)
        np.testing.assert_allclose(filtered[row], expected, rtol=1e-5, atol=1e-6)
    draws = jax.vmap(lambda key: sample_logits(jnp.asarray(logits_bv, jnp.float32), key, 1.0, top_p=p))(
        jax.random.split(jax.random.key(3), 300))
    for row in range(5):
        assert np.all(filtered[row][np.asarray(draws[:, row])] > 0)


def test_repetition_penalty():
    logits = jnp.asarray([[2.0, -1.0, 0.5, 3.0]])
    seen = jnp.asarray([[True, True, False, False]])
    np.testing.assert_allclose(penalize_repetition(logits, 2.0, seen), [[1.0, -2.0, 0.5, 3.0]])
    _, graphdef, params = built(arch="decoder")
    settings = DecodeSettings(max_new_tokens=NEW, repetition_penalty=3.0)
    out = generate(graphdef, params, PROMPTS, settings, return_logits=True)
    plain = generate(graphdef, params, PROMPTS, DecodeSettings(max_new_tokens=NEW)).tokens
    assert out.tokens != plain
    for row, prompt in enumerate(PROMPTS):
        seen = np.zeros(BASE["vocab_size"], bool)
        seen[prompt] = True
        for i, token in enumerate(out.tokens[row]):
            penalized = np.asarray(penalize_repetition(jnp.asarray(out.logits[row, i:i + 1]), 3.0,
                                                       jnp.asarray(seen[None])))
            assert token == int(np.argmax(penalized))
            seen[token] = True


def exhaustive_best(model, prompt, vocab, steps, stop, alpha):
    """(score, tokens) of the best sequence over every continuation of at most ``steps`` tokens
    that ends at the stop token or at ``steps``; score = log p / ((5 + len) / 6) ** alpha."""
    best = (-np.inf, None)
    for length in range(1, steps + 1):
        every = np.asarray(list(itertools.product(range(vocab), repeat=length)), np.int32)
        rows = np.concatenate([np.tile(prompt, (len(every), 1)), every], axis=1)
        logits = np.asarray(model(jnp.asarray(rows)), np.float64)[:, len(prompt) - 1:-1]
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        totals = np.take_along_axis(logp, every[..., None], axis=-1)[..., 0].sum(-1)
        for tokens, total in zip(every.tolist(), totals):
            if stop in tokens[:-1] or (length < steps and tokens[-1] != stop):
                continue
            score = total / ((5.0 + length) / 6.0) ** alpha
            if score > best[0]:
                best = (score, tokens)
    return best


@pytest.mark.parametrize("arch", ["decoder", "lstm"])
@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_beam_search_equals_exhaustive_search(arch, alpha):
    vocab, steps, stop = 5, 3, 4
    model, graphdef, params = built(arch=arch, vocab_size=vocab, init_std=0.5)
    prompt = [1, 2]
    settings = DecodeSettings(max_new_tokens=steps, beam_size=vocab ** steps, length_penalty=alpha,
                              stop_tokens=(stop,))
    out = generate(graphdef, params, [prompt], settings)
    score, tokens = exhaustive_best(model, prompt, vocab, steps, stop, alpha)
    expected = tokens[:-1] if tokens[-1] == stop else tokens
    assert out.tokens[0] == expected
    np.testing.assert_allclose(out.scores[0], score, rtol=1e-5)


def test_length_penalty_changes_the_choice():
    """Among the exhaustive optima, alpha shifts the winner towards longer hypotheses."""
    vocab, steps, stop = 5, 3, 4
    model, graphdef, params = built(arch="decoder", vocab_size=vocab, init_std=0.5)
    lengths = {}
    for alpha in (0.0, 5.0):
        lengths[alpha] = len(exhaustive_best(model, [1, 2], vocab, steps, stop, alpha)[1])
    assert lengths[5.0] >= lengths[0.0]


def test_stop_tokens_end_each_row():
    _, graphdef, params = built(arch="decoder")
    full = generate(graphdef, params, PROMPTS, DecodeSettings(max_new_tokens=NEW)).tokens
    stop = full[0][2]
    stopped = generate(graphdef, params, PROMPTS, DecodeSettings(max_new_tokens=NEW, stop_tokens=(stop,))).tokens
    for row in range(len(PROMPTS)):
        expected = full[row][: full[row].index(stop)] if stop in full[row] else full[row]
        assert stopped[row] == expected
    assert len(stopped[0]) <= 2


class Letters:
    """A vocabulary of letters: id i is chr(ord('a') + i)."""

    def encode(self, text):
        return [ord(c) - ord("a") for c in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


def test_stop_strings_cut_the_text():
    assert decode.truncate_at_stop("abcdefcd", ["cd", "f"]) == "ab"
    assert decode.truncate_at_stop("abc", ["x"]) == "abc"
    _, graphdef, params = built(arch="decoder", vocab_size=26)
    full = decode.generate_text(graphdef, params, Letters(), ["hello"], DecodeSettings(max_new_tokens=NEW))[0]
    cut = decode.generate_text(graphdef, params, Letters(), ["hello"],
                               DecodeSettings(max_new_tokens=NEW, stop_strings=(full[2:4],)))[0]
    assert cut == full[: full.index(full[2:4])]
    never = decode.generate_text(graphdef, params, Letters(), ["hello"],
                                 DecodeSettings(max_new_tokens=NEW, stop_strings=("#",)))[0]
    assert never == full and len(never) == NEW


def test_seeded_sampling_is_deterministic():
    _, graphdef, params = built(arch="decoder")

    def draw(seed):
        return generate(graphdef, params, PROMPTS, DecodeSettings(max_new_tokens=12, temperature=1.5,
                                                                  top_p=0.95, seed=seed)).tokens
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_generation_continues_past_the_context():
    _, graphdef, params = built(arch="decoder", max_len=16)
    tokens = decode.generate_past_context(graphdef, params, [3, 4], DecodeSettings(max_new_tokens=40), 16)
    assert len(tokens) == 40


def test_sharded_decode_equals_one_device():
    from lm.parallel import sharding as shd
    from lm.parallel.axes import STANDARD_RULES
    from lm.parallel.mesh import MeshConfig, make_mesh
    mesh = make_mesh(MeshConfig(data=2, tensor=2), jax.devices()[:4])
    model, graphdef, params = built(arch="decoder", positions="rope")
    sharded = jax.device_put(params, shd.param_shardings(nnx.split(model)[1], mesh, STANDARD_RULES))
    prompts = PROMPTS + [[2, 2, 3]]
    settings = DecodeSettings(max_new_tokens=NEW, temperature=1.0, seed=1)
    one = generate(graphdef, params, prompts, settings, return_logits=True)
    many = generate(graphdef, sharded, prompts, settings, mesh=mesh, rules=STANDARD_RULES,
                    return_logits=True)
    assert many.tokens == one.tokens
    np.testing.assert_allclose(many.logits, one.logits, **TOL)


@pytest.mark.parametrize("prompts, settings, message", [
    ([[]], DecodeSettings(), "prompt 0 is empty"),
    ([], DecodeSettings(), "prompts is empty"),
    ([[1] * 25], DecodeSettings(), "longer than the context of 24"),
    ([[1] * 20], DecodeSettings(max_new_tokens=5), "max_new_tokens=5"),
    ([[1, 2]], DecodeSettings(top_p=0.0), "top_p"),
    ([[1, 2]], DecodeSettings(max_new_tokens=0), "max_new_tokens"),
    ([[1, 99]], DecodeSettings(), "outside the vocabulary"),
])
def test_bad_requests_fail_before_decoding(prompts, settings, message):
    _, graphdef, params = built(arch="decoder")
    with pytest.raises(ValueError, match=message):
        generate(graphdef, params, prompts, settings)


def test_encoder_does_not_generate():
    _, graphdef, params = built(arch="encoder")
    with pytest.raises(ValueError, match="arch='encoder' does not generate"):
        generate(graphdef, params, [[1, 2]], DecodeSettings())
