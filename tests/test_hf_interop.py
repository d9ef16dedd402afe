"""Hugging Face Llama interoperability (lm/interop): exported folders run in transformers'
own LlamaForCausalLM with our logits, transformers' own checkpoints import with its logits,
export -> import is bit-exact, and everything outside the Llama mapping is refused by name."""
from __future__ import annotations

import dataclasses
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach for the hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from lm.configlib import ConfigError  # noqa: E402
from lm.interop import HFCheckpointError, export_llama, export_workdir, import_llama, load_llama_model  # noqa: E402
from lm.interop import files, hf  # noqa: E402
from lm.interop.llama_config import mapped_fields  # noqa: E402
from lm.models import ModelConfig  # noqa: E402
from lm.train.state import abstract_model  # noqa: E402
from tests.helpers import run_module, small_config  # noqa: E402

LLAMA = dict(vocab_size=67, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, d_ff=96, max_len=64,
             positions="rope", norm="rmsnorm", mlp="swiglu", block="serial", use_bias=False,
             tie_embeddings=False)
# Non-default head size, RoPE base and epsilon: a mapping that dropped any of them shows.
UNUSUAL = dict(head_dim=24, rope_theta=500.0, norm_eps=1e-2)
B, T = 2, 24
ATOL = 1e-4
# A wrong mapping moves these O(1..10) logits by far more than this.
VISIBLE = 1e-2


def llama_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**LLAMA, **overrides})


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Parameters drawn at std 0.2 (attention scores O(1)) and norm scales at 1 +- 0.3, so a
    norm written as 1 + weight, a swapped projection or a wrong rotation all change the logits."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        noise = rng.standard_normal(x.shape).astype(np.float32)
        return 1.0 + 0.3 * noise if path[-1].key == "scale" else 0.2 * noise
    return jax.tree_util.tree_map_with_path(draw, abstract_model(cfg)[1].to_pure_dict())


def random_tokens(vocab_size: int = LLAMA["vocab_size"], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, (B, T)).astype(np.int64)


def our_logits(cfg: ModelConfig, params, tokens) -> np.ndarray:
    graphdef, _ = abstract_model(cfg)
    return logits_of(graphdef, jax.tree.map(jnp.asarray, params), tokens)


def run_model(model, tokens) -> np.ndarray:
    graphdef, params = nnx.split(model)
    return logits_of(graphdef, params, tokens)


def logits_of(graphdef, params, tokens) -> np.ndarray:
    # Jitted: an eager forward dispatches (and compiles) op by op, many times slower here.
    forward = jax.jit(lambda params, tokens: nnx.merge(graphdef, params)(tokens))
    return np.asarray(forward(params, jnp.asarray(tokens, jnp.int32)))


