"""A float64 NumPy decoder forward pass, written from the equations, as the models' test oracle.

It shares no code with ``lm.models``: it reads the parameters as a pure dict (the structure of
``nnx.split(model)[1].to_pure_dict()``) and a ModelConfig, and returns logits [B, T, V].

Every parameter in the dict must be read exactly once per layer that owns it; a parameter the
reference never reads (a new weight the JAX model uses and the reference does not know) fails
the comparison instead of passing silently.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


class _Params:
    """A view of the nested parameter dict that records which leaves were read."""

    def __init__(self, tree: Mapping[Any, Any], path: tuple = (), used: Optional[set] = None):
        self._tree, self._path = tree, path
        self._used = set() if used is None else used

    def __contains__(self, key) -> bool:
        return key in self._tree

    def __getitem__(self, key):
        value = self._tree[key]
        if isinstance(value, Mapping):
            return _Params(value, self._path + (key,), self._used)
        self._used.add(self._path + (key,))
        return np.asarray(value, np.float64)

    def get(self, key):
        return self[key] if key in self._tree else None

    def leaves(self) -> set:
        out = set()

        def walk(tree, path):
            for key, value in tree.items():
                if isinstance(value, Mapping):
                    walk(value, path + (key,))
                else:
                    out.add(path + (key,))
        walk(self._tree, self._path)
        return out


def _layer_params(blocks: Mapping[Any, Any], i: int, stacked: bool) -> Mapping[Any, Any]:
    """Block i's parameters: a dict entry (list of layers) or slice i of the stacked arrays."""
    if not stacked:
        return blocks[i]

    def take(tree):
        return {k: take(v) if isinstance(v, Mapping) else np.asarray(v)[i] for k, v in tree.items()}
    return take(blocks)


# ----------------------------------------------------------------------------- elementwise


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def relu(x):
    return np.maximum(x, 0.0)


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


# ----------------------------------------------------------------------------- layers


def norm(p: _Params, x, kind: str, eps: float):
    """LayerNorm: (x - mean) / sqrt(var + eps) * scale + bias. RMSNorm: x / sqrt(mean(x^2) + eps) * scale."""
    if kind == "layernorm":
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps)
    elif kind == "rmsnorm":
        y = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
    else:
        raise ValueError(kind)
    y = y * p["scale"]
    bias = p.get("bias")
    return y if bias is None else y + bias


def dense(p: _Params, x, n_in: int = 1):
    """x @ W (+ b), contracting the last n_in axes of x with the first n_in axes of W."""
    w = p["kernel"]
    y = np.tensordot(x, w, axes=(list(range(x.ndim - n_in, x.ndim)), list(range(n_in))))
    bias = p.get("bias")
    return y if bias is None else y + bias


