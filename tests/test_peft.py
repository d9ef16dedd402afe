"""Parameter-efficient fine-tuning (lm/peft): each method against its base model, the frozen
optimizer, closed-form counts, adapter files, sharded runs and cached decoding."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lm.configlib import ConfigError
from lm.infer.decode import DecodeSettings, generate
from lm import models, peft as peft_lib
from lm.models import ModelConfig
from lm.parallel import MeshConfig, axis_rules, make_mesh
from lm.parallel.axes import STANDARD_RULES
from lm.parallel.sharding import batch_sharding, param_shardings
from lm.peft import PeftConfig
from lm.peft import params as peft_params
from lm.peft.optim import frozen
from lm.peft.prompt import initialize_soft_prompt
from lm.train.optimizer import OptimizerConfig, make_optimizer

# init_std 0.2 so that attention patterns, and so every method's parameters, visibly matter.
BASE = dict(vocab_size=37, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, max_len=40,
            init_std=0.2)
B, T = 2, 12
ALL_KERNELS = r".*kernel"


class Setup(NamedTuple):
    """A base model's configuration and the PEFT method attached to it."""
    model: ModelConfig
    peft: PeftConfig


def config(method: str = "none", peft: dict | None = None, **model) -> Setup:
    model_cfg = ModelConfig(**{**BASE, **model})
    peft_cfg = PeftConfig(method=method, **(peft or {}))
    peft_cfg.check_model(model_cfg)
    return Setup(model_cfg, peft_cfg)


def build(cfg, seed: int = 0):
    """The model of ``cfg`` (a Setup, or a ModelConfig: no PEFT)."""
    if isinstance(cfg, ModelConfig):
        return models.build(cfg, seed)
    return peft_lib.build(cfg.model, cfg.peft, seed)


def base_of(cfg: Setup) -> ModelConfig:
    return cfg.model


def split(model) -> tuple[nnx.GraphDef, dict]:
    graphdef, state = nnx.split(model)
    return graphdef, state.to_pure_dict()


def forward(graphdef, params, toks, positions=None, segments=None, dropout_rng=None) -> np.ndarray:
    """Logits of the model ``(graphdef, params)`` (compiled: far faster than running eagerly)."""
    return np.asarray(_forward(graphdef, params, jnp.asarray(toks), positions, segments, dropout_rng))


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, toks, positions, segments, dropout_rng):
    return nnx.merge(graphdef, params)(toks, positions, segments, dropout_rng)


def eager_forward(graphdef, params, toks) -> np.ndarray:
    """Logits op by op. Exactness claims ("adds exactly zero") are checked eagerly: compiled,
    the extra operations may change how XLA fuses the base ones, and so their rounding."""
    return np.asarray(nnx.merge(graphdef, params)(jnp.asarray(toks)))


def tokens(seed: int = 0, batch: int = B, length: int = T) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, BASE["vocab_size"], (batch, length)).astype(np.int32)


def perturbed(params: dict, cfg: ModelConfig, seed: int = 1, scale: float = 0.3) -> dict:
    """``params`` with every PEFT parameter replaced by random values, so that all of them act."""
    rng = np.random.RandomState(seed)
    mask = peft_params.trainable_mask(params, cfg.peft)
    return jax.tree.map(lambda p, train: jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype)
                        if train else p, params, mask)


def leaves(tree) -> dict:
    return {peft_params.path_string(path): np.asarray(leaf)
            for path, leaf in peft_params.leaves_with_paths(tree)}


# ----------------------------------------------------------------------------- configuration


def test_none_is_the_plain_model_and_configs_stay_hashable():
    cfg = config()
    assert cfg.model == ModelConfig(**BASE) and hash(cfg) == hash(config())
    assert not any(peft_params.is_peft_path(path) for path in peft_params.expected_shapes(cfg.model))
    graphdef, params = split(build(cfg, seed=1))
    base_graphdef, base_params = split(models.build(cfg.model, seed=1))
    assert graphdef == base_graphdef and jax.tree.all(jax.tree.map(np.array_equal, params, base_params))
    # A config section (or a saved config.json) gives the PEFT settings as a mapping.
    assert PeftConfig.from_config({"method": "lora", "lora_rank": 2}) == PeftConfig("lora", lora_rank=2)