def load_hf(hf_dir: str) -> transformers.LlamaForCausalLM:
    model, info = transformers.LlamaForCausalLM.from_pretrained(
        hf_dir, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    unused = {key: value for key, value in info.items() if value and key != "error_msgs"}
    assert not unused, f"transformers did not load every tensor: {unused}"
    return model.eval()


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()


def max_diff(a, b) -> float:
    return float(np.max(np.abs(a - b)))


def edit_config(hf_dir: str, **changes) -> None:
    path = os.path.join(hf_dir, files.CONFIG_FILE)
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def edit_tensors(hf_dir: str, edit) -> None:
    path = os.path.join(hf_dir, files.WEIGHTS_FILE)
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The UNUSUAL-sized model exported once: (cfg, params, folder)."""
    cfg = llama_config(**UNUSUAL)
    params = random_params(cfg)
    out = str(tmp_path_factory.mktemp("export") / "hf")
    export_llama(params, cfg, out)
    return cfg, params, out


# ----------------------------------------------------------------------------- export -> transformers

@pytest.mark.parametrize("overrides", [dict(scan_layers=False), dict(scan_layers=True),
                                       dict(scan_layers=True, **UNUSUAL)],
                         ids=["per_layer", "scanned", "unusual_sizes"])
def test_transformers_reproduces_our_logits(tmp_path, overrides):
    cfg = llama_config(**overrides)
    params = random_params(cfg, seed=1)
    export_llama(params, cfg, str(tmp_path / "hf"))
    tokens = random_tokens()
    ours = our_logits(cfg, params, tokens)
    assert np.std(ours) > 1.0  # logits large enough that the tolerance means something
    assert max_diff(hf_logits(load_hf(str(tmp_path / "hf")), tokens), ours) < ATOL


def _interleave_rope_rows(w: np.ndarray, head_dim: int) -> np.ndarray:
    """Rows of each head reordered from halves to interleaved pairs: the permutation a
    GPT-J-style rotation would need, wrong here."""
    order = np.stack([np.arange(head_dim // 2), np.arange(head_dim // 2) + head_dim // 2], 1).ravel()
    return w.reshape(-1, head_dim, w.shape[-1])[:, order].reshape(w.shape)


def _swap(tensors, a, b):
    tensors[a], tensors[b] = tensors[b], tensors[a]


MISTAKES = {
    "norm_as_1_plus_weight": lambda t, k: t.update(
        {n: v + 1.0 for n, v in t.items() if n.endswith("layernorm.weight")}),
    "gate_up_swapped": lambda t, k: [_swap(t, f"model.layers.{i}.mlp.gate_proj.weight",
                                           f"model.layers.{i}.mlp.up_proj.weight") for i in range(2)],
    "rope_interleaved": lambda t, k: t.update(
        {n: _interleave_rope_rows(v, k) for n, v in t.items() if n.endswith(("q_proj.weight", "k_proj.weight"))}),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_the_logit_comparison_catches_a_wrong_mapping(exported, tmp_path, mistake):
    """The comparison above would fail for each classic mapping error, so its passing means
    something (and the RoPE halves convention needs no q/k permutation)."""
    cfg, params, out = exported
    broken = str(tmp_path / "broken")
    export_llama(params, cfg, broken)
    edit_tensors(broken, lambda tensors: MISTAKES[mistake](tensors, cfg.dim_per_head))
    tokens = random_tokens()
    assert max_diff(hf_logits(load_hf(broken), tokens), our_logits(cfg, params, tokens)) > VISIBLE


def test_the_logit_comparison_catches_a_wrong_rope_theta(exported, tmp_path):
    cfg, params, _ = exported
    broken = str(tmp_path / "broken")
    export_llama(params, cfg, broken)
    edit_config(broken, rope_theta=10_000.0, rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    tokens = random_tokens()
    assert max_diff(hf_logits(load_hf(broken), tokens), our_logits(cfg, params, tokens)) > VISIBLE


def test_config_json_carries_the_sizes_and_the_vocabulary_ids(exported, tmp_path):
    from lm.data.vocab import SyntheticVocabulary

    cfg, params, out = exported
    with open(os.path.join(out, files.CONFIG_FILE)) as f:
        config = json.load(f)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["head_dim"], config["num_key_value_heads"], config["intermediate_size"]) == (24, 2, 96)
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == 500.0
    assert config["tie_word_embeddings"] is False and config["bos_token_id"] is None
    assert sorted(os.listdir(out)) == [files.CONFIG_FILE, files.WEIGHTS_FILE]

    with_vocab = str(tmp_path / "with_vocab")
    export_llama(params, cfg, with_vocab, vocab=SyntheticVocabulary(cfg.vocab_size))
    with open(os.path.join(with_vocab, files.CONFIG_FILE)) as f:
        config = json.load(f)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 1, 0)
    assert os.path.exists(os.path.join(with_vocab, "lm_vocabulary.json"))


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("scan_layers", [False, True])
def test_export_then_import_is_bit_exact(tmp_path, scan_layers):
    cfg = llama_config(scan_layers=scan_layers, **UNUSUAL)
    params = random_params(cfg, seed=2)
    export_llama(params, cfg, str(tmp_path / "hf"))
    imported_cfg, imported = import_llama(str(tmp_path / "hf"), scan_layers=scan_layers)
    assert jax.tree.structure(imported) == jax.tree.structure(params)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, imported, params)))
    assert mapped_fields(imported_cfg) == mapped_fields(cfg)
    assert imported_cfg.scan_layers == scan_layers

    _, restacked = import_llama(str(tmp_path / "hf"), scan_layers=not scan_layers)
    stacked, per_layer = (params, restacked) if scan_layers else (restacked, params)
    for i in range(cfg.num_layers):
        assert all(jax.tree.leaves(jax.tree.map(lambda s, p: np.array_equal(s[i], p), stacked["blocks"],
                                                per_layer["blocks"][i])))


def test_a_pipelined_stack_exports_like_the_scanned_one(tmp_path):
    """Pipeline stages hold layer l = stage * layers_per_stage + j at [stage, j]: the scanned
    stack [layers, ...] reshaped, which must export to the very same tensors."""
    scanned = llama_config(num_layers=4, scan_layers=True)
    pipelined = dataclasses.replace(scanned, scan_layers=False, pipeline_stages=2)
    params = random_params(scanned, seed=3)
    staged = {**params, "blocks": jax.tree.map(lambda w: w.reshape(2, 2, *w.shape[1:]), params["blocks"])}
    shapes = jax.tree.map(np.shape, abstract_model(pipelined)[1].to_pure_dict())
    assert jax.tree.map(np.shape, staged) == shapes  # the layout the pipelined model really has
    export_llama(params, scanned, str(tmp_path / "scanned"))
    export_llama(staged, pipelined, str(tmp_path / "pipelined"))
    a, b = (load_file(str(tmp_path / name / files.WEIGHTS_FILE)) for name in ("scanned", "pipelined"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[name], b[name]) for name in a)


# ----------------------------------------------------------------------------- transformers -> import

def test_a_checkpoint_saved_by_transformers_imports_with_its_logits(tmp_path):
    """Written by transformers itself (sharded, float32), so import is checked against the
    reference implementation, not against our own export."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=53, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-3, rope_theta=300.0,
        max_position_embeddings=128, initializer_range=0.2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.add_(0.3 * torch.randn_like(weight))
    model.save_pretrained(str(tmp_path), max_shard_size="100KB")
    assert os.path.exists(tmp_path / files.WEIGHTS_INDEX_FILE)

    tokens = random_tokens(config.vocab_size, seed=4)
    theirs = hf_logits(model, tokens)
    assert np.std(theirs) > 0.5
    for scan_layers in (False, True):
        ours = run_model(load_llama_model(str(tmp_path), scan_layers=scan_layers), tokens)
        assert max_diff(ours, theirs) < ATOL
    cfg, _ = import_llama(str(tmp_path))
    assert (cfg.kv_heads, cfg.dim_per_head, cfg.ff_dim, cfg.rope_theta, cfg.norm_eps, cfg.max_len) == (
        2, 16, 80, 300.0, 1e-3, 128)

    # Released checkpoints are mostly bfloat16: imported as float32, which holds them exactly.
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    _, params = import_llama(str(tmp_path / "bf16"))
    assert params["embed"]["embedding"].dtype == np.float32
    bf16_embedding = model.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(params["embed"]["embedding"], bf16_embedding)


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("field, value", [("norm", "layernorm"), ("mlp", "gelu"), ("tie_embeddings", True),
                                          ("positions", "learned"), ("block", "parallel"),
                                          ("arch", "prefix_decoder"), ("use_bias", True)])
def test_a_non_llama_config_is_refused_before_anything_is_written(tmp_path, field, value):
    cfg = llama_config(**{field: value})
    with pytest.raises(ConfigError, match=rf"config\.model\.{field}={value!r}: .*set config\.model\.{field}="):
        export_llama(random_params(cfg), cfg, str(tmp_path / "hf"))
    assert os.listdir(tmp_path) == []


def test_every_non_llama_field_is_named_at_once(tmp_path):
    cfg = llama_config(norm="layernorm", mlp="gelu")
    with pytest.raises(ConfigError, match="norm='layernorm'.*uses rmsnorm.*mlp='gelu'"):
        export_llama({}, cfg, str(tmp_path / "hf"))


@pytest.mark.parametrize("changes, field", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}), "rope_type"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(model_type="mistral"), "model_type"),
    (dict(num_hidden_layers=None), "num_hidden_layers is missing"),
])
def test_an_unsupported_config_json_is_refused_naming_the_field(exported, tmp_path, changes, field):
    _, params, _ = exported
    cfg = llama_config(**UNUSUAL)
    out = str(tmp_path / "hf")
    export_llama(params, cfg, out)
    edit_config(out, **changes)
    with pytest.raises(HFCheckpointError, match=rf"config\.json: .*{field}"):
        import_llama(out)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "missing tensor.*model.layers.1.mlp.up_proj.weight"),
    (lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros((96, 64), np.float32)}),
     "unexpected tensor.*model.layers.2.mlp.up_proj.weight"),
    (lambda t: t.update({"lm_head.weight": np.zeros((66, 64), np.float32)}),
     r"lm_head.weight has shape \(66, 64\), expected \(67, 64\)"),
])
def test_a_tensor_that_does_not_fit_is_named(exported, tmp_path, edit, message):
    cfg, params, _ = exported
    out = str(tmp_path / "hf")
    export_llama(params, cfg, out)
    edit_tensors(out, edit)
    with pytest.raises(HFCheckpointError, match=message):
        import_llama(out)


