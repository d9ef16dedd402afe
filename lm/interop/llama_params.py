"""lm parameters <-> Hugging Face Llama tensors.

Both sides compute the same function, so the mapping is only a change of layout:

  lm (pure dict of nnx.split(model))          HF LlamaForCausalLM           layout change
  embed/embedding [V, D]                      model.embed_tokens.weight     none
  blocks/attention/query/kernel [D, H, K]     self_attn.q_proj.weight       [D, H*K] -> [H*K, D]
  blocks/attention/key|value/kernel [D, G, K] self_attn.k_proj|v_proj       [D, G*K] -> [G*K, D]
  blocks/attention/out/kernel [H, K, D]       self_attn.o_proj.weight       [H*K, D] -> [D, H*K]
  blocks/mlp/wi/kernel [D, F]                 mlp.gate_proj.weight          transpose
  blocks/mlp/wi_up/kernel [D, F]              mlp.up_proj.weight            transpose
  blocks/mlp/wo/kernel [F, D]                 mlp.down_proj.weight          transpose
  blocks/attn_norm/scale [D]                  input_layernorm.weight        none
  blocks/mlp_norm/scale [D]                   post_attention_layernorm      none
  final_norm/scale [D]                        model.norm.weight             none
  head/kernel [D, V]                          lm_head.weight                transpose

No row permutation is needed for RoPE: lm's ``apply_rope`` already rotates halves (HF's
``rotate_half``) with the same frequencies, and flattening [H, K] puts head h's feature k at row
h*K + k, which is how HF splits q_proj's output into heads. Grouped-query heads agree too: query
head h reads key/value head h // (H / G) on both sides.

Blocks are a dict {layer index: block} (per-layer), stacked on a leading layers axis
(scan_layers), or stacked [stages, layers] / [repeats, stages, layers] (pipeline_stages > 1,
where layer l sits at the row-major index l of the leading axes).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lm.interop.errors import HFCheckpointError
from lm.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One HF tensor: its name (``{i}`` is the layer), the lm path, and how the layout changes:
    'copy', 'linear' (kernel [in, out] <-> weight [out, in]), 'heads_in' (kernel [D, N, K] <->
    weight [N*K, D]) or 'heads_out' (kernel [H, K, D] <-> weight [D, H*K])."""
    hf_name: str
    path: tuple[str, ...]
    layout: str


LAYER_RULES = (
    TensorRule("model.layers.{i}.self_attn.q_proj.weight", ("attention", "query", "kernel"), "heads_in"),
    TensorRule("model.layers.{i}.self_attn.k_proj.weight", ("attention", "key", "kernel"), "heads_in"),
    TensorRule("model.layers.{i}.self_attn.v_proj.weight", ("attention", "value", "kernel"), "heads_in"),
    TensorRule("model.layers.{i}.self_attn.o_proj.weight", ("attention", "out", "kernel"), "heads_out"),
    TensorRule("model.layers.{i}.mlp.gate_proj.weight", ("mlp", "wi", "kernel"), "linear"),
    TensorRule("model.layers.{i}.mlp.up_proj.weight", ("mlp", "wi_up", "kernel"), "linear"),
    TensorRule("model.layers.{i}.mlp.down_proj.weight", ("mlp", "wo", "kernel"), "linear"),
    TensorRule("model.layers.{i}.input_layernorm.weight", ("attn_norm", "scale"), "copy"),
    TensorRule("model.layers.{i}.post_attention_layernorm.weight", ("mlp_norm", "scale"), "copy"),
)
MODEL_RULES = (
    TensorRule("model.embed_tokens.weight", ("embed", "embedding"), "copy"),
    TensorRule("model.norm.weight", ("final_norm", "scale"), "copy"),
    TensorRule("lm_head.weight", ("head", "kernel"), "linear"),
)
# Buffers that some older checkpoints saved; they are recomputed from the config, never read.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a LlamaForCausalLM of ``cfg`` has, by name."""
    d, v, f = cfg.d_model, cfg.vocab_size, cfg.ff_dim
    q, kv = cfg.num_heads * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    per_layer = {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q),
                 "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f),
                 "input_layernorm": (d,), "post_attention_layernorm": (d,)}
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg.num_layers):
        for rule in LAYER_RULES:
            name = rule.hf_name.format(i=i)
            shapes[name] = per_layer[name.split(".")[-2]]
    return shapes


# ----------------------------------------------------------------------------- lm -> HF