@pytest.mark.parametrize("peft, model, message", [
    (dict(method="qlora"), {}, "config.peft.method='qlora'"),
    (dict(method="lora", lora_rank=0), {}, "config.peft.lora_rank"),
    (dict(method="lora", lora_dropout=1.0), {}, "config.peft.lora_dropout"),
    (dict(method="lora", lora_targets="(query"), {}, "config.peft.lora_targets"),
    (dict(method="prompt", prompt_init="words"), {}, "config.peft.prompt_init"),
    (dict(method="prefix", prefix_hidden=-1), {}, "config.peft.prefix_hidden"),
    (dict(method="adapter"), dict(arch="lstm"), "config.model.arch"),
    (dict(method="prefix"), dict(pipeline_stages=2), "pipeline_stages=2"),
])
def test_bad_configs_are_refused_naming_the_field(peft, model, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        PeftConfig(**peft).check_model(ModelConfig(**{**BASE, **model}))


def test_lora_targets_matching_nothing_names_the_regex_and_real_paths():
    cfg = config("lora", dict(lora_targets=r".*attn/q_proj.*"))
    with pytest.raises(ConfigError, match=r"lora_targets='\.\*attn/q_proj\.\*'.*blocks/0/attention/query/kernel"):
        nnx.eval_shape(lambda: build(cfg))
    with pytest.raises(ConfigError, match="matches no dense kernel"):
        peft_params.closed_form_trainable_count(*cfg)


# ----------------------------------------------------------------------------- each method vs base


@pytest.mark.parametrize("method", ["lora", "adapter"])
@pytest.mark.parametrize("model", [dict(block="parallel", mlp="swiglu", tie_embeddings=False),
                                   dict(scan_layers=True, use_bias=True, positions="rope")],
                         ids=["list-parallel-swiglu-untied", "scan-bias-rope"])
def test_zero_initialized_methods_give_the_base_logits_exactly(method, model):
    """LoRA's B and the adapters' up-projection start at zero: logits identical to the base
    model's, whose parameters (same seed) the PEFT model shares."""
    cfg = config(method, dict(lora_targets=ALL_KERNELS), **model)
    graphdef, params = split(build(cfg, seed=3))
    base_graphdef, base_params = split(build(base_of(cfg), seed=3))
    base_part, _ = peft_params.split_adapter(params, peft_params.trainable_mask(params, cfg.peft))
    assert jax.tree.all(jax.tree.map(np.array_equal, base_part, base_params))
    got, want = eager_forward(graphdef, params, tokens()), eager_forward(base_graphdef, base_params, tokens())
    assert np.array_equal(got, want), np.abs(got - want).max()
    # and the method's parameters do act once they are non-zero
    assert np.abs(forward(graphdef, perturbed(params, cfg), tokens()) - want).max() > 1e-2


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prefix_and_prompt_change_the_logits_and_keep_their_length(method):
    cfg = config(method, dict(prefix_length=3, prompt_length=3))
    graphdef, params = split(build(cfg, seed=3))
    got = forward(graphdef, params, tokens())
    want = forward(*split(build(base_of(cfg), seed=3)), tokens())
    assert got.shape == want.shape == (B, T, BASE["vocab_size"])
    assert np.abs(got - want).max() > 1e-2


def test_reparameterized_prefix_is_the_mlp_output_as_direct_prefixes():
    """The MLP's output, written into a direct-prefix model, gives the same logits."""
    mlp_cfg = config("prefix", dict(prefix_length=3, prefix_hidden=16))
    mlp_graphdef, mlp_params = split(build(mlp_cfg, seed=2))
    slots = jax.jit(lambda p: nnx.merge(mlp_graphdef, p).prefix_tuning())(mlp_params)
    direct_cfg = Setup(mlp_cfg.model, PeftConfig("prefix", prefix_length=3))
    graphdef, params = split(build(direct_cfg, seed=2))
    params["prefix_tuning"] = {"key": slots["key"], "value": slots["value"]}
    np.testing.assert_allclose(forward(graphdef, params, tokens()), forward(mlp_graphdef, mlp_params, tokens()),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model", [dict(positions="learned"), dict(positions="rope"),
                                   dict(positions="alibi"), dict(positions="sinusoidal")],
                         ids=["learned", "rope", "alibi", "sinusoidal"])