def test_export_never_leaves_a_half_written_folder(exported, tmp_path, monkeypatch):
    cfg, params, _ = exported
    out = tmp_path / "hf"

    def crash(path, tensors):
        open(path, "w").close()
        raise OSError("disk full")
    monkeypatch.setattr(files, "write_tensors", crash)
    with pytest.raises(OSError, match="disk full"):
        export_llama(params, cfg, str(out))
    assert os.listdir(tmp_path) == []  # neither the destination nor the temporary folder

    monkeypatch.undo()
    export_llama(params, cfg, str(out))
    with pytest.raises(FileExistsError, match="not empty"):
        export_llama(params, cfg, str(out))
    export_llama(random_params(cfg, seed=5), cfg, str(out), overwrite=True)
    assert not np.array_equal(import_llama(str(out))[1]["embed"]["embedding"], params["embed"]["embedding"])
    assert os.listdir(tmp_path) == ["hf"]


# ----------------------------------------------------------------------------- a trained run

def test_a_trained_workdir_exports_from_the_command_line(tmp_path, one_device, capsys):
    from lm.train.loop import pretrain
    from lm.train.run import Run

    llama = {key: LLAMA[key] for key in ("positions", "norm", "mlp", "block", "use_bias", "tie_embeddings")}
    config = small_config(steps=2, scan_layers=True, d_ff=48, **llama)
    workdir, out = str(tmp_path / "run"), str(tmp_path / "hf")
    pretrain(config, workdir, devices=one_device)
    capsys.readouterr()

    assert hf.main(["export", f"--workdir={workdir}", f"--out={out}", "--step=2"]) == 0
    assert f"exported step 2 of {workdir}" in capsys.readouterr().out
    run = Run(config, workdir, one_device)
    trained = jax.device_get(run.restore()[0])
    cfg, imported = import_llama(out, scan_layers=True)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, imported, trained)))
    tokens = random_tokens(cfg.vocab_size, seed=6)[:, :16]
    assert max_diff(hf_logits(load_hf(out), tokens), our_logits(run.exp.model, trained, tokens)) < ATOL
    with open(os.path.join(out, files.CONFIG_FILE)) as f:
        assert json.load(f)["eos_token_id"] == 1

    assert hf.main(["inspect", f"--hf_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "num_kv_heads = 2" in printed and "norm = 'rmsnorm'" in printed and "parameters" in printed
    assert hf.main(["export", f"--workdir={workdir}", f"--out={out}"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_a_non_llama_workdir_is_refused_before_restoring(tmp_path):
    """The refusal comes from the workdir's config.json alone: no checkpoint is needed."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = small_config(norm="layernorm").to_dict()
    config["model"] = dataclasses.asdict(ModelConfig.from_config(config["model"]))
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="config.model.norm='layernorm'"):
        export_workdir(str(workdir), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_the_module_runs_as_a_script(exported):
    _, _, out = exported
    result = run_module("lm.interop.hf", "inspect", f"--hf_dir={out}", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "head_dim = 24" in result.stdout and "rope_theta = 500.0" in result.stdout
    missing = run_module("lm.interop.hf", "inspect", "--hf_dir=/nonexistent", timeout=120)
    assert missing.returncode == 2 and "error: /nonexistent is not a folder" in missing.stderr
