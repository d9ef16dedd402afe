"""ModelConfig <-> Hugging Face LlamaConfig (config.json).

A Llama-architecture ``lm`` model is a causal decoder with RMSNorm, RoPE, a SwiGLU MLP, serial
pre-norm blocks, no biases and an output head separate from the embedding. Everything else in
LlamaConfig follows from sizes that both sides name: d_model = hidden_size, d_ff =
intermediate_size, num_kv_heads = num_key_value_heads (grouped-query attention), head_dim,
norm_eps = rms_norm_eps, rope_theta, max_len = max_position_embeddings.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from lm.configlib import ConfigError
from lm.interop.errors import HFCheckpointError
from lm.models.config import ModelConfig

# field -> (the value Llama needs, why). Checked in this order; every mismatch is reported.
LLAMA_FIELDS = {
    "arch": ("decoder", "Hugging Face's LlamaForCausalLM is a causal decoder-only model"),
    "norm": ("rmsnorm", "the Llama architecture uses rmsnorm"),
    "positions": ("rope", "the Llama architecture rotates queries and keys with RoPE and has no "
                          "position table"),
    "mlp": ("swiglu", "the Llama architecture's MLP is SwiGLU (gate, up and down projections)"),
    "block": ("serial", "the Llama architecture adds attention, then the MLP, each after its own "
                        "norm (serial pre-norm block)"),
    "use_bias": (False, "the Llama architecture has no biases (attention_bias, mlp_bias and the "
                        "output head are bias-free)"),
    "tie_embeddings": (False, "the exported Llama layout has an output head (lm_head) separate from "
                              "the embedding"),
}
DEFAULT_ROPE_THETA = 10_000.0  # LlamaConfig's when config.json names none
DEFAULT_RMS_NORM_EPS = 1e-6    # LlamaConfig's default
DEFAULT_MAX_POSITIONS = 2048   # LlamaConfig's default


def check_llama(cfg: ModelConfig) -> None:
    """Refuses a ModelConfig that has no exact Llama counterpart, naming each field and the fix."""
    problems = [f"config.model.{field}={getattr(cfg, field)!r}: {why}; set config.model.{field}={needed!r}"
                for field, (needed, why) in LLAMA_FIELDS.items() if getattr(cfg, field) != needed]
    if problems:
        raise ConfigError("not a Llama-architecture model, so it cannot be exported as "
                          "LlamaForCausalLM: " + "; ".join(problems))
    if cfg.vocab_size <= 0:
        raise ConfigError("config.model.vocab_size must be set (the trained run's value) to export")


def hf_config(cfg: ModelConfig, vocab=None) -> dict[str, Any]:
    """The config.json of ``cfg``. RoPE's base is written both as the ``rope_parameters`` dict of
    transformers 5 and as the top-level ``rope_theta`` that earlier versions read."""
    eos = getattr(vocab, "eos_id", None)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_dim, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.dim_per_head, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": float(cfg.rope_theta), "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "tie_word_embeddings": False, "initializer_range": cfg.init_std,
        "torch_dtype": "float32", "dtype": "float32", "use_cache": True,
        # lm starts every document after an EOS (there is no separate BOS), so EOS is also BOS.
        "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": getattr(vocab, "pad_id", None),
    }


def model_config_from_hf(hf: dict, scan_layers: bool = False, where: str = "config.json") -> ModelConfig:
    """The Llama-architecture ModelConfig of a LlamaForCausalLM config.json (validated)."""
    _check_hf_architecture(hf, where)
    heads = _int_field(hf, "num_attention_heads", where)
    hidden = _int_field(hf, "hidden_size", where)
    fields = dict(
        arch="decoder", norm="rmsnorm", positions="rope", mlp="swiglu", block="serial",
        use_bias=False, tie_embeddings=False, scan_layers=scan_layers,
        vocab_size=_int_field(hf, "vocab_size", where), d_model=hidden,
        num_layers=_int_field(hf, "num_hidden_layers", where), num_heads=heads,
        num_kv_heads=_int_field(hf, "num_key_value_heads", where, default=heads),
        head_dim=_int_field(hf, "head_dim", where, default=hidden // heads),
        d_ff=_int_field(hf, "intermediate_size", where),
        max_len=_int_field(hf, "max_position_embeddings", where, default=DEFAULT_MAX_POSITIONS),
        norm_eps=_float_field(hf, "rms_norm_eps", where, DEFAULT_RMS_NORM_EPS),
        rope_theta=_rope_theta(hf, where),
        init_std=_float_field(hf, "initializer_range", where, ModelConfig.init_std))
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise HFCheckpointError(f"{where} describes a model that lm cannot build: {e}") from e


def mapped_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The ModelConfig values that config.json carries (derived sizes resolved), for comparing
    an exported model with its re-import."""
    keys = ("arch", "vocab_size", "num_layers", "d_model", "num_heads", "max_len", "positions",
            "rope_theta", "norm", "norm_eps", "mlp", "block", "tie_embeddings", "use_bias")
    values = {key: getattr(cfg, key) for key in keys}
    values.update(kv_heads=cfg.kv_heads, dim_per_head=cfg.dim_per_head, ff_dim=cfg.ff_dim)
    return values