def test_prompt_initialized_from_text_is_that_text_prepended(model):
    """prompt_init='text:...' makes the soft prompt the text's embeddings: the prompt-tuned
    model's logits are the base model's on text + tokens, minus the text's positions."""
    text_ids = [5, 9, 2]
    cfg = config("prompt", dict(prompt_length=3, prompt_init="text:abc"), **model)
    graphdef, params = split(build(cfg, seed=4))
    params = initialize_soft_prompt(params, *cfg, encode=lambda text: text_ids)
    np.testing.assert_array_equal(params["soft_prompt"], params["embed"]["embedding"][np.array(text_ids)])
    base_graphdef, base_params = split(build(base_of(cfg), seed=4))
    toks = tokens()
    prepended = np.concatenate([np.tile(text_ids, (B, 1)), toks], axis=1)
    want = forward(base_graphdef, base_params, prepended)[:, len(text_ids):]
    np.testing.assert_allclose(forward(graphdef, params, toks), want, rtol=1e-5, atol=1e-5)


def assert_packed_like_separate_rows(graphdef, params):
    """Two documents packed in one row (segments 1 and 2) give the logits of two separate rows."""
    toks = tokens(length=10)
    segments = np.array([[1] * 6 + [2] * 4] * B, np.int32)
    positions = np.array([list(range(6)) + list(range(4))] * B, np.int32)
    packed = forward(graphdef, params, toks, jnp.asarray(positions), jnp.asarray(segments))
    first, second = forward(graphdef, params, toks[:, :6]), forward(graphdef, params, toks[:, 6:])
    np.testing.assert_allclose(packed, np.concatenate([first, second], axis=1), rtol=1e-5, atol=1e-5)


def test_prompt_in_a_packed_row_is_prepended_to_every_document():
    cfg = config("prompt", dict(prompt_length=4), positions="rope")
    graphdef, params = split(build(cfg, seed=5))
    assert_packed_like_separate_rows(graphdef, params)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prefix_and_prompt_models_keep_the_base_parameters_and_pack_like_separate_rows(method):
    """The subclassed decoder has the base model's parameters (same seed); packed documents each
    see the learned slots, as if each were its own row."""
    cfg = config(method, dict(prefix_length=3, prompt_length=3), positions="alibi")
    graphdef, params = split(build(cfg, seed=5))
    base_part, _ = peft_params.split_adapter(params, peft_params.trainable_mask(params, cfg.peft))
    assert jax.tree.all(jax.tree.map(np.array_equal, base_part, split(build(cfg.model, seed=5))[1]))
    assert_packed_like_separate_rows(graphdef, params)


def test_prefix_model_cache_starts_with_the_learned_slots():
    """A prefix-tuned model is a learned pre-filled KV cache: init_cache holds the P slots of
    every layer first, zeros after (grown caches keep them)."""
    cfg = config("prefix", dict(prefix_length=3), scan_layers=True)
    model = build(cfg, seed=6)
    slots = model.prefix_tuning()
    cache = model.grow_cache(model.init_cache(2, 4), 6)
    for name in ("key", "value"):
        kv = np.asarray(cache["self"][name])  # [L, B, G, P + S, K]
        assert kv.shape[3] == 3 + 6
        for row in range(2):
            np.testing.assert_array_equal(kv[:, row, :, :3], np.swapaxes(np.asarray(slots[name]), 1, 2))
        assert not kv[:, :, :, 3:].any()