def sinusoidal_table(positions_bt, d_model: int):
    """PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i), w_i = 10000^(-2i/d_model)."""
    table = np.zeros(positions_bt.shape + (d_model,))
    i = np.arange(d_model // 2)
    w = 10000.0 ** (-2.0 * i / d_model)
    angle = positions_bt[..., None].astype(np.float64) * w
    table[..., 0:2 * len(i):2] = np.sin(angle)
    table[..., 1:2 * len(i):2] = np.cos(angle)
    return table


def rope(x_bthk, positions_bt, theta: float):
    """Rotate pairs (x[i], x[i + K/2]) by angle p * theta^(-2i/K) ('rotate half' layout)."""
    k = x_bthk.shape[-1]
    half = k // 2
    w = theta ** (-2.0 * np.arange(half) / k)
    angle = positions_bt[:, :, None, None].astype(np.float64) * w     # [B, T, 1, K/2]
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = x_bthk[..., :half], x_bthk[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def alibi_slopes(num_heads: int):
    """2^(-8 (h + 1) / H) for a power-of-two number of heads H (Press et al.)."""
    if num_heads & (num_heads - 1):
        raise NotImplementedError("the reference implements ALiBi for power-of-two head counts")
    return np.array([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])


def attention(p: _Params, x_btd, positions_bt, segment_ids_bt, cfg, allowed=None, memory=None):
    """Self-attention (causal, or as ``allowed`` [B, T, T] says), or cross-attention to
    ``memory`` [B, S, D] under ``allowed`` [B, T, S] with no position terms."""
    b, t, _ = x_btd.shape
    h, g = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
    head_dim = cfg.head_dim or cfg.d_model // cfg.num_heads
    source = x_btd if memory is None else memory
    q = dense(p["query"], x_btd)                               # [B, T, H, K]
    k = dense(p["key"], source)                                # [B, S, G, K]
    v = dense(p["value"], source)                              # [B, S, G, K]
    assert q.shape == (b, t, h, head_dim) and k.shape == v.shape == (b, source.shape[1], g, head_dim)
    if memory is not None:
        assert allowed is not None
    elif cfg.positions == "rope":
        q = rope(q, positions_bt, cfg.rope_theta)
        k = rope(k, positions_bt, cfg.rope_theta)
    group = h // g
    kv_head = np.arange(h) // group                            # query head h reads kv head h // (H/G)
    k_bthk, v_bthk = k[:, :, kv_head], v[:, :, kv_head]
    scores = np.einsum("bihk,bjhk->bhij", q, k_bthk) / math.sqrt(head_dim)
    if cfg.positions == "alibi" and memory is None:
        i, j = positions_bt[:, :, None], positions_bt[:, None, :]
        slopes = alibi_slopes(h)
        scores = scores - slopes[None, :, None, None] * np.abs(i - j)[:, None].astype(np.float64)
    if allowed is None:
        allowed = np.tril(np.ones((t, t), bool))[None]         # by index in the sequence
        if segment_ids_bt is not None:
            allowed = allowed & (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])
    scores = np.where(allowed[:, None], scores, -np.inf)
    probs = softmax(scores, axis=-1)
    out = np.einsum("bhij,bjhk->bihk", probs, v_bthk)
    return dense(p["out"], out, n_in=2)


def mlp(p: _Params, x, kind: str):
    act = {"gelu": gelu, "relu": relu, "swiglu": silu, "geglu": gelu}[kind]
    hidden = act(dense(p["wi"], x))
    if kind in ("swiglu", "geglu"):
        hidden = hidden * dense(p["wi_up"], x)
    return dense(p["wo"], hidden)


def block(p: _Params, x, positions_bt, segment_ids_bt, cfg, allowed=None):
    if cfg.block == "parallel":
        h = norm(p["attn_norm"], x, cfg.norm, cfg.norm_eps)
        return (x + attention(p["attention"], h, positions_bt, segment_ids_bt, cfg, allowed)
                + mlp(p["mlp"], h, cfg.mlp))
    x = x + attention(p["attention"], norm(p["attn_norm"], x, cfg.norm, cfg.norm_eps),
                      positions_bt, segment_ids_bt, cfg, allowed)
    return x + mlp(p["mlp"], norm(p["mlp_norm"], x, cfg.norm, cfg.norm_eps), cfg.mlp)


def decoder_block(p: _Params, x, positions_bt, segment_ids_bt, memory, cross_allowed, cfg):
    """Causal self-attention, cross-attention to the encoder output, MLP."""
    def n(name, y):
        return norm(p[name], y, cfg.norm, cfg.norm_eps)
    if cfg.block == "parallel":
        h = n("self_norm", x)
        return (x + attention(p["self_attention"], h, positions_bt, segment_ids_bt, cfg)
                + attention(p["cross_attention"], h, None, None, cfg, cross_allowed, memory)
                + mlp(p["mlp"], h, cfg.mlp))
    x = x + attention(p["self_attention"], n("self_norm", x), positions_bt, segment_ids_bt, cfg)
    x = x + attention(p["cross_attention"], n("cross_norm", x), None, None, cfg, cross_allowed, memory)
    return x + mlp(p["mlp"], n("mlp_norm", x), cfg.mlp)


# ----------------------------------------------------------------------------- decoder


def forward(params: Mapping[str, Any], cfg, tokens_bt, positions_bt=None, segment_ids_bt=None,
            allowed=None):
    """Logits [B, T, V] in float64 for ``tokens_bt`` [B, T]; ``allowed`` [B, T, T] replaces the
    causal mask (an encoder, a prefix decoder)."""
    tokens_bt = np.asarray(tokens_bt)
    b, t = tokens_bt.shape
    positions_bt = (np.broadcast_to(np.arange(t), (b, t)) if positions_bt is None
                    else np.asarray(positions_bt))
    segment_ids_bt = None if segment_ids_bt is None else np.asarray(segment_ids_bt)
    top = _Params(params)

    embedding = top["embed"]["embedding"]                      # [V, D]
    x = embedding[tokens_bt]
    if cfg.positions == "learned":
        x = x + top["position_embedding"][positions_bt]
    elif cfg.positions == "sinusoidal":                        # Vaswani et al.: embeddings * sqrt(d)
        x = x * math.sqrt(cfg.d_model) + sinusoidal_table(positions_bt, cfg.d_model)

    stacked = not any(isinstance(key, int) for key in params["blocks"])
    used_blocks = set()
    for i in range(cfg.num_layers):
        layer = _Params(_layer_params(params["blocks"], i, stacked))
        x = block(layer, x, positions_bt, segment_ids_bt, cfg, allowed)
        unread = layer.leaves() - layer._used
        if unread:
            raise AssertionError(f"block {i}: parameters the reference does not use: {sorted(unread)}")
        used_blocks.add(i)
    if len(used_blocks) != cfg.num_layers or (not stacked and set(params["blocks"]) != used_blocks):
        raise AssertionError(f"blocks {sorted(params['blocks'])} vs num_layers={cfg.num_layers}")

    x = norm(top["final_norm"], x, cfg.norm, cfg.norm_eps)
    if cfg.tie_embeddings:
        logits = x @ embedding.T
    else:
        logits = dense(top["head"], x)

    unread = {path for path in top.leaves() if path[0] != "blocks"} - top._used
    if unread:
        raise AssertionError(f"parameters the reference does not use: {sorted(unread)}")
    return logits


# ----------------------------------------------------------------------------- encoder-decoder


def _embed(top: _Params, cfg, tokens, positions):
    x = top["embed"]["embedding"][tokens]
    if cfg.positions == "learned":
        x = x + top["position_embedding"][positions]
    elif cfg.positions == "sinusoidal":
        x = x * math.sqrt(cfg.d_model) + sinusoidal_table(positions, cfg.d_model)
    return x


def _run_layers(blocks, count: int, fn, x):
    stacked = not any(isinstance(key, int) for key in blocks)
    for i in range(count):
        layer = _Params(_layer_params(blocks, i, stacked))
        x = fn(layer, x)
        unread = layer.leaves() - layer._used
        if unread:
            raise AssertionError(f"block {i}: parameters the reference does not use: {sorted(unread)}")
    return x


def encoder_decoder_forward(params, cfg, enc_tokens, dec_tokens, enc_segments, dec_segments):
    """Logits [B, T, V] of a T5-style encoder-decoder: the encoder attends within its segments,
    the decoder causally within its segments and across to encoder positions of its segment."""
    enc_tokens, dec_tokens = np.asarray(enc_tokens), np.asarray(dec_tokens)
    enc_segments, dec_segments = np.asarray(enc_segments), np.asarray(dec_segments)
    (b, s), t = enc_tokens.shape, dec_tokens.shape[1]
    enc_pos = np.broadcast_to(np.arange(s), (b, s))
    dec_pos = np.broadcast_to(np.arange(t), (b, t))
    top = _Params(params)
    enc_allowed = enc_segments[:, :, None] == enc_segments[:, None, :]
    memory = _run_layers(params["encoder_blocks"], cfg.num_encoder_layers or cfg.num_layers,
                         lambda p, x: block(p, x, enc_pos, None, cfg, enc_allowed),
                         _embed(top, cfg, enc_tokens, enc_pos))
    memory = norm(top["encoder_norm"], memory, cfg.norm, cfg.norm_eps)
    cross_allowed = dec_segments[:, :, None] == enc_segments[:, None, :]
    x = _run_layers(params["decoder_blocks"], cfg.num_layers,
                    lambda p, x: decoder_block(p, x, dec_pos, dec_segments, memory, cross_allowed, cfg),
                    _embed(top, cfg, dec_tokens, dec_pos))
    x = norm(top["final_norm"], x, cfg.norm, cfg.norm_eps)
    logits = x @ top["embed"]["embedding"].T if cfg.tie_embeddings else dense(top["head"], x)
    unread = {p for p in top.leaves() if p[0] not in ("encoder_blocks", "decoder_blocks")} - top._used
    if unread:
        raise AssertionError(f"parameters the reference does not use: {sorted(unread)}")
    return logits