def to_hf_tensors(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF tensors (float32, torch Linear layout [out, in]) of lm ``params``; a shape that does
    not fit ``cfg`` is refused naming the tensor."""
    params = params.to_pure_dict() if hasattr(params, "to_pure_dict") else params
    tensors = {rule.hf_name: _to_hf(rule.layout, _leaf(params, rule.path)) for rule in MODEL_RULES}
    for i, layer in enumerate(_layers(_leaf(params, ("blocks",)), cfg)):
        for rule in LAYER_RULES:
            tensors[rule.hf_name.format(i=i)] = _to_hf(rule.layout, _leaf(layer, rule.path, f"blocks/{i}"))
    _check_shapes(tensors, hf_shapes(cfg), "the parameters do not fit the model config", ValueError)
    return tensors


def _to_hf(layout: str, value) -> np.ndarray:
    w = np.asarray(value, dtype=np.float32)
    if layout == "copy":
        return w
    if layout == "heads_in":
        return w.reshape(w.shape[0], -1).T
    if layout == "heads_out":
        return w.reshape(-1, w.shape[-1]).T
    return w.T


def _layers(blocks, cfg: ModelConfig) -> list[dict]:
    """The blocks as a list of per-layer trees of numpy arrays, whatever their stacking."""
    if not (cfg.scan_layers or cfg.pipelined):
        return [_layer_entry(blocks, i) for i in range(cfg.num_layers)]
    lead = 1 if not cfg.pipelined else (3 if cfg.pipeline_repeats > 1 else 2)
    flat = _map_leaves(blocks, lambda w: np.asarray(w).reshape(-1, *np.shape(w)[lead:]))
    counts = {len(w) for w in _leaves(flat)}
    if counts != {cfg.num_layers}:
        raise ValueError(f"the stacked blocks hold {sorted(counts)} layers, but config.model.num_layers="
                         f"{cfg.num_layers}")
    return [_map_leaves(flat, lambda w, i=i: w[i]) for i in range(cfg.num_layers)]


def _layer_entry(blocks: dict, i: int):
    for key in (i, str(i)):
        if key in blocks:
            return blocks[key]
    raise ValueError(f"params have no blocks/{i} (the blocks hold {len(blocks)} entries): "
                     f"config.model.num_layers or scan_layers does not match the parameters")


# ----------------------------------------------------------------------------- HF -> lm

def from_hf_tensors(tensors: dict[str, np.ndarray], cfg: ModelConfig, where: str = "checkpoint") -> dict:
    """lm params (a pure dict that ``nnx.merge`` accepts with the graphdef of
    ``lm.models.build(cfg)``) of HF ``tensors``; missing, unexpected or misshapen tensors are
    refused by name."""
    tensors = {name: t for name, t in tensors.items() if not name.endswith(IGNORED_SUFFIXES)}
    _check_names(tensors, hf_shapes(cfg), where)
    _check_shapes(tensors, hf_shapes(cfg), where)
    params: dict = {}
    for rule in MODEL_RULES:
        _set_leaf(params, rule.path, _from_hf(rule.layout, tensors[rule.hf_name], cfg))
    layers = []
    for i in range(cfg.num_layers):
        layer: dict = {}
        for rule in LAYER_RULES:
            _set_leaf(layer, rule.path, _from_hf(rule.layout, tensors[rule.hf_name.format(i=i)], cfg))
        layers.append(layer)
    params["blocks"] = (_stack(layers) if cfg.scan_layers else dict(enumerate(layers)))
    return params


def _from_hf(layout: str, value: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    # float32 holds every float16 and bfloat16 value exactly.
    w = np.asarray(value).astype(np.float32)
    if layout == "copy":
        return w
    if layout == "heads_in":
        return np.ascontiguousarray(w.T.reshape(cfg.d_model, -1, cfg.dim_per_head))
    if layout == "heads_out":
        return np.ascontiguousarray(w.T.reshape(-1, cfg.dim_per_head, cfg.d_model))
    return np.ascontiguousarray(w.T)


def _stack(layers: list[dict]) -> dict:
    first = layers[0]
    return {key: (_stack([layer[key] for layer in layers]) if isinstance(first[key], dict)
                  else np.stack([layer[key] for layer in layers]))
            for key in first}


def _check_names(tensors: dict, expected: dict, where: str) -> None:
    missing = [name for name in expected if name not in tensors]
    extra = sorted(name for name in tensors if name not in expected)
    if missing:
        raise HFCheckpointError(f"{where}: missing tensor(s) {', '.join(missing[:8])}"
                                f"{' ...' if len(missing) > 8 else ''} that config.json's sizes call for")
    if extra:
        raise HFCheckpointError(f"{where}: unexpected tensor(s) {', '.join(extra[:8])}"
                                f"{' ...' if len(extra) > 8 else ''}: they have no place in a "
                                f"LlamaForCausalLM of config.json's sizes")


def _check_shapes(tensors: dict, expected: dict, where: str, error=HFCheckpointError) -> None:
    for name, shape in expected.items():
        got = tuple(np.shape(tensors[name]))
        if got != shape:
            raise error(f"{where}: tensor {name} has shape {got}, expected {shape}")


# ----------------------------------------------------------------------------- trees

def _leaf(tree, path: tuple[str, ...], prefix: str = ""):
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            where = "/".join(p for p in (prefix, *path) if p)
            raise ValueError(f"params have no {where}: not the parameter tree of a "
                             f"Llama-architecture lm model")
        node = node[key]
    return node


def _set_leaf(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _leaves(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    return [tree]


def _map_leaves(tree, fn):
    if isinstance(tree, dict):
        return {key: _map_leaves(value, fn) for key, value in tree.items()}
    return fn(tree)