def test_prefix_training_forward_draws_dropout_only_with_an_rng():
    cfg = config("prefix", dict(prefix_length=3), dropout=0.3)
    graphdef, params = split(build(cfg))
    plain = forward(graphdef, params, tokens())
    np.testing.assert_array_equal(forward(graphdef, params, tokens()), plain)
    assert np.abs(forward(graphdef, params, tokens(), dropout_rng=jax.random.key(0)) - plain).max() > 1e-3


def test_prompt_longer_than_the_learned_position_table_is_refused():
    cfg = config("prompt", dict(prompt_length=8), max_len=16)
    graphdef, params = split(build(cfg))
    with pytest.raises(ValueError, match="config.model.max_len=16 cannot hold the soft prompt"):
        jax.eval_shape(lambda p: nnx.merge(graphdef, p)(jnp.zeros((1, 12), jnp.int32)), params)


def test_lora_dropout_draws_only_with_an_rng():
    cfg = config("lora", dict(lora_dropout=0.5))
    graphdef, params = split(build(cfg))
    params = perturbed(params, cfg)
    plain = forward(graphdef, params, tokens())
    np.testing.assert_array_equal(forward(graphdef, params, tokens()), plain)
    dropped = forward(graphdef, params, tokens(), dropout_rng=jax.random.key(0))
    assert np.abs(dropped - plain).max() > 1e-3


# ----------------------------------------------------------------------------- merge and unmerge


@pytest.mark.parametrize("model", [dict(), pytest.param(dict(scan_layers=True, tie_embeddings=False, mlp="swiglu"),
                                                         marks=pytest.mark.slow)],
                         ids=["list", "scan-untied-swiglu"])
def test_merged_lora_equals_unmerged_and_unmerge_inverts_merge(model):
    cfg = config("lora", dict(lora_targets=ALL_KERNELS, lora_rank=4, lora_alpha=8.0), **model)
    graphdef, params = split(build(cfg, seed=6))
    params = perturbed(params, cfg, scale=0.2)
    mask = peft_params.trainable_mask(params, cfg.peft)
    merged = peft_params.merge_lora(params, cfg.peft)
    want = forward(graphdef, params, tokens())
    np.testing.assert_allclose(forward(graphdef, merged, tokens()), want, rtol=1e-5, atol=1e-5)
    # Served without the (now zero) factors, as the base model:
    base_params, factors = peft_params.split_adapter(merged, mask)
    assert all(not v.any() for v in leaves(factors).values())
    base_graphdef = nnx.split(build(base_of(cfg)))[0]
    unadapted = peft_params.split_adapter(params, mask)[0]
    assert np.abs(forward(base_graphdef, unadapted, tokens()) - want).max() > 1.0  # LoRA matters
    np.testing.assert_allclose(forward(base_graphdef, base_params, tokens()), want, rtol=1e-5, atol=1e-5)
    restored = peft_params.unmerge_lora(merged, cfg.peft, peft_params.split_adapter(params, mask)[1])
    for path, value in leaves(params).items():
        np.testing.assert_allclose(leaves(restored)[path], value, rtol=0, atol=1e-6, err_msg=path)


# ----------------------------------------------------------------------------- training


def _loss(graphdef, params, toks, targets):
    logits = nnx.merge(graphdef, params)(toks).astype(jnp.float32)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1))