# field -> (the value a Llama checkpoint must have, the LlamaConfig default when absent, why)
_HF_REQUIREMENTS = {
    "model_type": ("llama", None, "only Llama checkpoints are imported"),
    "hidden_act": ("silu", "silu", "lm's SwiGLU MLP gates with silu"),
    "attention_bias": (False, False, "lm's Llama-architecture attention has no biases"),
    "mlp_bias": (False, False, "lm's Llama-architecture MLP has no biases"),
    "tie_word_embeddings": (False, False, "the Llama mapping keeps lm_head separate from the "
                                          "embedding (config.model.tie_embeddings=False)"),
}


def _check_hf_architecture(hf: dict, where: str) -> None:
    for field, (needed, default, why) in _HF_REQUIREMENTS.items():
        value = hf.get(field, default)
        if value != needed:
            raise HFCheckpointError(f"{where}: {field}={value!r} is not supported: {why} (needs {needed!r})")
    architectures = hf.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in architectures:
        raise HFCheckpointError(f"{where}: architectures={architectures!r}: only LlamaForCausalLM "
                                f"(a language-model head over LlamaModel) is imported")
    scaling = hf.get("rope_scaling")
    if scaling and not (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default"):
        raise HFCheckpointError(f"{where}: rope_scaling={hf['rope_scaling']!r} is not supported: lm's "
                                f"RoPE has no frequency scaling (needs null)")


def _rope_theta(hf: dict, where: str) -> float:
    """RoPE's base from ``rope_parameters`` (transformers 5) or ``rope_theta`` (earlier); only
    the unscaled 'default' rotary embedding over the whole head has an lm counterpart."""
    params = hf.get("rope_parameters")
    if not params:
        return _float_field(hf, "rope_theta", where, DEFAULT_ROPE_THETA)
    if not isinstance(params, dict) or "rope_theta" not in params:
        raise HFCheckpointError(f"{where}: rope_parameters={params!r} is not one dict with a rope_theta")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise HFCheckpointError(f"{where}: rope_parameters.rope_type={rope_type!r} is not supported: lm's "
                                f"RoPE has no frequency scaling (needs 'default')")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFCheckpointError(f"{where}: rope_parameters.partial_rotary_factor="
                                f"{params['partial_rotary_factor']!r} is not supported: lm rotates the "
                                f"whole head (needs 1.0)")
    return _float_field(params, "rope_theta", f"{where}: rope_parameters", DEFAULT_ROPE_THETA)


def _int_field(hf: dict, field: str, where: str, default: Optional[int] = None) -> int:
    value = hf.get(field)
    if value is None:
        if default is None:
            raise HFCheckpointError(f"{where}: {field} is missing; a LlamaConfig needs it")
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HFCheckpointError(f"{where}: {field}={value!r} must be a positive integer")
    return value


def _float_field(hf: dict, field: str, where: str, default: float) -> float:
    value = hf.get(field)
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise HFCheckpointError(f"{where}: {field}={value!r} must be a positive number")
    return float(value)


def describe(cfg: ModelConfig) -> str:
    """One ``field = value`` line per ModelConfig field, for ``inspect``."""
    return "\n".join(f"{f.name} = {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))
