"""Model presets: ``config.model`` sections. Shapes from the GPT-3 and PaLM papers."""
from __future__ import annotations

import ml_collections

from lm.models.config import ModelConfig


def _model(**fields) -> ml_collections.ConfigDict:
    """Every field of ModelConfig at its default, then ``fields`` (an unknown name is refused)."""
    return ModelConfig.defaults(**fields)


def tiny_char() -> ml_collections.ConfigDict:
    """nanoGPT's CPU 'baby GPT': 4 layers, 4 heads, d_model 128, context 64 (~0.8M parameters)."""
    return _model(num_layers=4, num_heads=4, d_model=128, max_len=64, positions="learned",
                  norm="layernorm", mlp="gelu", block="serial", tie_embeddings=True, use_bias=False)


def _gpt3(num_layers, d_model, num_heads) -> ml_collections.ConfigDict:
    """GPT-3 (Brown et al. 2020, Table 2.1): learned positions, LayerNorm, GELU, biases, 2048 context."""
    return _model(vocab_size=50257, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
                  max_len=2048, positions="learned", norm="layernorm", mlp="gelu", use_bias=True,
                  tie_embeddings=True, scan_layers=True)


def gpt3_125m():
    return _gpt3(12, 768, 12)


def gpt3_350m():
    return _gpt3(24, 1024, 16)


def gpt3_1_3b():
    # Table 2.1 lists 24 heads of 128, which does not tile d_model 2048; 16 x 128 = 2048 gives
    # the published 1.3B parameters (24 x 128 attention width would give 1.5B).
    return _gpt3(24, 2048, 16)


def _palm(num_layers, d_model, num_heads) -> ml_collections.ConfigDict:
    """PaLM (Chowdhery et al. 2022): SwiGLU, parallel block, multi-query, RoPE, shared embeddings,
    no biases, d_head 256, d_ff = 4 d_model, 256k vocabulary, 2048 context."""
    return _model(vocab_size=256_000, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
                  num_kv_heads=1, head_dim=256, d_ff=4 * d_model, max_len=2048, positions="rope",
                  norm="layernorm", mlp="swiglu", block="parallel", tie_embeddings=True,
                  use_bias=False, scan_layers=True, remat="full", dtype="bfloat16")


def palm_8b():
    return _palm(32, 4096, 16)


def palm_62b():
    return _palm(64, 8192, 32)


def palm_540b():
    return _palm(118, 18432, 48)


PRESETS = {"tiny_char": tiny_char, "gpt3_125m": gpt3_125m, "gpt3_350m": gpt3_350m,
           "gpt3_1_3b": gpt3_1_3b, "palm_8b": palm_8b, "palm_62b": palm_62b,
           "palm_540b": palm_540b}


def get(name: str) -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