TRAIN_CASES = {
    "lora-list-adamw": ("lora", {}, dict(), "project"),
    "adapter-scan": ("adapter", {}, dict(scan_layers=True), "adam"),
    "prefix-list": ("prefix", {}, dict(), "adam"),
    "prefix-mlp-scan": ("prefix", dict(prefix_hidden=8), dict(scan_layers=True), "adam"),
    "prompt-scan": ("prompt", {}, dict(scan_layers=True, positions="rope"), "adam"),
    "full-list": ("full", {}, dict(), "adam"),
}


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_training_moves_only_trainable_parameters(name):
    method, peft, model, optimizer_name = TRAIN_CASES[name]
    cfg = config(method, peft, **model)
    graphdef, params = split(build(cfg, seed=7))
    mask = peft_params.trainable_mask(params, cfg.peft)
    core = (make_optimizer(OptimizerConfig(lr=1e-2, warmup_steps=0, schedule="constant"), 10)
            if optimizer_name == "project" else optax.adam(1e-2))
    optimizer = frozen(core, mask)
    opt_state = optimizer.init(params)

    # State only for trainable parameters: Adam's two moments of each, plus scalars (counts).
    trainable_leaves = sum(jax.tree.leaves(mask))
    moments = [x for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0]
    assert len(moments) == 2 * trainable_leaves
    assert sum(x.size for x in moments) == 2 * peft_params.count_trainable(params, cfg.peft)

    @jax.jit
    def step(params, opt_state, toks, targets):
        grads = jax.grad(lambda p: _loss(graphdef, p, toks, targets))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new = params
    for i in range(3):
        toks = tokens(seed=10 + i, length=T + 1)
        new, opt_state = step(new, opt_state, jnp.asarray(toks[:, :-1]), jnp.asarray(toks[:, 1:]))
    before, after, trains = leaves(params), leaves(new), leaves(mask)
    for path in before:
        changed = not np.array_equal(before[path], after[path])
        assert changed == bool(trains[path]), f"{path}: trainable={trains[path]} changed={changed}"


# ----------------------------------------------------------------------------- closed-form counts


COUNT_METHODS = {
    "lora": ("lora", {}),
    "lora-mlp-and-head": ("lora", dict(lora_targets=r"(blocks/.*mlp/.*|head)/kernel", lora_rank=3)),
    "adapter": ("adapter", dict(adapter_dim=5)),
    "prefix": ("prefix", dict(prefix_length=3)),
    "prefix-mlp": ("prefix", dict(prefix_length=3, prefix_hidden=7)),
    "prompt": ("prompt", dict(prompt_length=5)),
    "full": ("full", {}),
}
COUNT_MODELS = {
    "list-gqa": dict(),
    "scan-gqa-swiglu-untied-bias": dict(scan_layers=True, mlp="swiglu", tie_embeddings=False, use_bias=True),
    "list-mqa-parallel-headdim": dict(num_kv_heads=1, block="parallel", head_dim=12, num_layers=3),
    "pipelined-rmsnorm": dict(pipeline_stages=2, norm="rmsnorm", positions="rope", tie_embeddings=False),
}


# Prefix and prompt tuning refuse pipelined stacks (tested above).
COUNT_CASES = [(method, model) for method in COUNT_METHODS for model in COUNT_MODELS
               if not (COUNT_METHODS[method][0] in ("prefix", "prompt") and model.startswith("pipelined"))]


@pytest.mark.parametrize("method, model", COUNT_CASES, ids=[f"{m}-{n}" for m, n in COUNT_CASES])
def test_trainable_count_equals_closed_form(method, model):
    kind, peft = COUNT_METHODS[method]
    cfg = config(kind, peft, **COUNT_MODELS[model])
    abstract = nnx.split(nnx.eval_shape(lambda: build(cfg)))[1].to_pure_dict()
    counted = peft_params.count_trainable(abstract, cfg.peft)
    assert counted == peft_params.closed_form_trainable_count(*cfg)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    assert total - (0 if kind == "full" else counted) == peft_params.base_parameter_count(cfg.model)


# ----------------------------------------------------------------------------- adapter files


def test_adapter_file_round_trip(tmp_path):
    cfg = config("lora", dict(lora_targets=ALL_KERNELS), scan_layers=True, tie_embeddings=False)
    graphdef, params = split(build(cfg, seed=8))
    params = jax.tree.map(np.asarray, perturbed(params, cfg))
    path = os.path.join(tmp_path, "run", "adapter")
    peft_params.save_adapter(path, params, *cfg)
    assert os.listdir(os.path.dirname(path)) == ["adapter"]  # no temporary file left behind
    adapter, peft = peft_params.load_adapter(path)
    assert peft == cfg.peft
    base, want_adapter = peft_params.split_adapter(params, peft_params.trainable_mask(params, cfg.peft))
    assert set(leaves(adapter)) == set(leaves(want_adapter))
    assert all(peft_params.is_peft_path(p) for p, _ in peft_params.leaves_with_paths(adapter))
    for name, value in leaves(want_adapter).items():
        got = leaves(adapter)[name]
        assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), name
    joined = peft_params.join_adapter(base, adapter, *cfg)
    assert jax.tree.structure(joined) == jax.tree.structure(params)
    assert jax.tree.all(jax.tree.map(np.array_equal, joined, params))
    again, again_cfg = peft_params.load_adapter_onto(path, base, base_of(cfg))
    assert again_cfg == cfg.peft and jax.tree.all(jax.tree.map(np.array_equal, again, params))


