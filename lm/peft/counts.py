"""Trainable-parameter counts from the configuration alone (formulas, not the built tree), so that
tests can hold the built model to them and a run can report its size before building anything.

Formulas for the decoder-family stack (arch decoder, prefix_decoder, encoder), L layers, width
D, H query heads and G key/value heads of K features, MLP width F, vocabulary V:

  base       V D (embedding) [+ max_len D learned positions] [+ D V untied head (+ V bias)]
             + L (attention D H K + 2 D G K + H K D, MLP (1 or 2 gated) D F + F D, norms)
             + final norm; with biases the dense layers add their output sizes and LayerNorms D
  lora       r (fan_in + fan_out) for each kernel matching lora_targets (times L when stacked)
  adapter    L * 2 adapters * (D A + A + A D + D)
  prefix     2 L P G K; with an MLP of width h: P D + D h + h + h 2 L G K + 2 L G K
  prompt     P D
  none, full every parameter (the base count)
"""
from __future__ import annotations

from lm.models.config import ModelConfig
from lm.peft.config import PEFT_ARCHS, PeftConfig
from lm.peft.lora import targeted


def _norm_size(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.use_bias and cfg.norm == "layernorm" else 1)


def dense_kernels(cfg: ModelConfig) -> list[tuple[str, int, int, int]]:
    """(kernel path, fan_in, fan_out, copies) of every dense layer of the decoder-family model,
    with the paths the built parameter tree has ('blocks/0/...' per layer, or 'blocks/...' once
    for L stacked layers)."""
    d, h, g, k, f = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.ff_dim
    stacked = cfg.scan_layers or cfg.pipelined
    layers = [("blocks", cfg.num_layers)] if stacked else [(f"blocks/{i}", 1) for i in range(cfg.num_layers)]
    per_layer = [("attention/query", d, h * k), ("attention/key", d, g * k),
                 ("attention/value", d, g * k), ("attention/out", h * k, d), ("mlp/wi", d, f)]
    if cfg.gated_mlp:
        per_layer.append(("mlp/wi_up", d, f))
    per_layer.append(("mlp/wo", f, d))
    kernels = [(f"{layer}/{name}/kernel", fan_in, fan_out, copies)
               for layer, copies in layers for name, fan_in, fan_out in per_layer]
    if not cfg.tie_embeddings:
        kernels.append(("head/kernel", d, cfg.vocab_size, 1))
    return sorted(kernels)


def base_parameter_count(cfg: ModelConfig) -> int:
    """Parameters of the model without PEFT."""
    _check_arch(cfg)
    bias = cfg.use_bias
    dense = sum(copies * (fan_in * fan_out + (fan_out if bias else 0))
                for _, fan_in, fan_out, copies in dense_kernels(cfg))
    norms_per_layer = 1 if cfg.block == "parallel" else 2
    norms = (cfg.num_layers * norms_per_layer + 1) * _norm_size(cfg)
    embed = cfg.vocab_size * cfg.d_model
    positions = cfg.max_len * cfg.d_model if cfg.positions == "learned" else 0
    return dense + norms + embed + positions


def closed_form_trainable_count(cfg: ModelConfig, peft: PeftConfig) -> int:
    """Trainable parameters of ``cfg``'s model with ``peft``, by the formulas above."""
    _check_arch(cfg)
    d, g, k, layers = cfg.d_model, cfg.kv_heads, cfg.dim_per_head, cfg.num_layers
    if peft.trains_everything:
        return base_parameter_count(cfg)
    if peft.method == "lora":
        kernels = dense_kernels(cfg)
        chosen = set(targeted(peft.lora_targets, [path for path, *_ in kernels]))
        return sum(copies * peft.lora_rank * (fan_in + fan_out)
                   for path, fan_in, fan_out, copies in kernels if path in chosen)
    if peft.method == "adapter":
        a = peft.adapter_dim
        return layers * 2 * (d * a + a + a * d + d)
    if peft.method == "prefix":
        p, hidden = peft.prefix_length, peft.prefix_hidden
        if not hidden:
            return 2 * layers * p * g * k
        pair = 2 * layers * g * k
        return p * d + d * hidden + hidden + hidden * pair + pair
    return peft.prompt_length * d  # prompt


def _check_arch(cfg: ModelConfig) -> None:
    if cfg.arch not in PEFT_ARCHS:
        raise ValueError(f"closed-form counts cover config.model.arch in {', '.join(PEFT_ARCHS)}, "
                         f"not {cfg.arch!r}")