def test_adapter_file_keeps_bfloat16_bits(tmp_path):
    cfg = config("adapter", param_dtype="bfloat16")
    rng = np.random.RandomState(0)
    params = {"embed": {"embedding": jnp.zeros((4, 3), jnp.bfloat16)},
              "blocks": {0: {"adapter_mlp": {"up": jnp.asarray(rng.standard_normal((2, 3)), jnp.bfloat16),
                                             "up_bias": jnp.asarray(rng.standard_normal(3), jnp.bfloat16)}}}}
    path = os.path.join(tmp_path, "adapter.npz")
    peft_params.save_adapter(path, params, *cfg)
    adapter, _ = peft_params.load_adapter(path)
    _, want = peft_params.split_adapter(params, peft_params.trainable_mask(params, cfg.peft))
    for name, value in leaves(want).items():
        got = leaves(adapter)[name]
        assert got.dtype == jnp.bfloat16 and got.tobytes() == value.tobytes(), name


def test_version_1_adapter_files_are_read_with_the_current_paths(tmp_path):
    """Version 1 files named the bottleneck adapters by block (blocks/0/adapter_mlp/up); they
    now live in the output projection they follow (blocks/0/mlp/wo/adapter/up)."""
    cfg = config("adapter", dict(adapter_dim=4))
    params = perturbed(split(build(cfg, seed=8))[1], cfg)
    base, adapter = peft_params.split_adapter(params, peft_params.trainable_mask(params, cfg.peft))
    old_names = {("attention", "out", "adapter"): "adapter_attention", ("mlp", "wo", "adapter"): "adapter_mlp"}
    entries, arrays = [], {}
    for index, (path, leaf) in enumerate(peft_params.leaves_with_paths(adapter)):
        old = (path[0], path[1], old_names[path[2:5]], *path[5:])  # blocks, i, adapter_*, leaf
        entries.append({"path": list(old), "dtype": "float32", "shape": list(np.shape(leaf))})
        arrays[f"p{index}"] = np.asarray(leaf)
    metadata = {"format": peft_params.ADAPTER_FORMAT, "version": 1, "parameters": entries,
                "peft": dataclasses.asdict(cfg.peft)}
    path = os.path.join(tmp_path, "adapter_v1")
    with open(path, "wb") as f:
        np.savez(f, metadata=np.asarray(json.dumps(metadata)), **arrays)
    joined, peft = peft_params.load_adapter_onto(path, base, cfg.model)
    assert peft == cfg.peft
    assert jax.tree.all(jax.tree.map(np.array_equal, joined, params))


def test_adapter_on_a_base_of_the_wrong_shape_names_the_parameter(tmp_path):
    cfg = config("lora")
    path = os.path.join(tmp_path, "adapter")
    peft_params.save_adapter(path, split(build(cfg))[1], *cfg)
    wide = config(d_model=48)
    wide_params = nnx.split(nnx.eval_shape(lambda: build(wide.model)))[1].to_pure_dict()  # shapes suffice
    with pytest.raises(ValueError, match=r"adapter parameter blocks/0/attention/\w+/lora/a has shape "
                                         r"\(32, 8\), the model needs \(48, 8\)"):
        peft_params.load_adapter_onto(path, wide_params, wide.model)


def test_base_checkpoint_into_the_peft_tree():
    """The trainer's start: a pretrained base (here seed 11) under a freshly built PEFT tree."""
    cfg = config("adapter")
    pretrained = split(build(base_of(cfg), seed=11))[1]
    graphdef, fresh = split(build(cfg, seed=0))
    params = peft_params.with_base(fresh, pretrained, *cfg)
    np.testing.assert_array_equal(eager_forward(graphdef, params, tokens()),
                                  eager_forward(nnx.split(build(base_of(cfg)))[0], pretrained, tokens()))
    with pytest.raises(ValueError, match="base parameter embed/embedding has shape"):
        peft_params.with_base(fresh, split(build(config(vocab_size=40), seed=11))[1], *cfg)


# ----------------------------------------------------------------------------- sharded == one device


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt"])
def test_sharded_forward_equals_one_device(method):
    cfg = config(method, dict(lora_targets=ALL_KERNELS), num_heads=4, num_kv_heads=2,
                 tie_embeddings=False, positions="rope")
    model = build(cfg, seed=9)
    graphdef, state = nnx.split(model)
    params = perturbed(state.to_pure_dict(), cfg, scale=0.1)
    toks = tokens(batch=4)
    want = forward(graphdef, params, toks)

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices())
    shardings = param_shardings(state, mesh, STANDARD_RULES)

    def run(p, t):
        with axis_rules(mesh, STANDARD_RULES):
            return nnx.merge(graphdef, p)(t)
    got = jax.jit(run, in_shardings=(shardings, batch_sharding(mesh)))(
        jax.device_put(params, shardings), jax.device_put(jnp.asarray(toks), batch_sharding(mesh)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    if method == "lora":  # the factors are sharded like the kernels they adapt
        query = shardings["blocks"][0]["attention"]["query"]
        assert query["lora"]["a"].spec == jax.sharding.PartitionSpec("fsdp", None)
        assert query["lora"]["b"].spec == jax.sharding.PartitionSpec(None, "tensor", None)


# ----------------------------------------------------------------------------- cached decoding


PROMPTS = [[3, 5, 7, 9, 11], [4, 6], [8, 1, 2, 30, 12, 14, 20]]
NEW = 5
DECODE_CASES = {
    "lora-and-merged-scan-untied": ("lora", dict(lora_targets=ALL_KERNELS), dict(scan_layers=True,
                                                                                tie_embeddings=False)),
    "adapter-scan-alibi": ("adapter", {}, dict(scan_layers=True, positions="alibi")),
    "prefix-mlp-list-alibi": ("prefix", dict(prefix_length=3, prefix_hidden=8), dict(positions="alibi")),
    "prompt-scan-rope": ("prompt", dict(prompt_length=3), dict(scan_layers=True, positions="rope")),
    "prompt-list-alibi-learned": ("prompt", dict(prompt_length=3), dict(positions="alibi")),
}


@pytest.mark.parametrize("name", list(DECODE_CASES))
def test_cached_decoding_equals_uncached_forward(name):
    method, peft, model = DECODE_CASES[name]
    cfg = config(method, peft, **model)
    graphdef, params = split(build(cfg, seed=12))
    params = perturbed(params, cfg, scale=0.1)
    check_cached_decoding(graphdef, params)
    if method == "lora":
        check_cached_decoding(graphdef, peft_params.merge_lora(params, cfg.peft))


def check_cached_decoding(graphdef, params):
    out = generate(graphdef, params, PROMPTS, DecodeSettings(max_new_tokens=NEW, temperature=1.0, seed=3),
                   return_logits=True)
    # Each row's uncached forward, alone: rows padded on the right, which a causal model ignores.
    sequences = [prompt + out.tokens[row][:-1] for row, prompt in enumerate(PROMPTS)]
    width = max(map(len, sequences))
    uncached = forward(graphdef, params, [seq + [0] * (width - len(seq)) for seq in sequences])
    for row, prompt in enumerate(PROMPTS):
        want = uncached[row, len(prompt) - 1: len(sequences[row])]
        np.testing.assert_allclose(out.logits[row], want, rtol=1e-5, atol=1e-5)
