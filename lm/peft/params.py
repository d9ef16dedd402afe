"""The PEFT view of a parameter tree (the pure dict of ``nnx.split(model)[1].to_pure_dict()``).

Naming convention: a parameter belongs to the fine-tuning method when a component of its path is
``lora`` (LoRA factors: ``.../attention/query/lora/a``) or ``adapter``
(``blocks/0/mlp/wo/adapter/up``), starts with ``adapter_`` (version 1 adapter files:
``blocks/0/adapter_mlp/up``) or ``prefix_`` (``prefix_tuning/key``), or is ``soft_prompt``. No
base parameter has such a component, so the trainable set is a function of paths alone.

What trains:
  none   every parameter (ordinary pretraining: nothing is frozen)
  full   every parameter (full fine-tuning from a base checkpoint)
  others the method's parameters only; the base weights are frozen

Adapter files (``save_adapter``) hold the trainable parameters only, with the PeftConfig (and the
model configuration they were trained with) as JSON, in one .npz-format file written atomically.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx

from lm.configlib import ConfigError
from lm.fileio import write_atomically
from lm.models.config import ModelConfig
from lm.peft.config import PeftConfig
from lm.peft.counts import base_parameter_count, closed_form_trainable_count  # noqa: F401 (API)
from lm.peft.lora import merge_lora, unmerge_lora  # noqa: F401 (API)

PEFT_COMPONENT = re.compile(r"lora|soft_prompt|adapter(_\w+)?|prefix_\w+")
ADAPTER_FORMAT = "lm.peft.adapter"
# Version 2: bottleneck adapters live in the output projection they follow. Version 1 files
# (read too) named them by block: <block>/adapter_attention/..., <block>/adapter_mlp/...
ADAPTER_VERSION = 2
READABLE_VERSIONS = (1, 2)
VERSION_1_ADAPTERS = {"adapter_attention": ("attention", "out", "adapter"),
                      "adapter_mlp": ("mlp", "wo", "adapter")}
_METADATA = "metadata"
NO_PEFT = PeftConfig()

Path = tuple  # dict keys from the root: str names, int list indices


def _key_name(key) -> Any:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return getattr(key, attribute)
    return key


def path_string(path: Path) -> str:
    return "/".join(str(part) for part in path)


def is_peft_path(path: Path) -> bool:
    """Whether the parameter at ``path`` belongs to a PEFT method (see the module docstring)."""
    return any(PEFT_COMPONENT.fullmatch(str(part)) for part in path)


def leaves_with_paths(tree) -> Iterator[tuple[Path, Any]]:
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        yield tuple(_key_name(k) for k in keys), leaf


def trainable_mask(params, peft: PeftConfig):
    """Same-structure pytree of Python bools: True where the parameter trains. 'none' and 'full'
    train everything; other methods their own parameters, which the tree must contain."""
    if peft.trains_everything:
        return jax.tree.map(lambda _: True, params)
    mask = jax.tree_util.tree_map_with_path(
        lambda keys, _: is_peft_path(tuple(_key_name(k) for k in keys)), params)
    if not any(jax.tree.leaves(mask)):
        raise ValueError(f"config.peft.method={peft.method!r}, but the parameter tree has none of "
                         f"its parameters: build the model with lm.peft.build(model_cfg, peft)")
    return mask


def count_trainable(params, peft: PeftConfig) -> int:
    mask = trainable_mask(params, peft)
    return sum(math.prod(np.shape(leaf)) for leaf, train in
               zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if train)


# ----------------------------------------------------------------------------- split and join


def split_adapter(params: dict, mask: dict) -> tuple[dict, dict]:
    """(base, adapter): the frozen leaves and the trainable ones, each a nested dict holding only
    its own leaves (no empty branches)."""
    base, adapter = {}, {}
    for key, value in params.items():
        if isinstance(value, dict):
            frozen_part, trained_part = split_adapter(value, mask[key])
            if frozen_part:
                base[key] = frozen_part
            if trained_part:
                adapter[key] = trained_part
        elif mask[key]:
            adapter[key] = value
        else:
            base[key] = value
    return base, adapter


def _merge_trees(base: dict, adapter: dict, path: Path = ()) -> dict:
    out = dict(base)
    for key, value in adapter.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge_trees(out[key], value, (*path, key))
        else:
            raise ValueError(f"parameter {path_string((*path, key))} is in both the base and the "
                             f"adapter tree")
    return out


def join_adapter(base: dict, adapter: dict, model_cfg: ModelConfig | None = None,
                 peft: PeftConfig = NO_PEFT) -> dict:
    """The full tree from ``split_adapter``'s two parts. Given the configuration of the model
    the tree is for (and ``peft``, the adapter's method), every parameter is checked against the
    model's shapes: a missing, unexpected or wrongly shaped one is an error naming it."""
    params = _merge_trees(base, adapter)
    if model_cfg is not None:
        check_shapes(params, model_cfg, peft)
    return params


def expected_shapes(model_cfg: ModelConfig, peft: PeftConfig = NO_PEFT) -> dict[Path, tuple[int, ...]]:
    """Path -> shape of every parameter of the model with ``peft``, computed without allocating it."""
    from lm.peft.model import build

    abstract = nnx.split(nnx.eval_shape(lambda: build(model_cfg, peft)))[1].to_pure_dict()
    return {path: tuple(leaf.shape) for path, leaf in leaves_with_paths(abstract)}


def check_shapes(params: dict, model_cfg: ModelConfig, peft: PeftConfig = NO_PEFT) -> None:
    """Refuses ``params`` unless they are exactly the parameters of ``model_cfg``'s model with
    ``peft``."""
    want = expected_shapes(model_cfg, peft)
    have = {path: tuple(np.shape(leaf)) for path, leaf in leaves_with_paths(params)}
    problems = []
    for path in sorted(set(want) | set(have), key=path_string):
        kind = "adapter" if is_peft_path(path) else "base"
        if path not in have:
            problems.append(f"{kind} parameter {path_string(path)} {want[path]} is missing")
        elif path not in want:
            problems.append(f"{kind} parameter {path_string(path)} {have[path]} is not a "
                            f"parameter of this model")
        elif have[path] != want[path]:
            problems.append(f"{kind} parameter {path_string(path)} has shape {have[path]}, the "
                            f"model needs {want[path]}")
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ValueError(f"the parameters do not fit the model (config.model with "
                         f"config.peft.method={peft.method!r}): {shown}")


def with_base(params: dict, base: dict, model_cfg: ModelConfig, peft: PeftConfig) -> dict:
    """``params`` (a freshly built tree with ``peft``) with its frozen part replaced by ``base``,
    the parameters of the pretrained model without PEFT (e.g. its restored checkpoint)."""
    _, adapter = split_adapter(params, trainable_mask(params, peft))
    return join_adapter(base, adapter, model_cfg, peft)


# ----------------------------------------------------------------------------- adapter files


def _storable(array: np.ndarray) -> np.ndarray:
    """NumPy cannot name bfloat16 and friends in a file: those go as raw unsigned integers."""
    return array if array.dtype.isbuiltin == 1 else array.view(f"uint{8 * array.dtype.itemsize}")


def save_adapter(path: str, params: dict, model_cfg: ModelConfig, peft: PeftConfig) -> None:
    """Writes the trainable parameters of ``params`` and ``peft`` to the file ``path``
    (atomically: a reader sees the old file or the new one, never part of one)."""
    if peft.method == "none":
        raise ValueError("config.peft.method='none' has no adapter: every parameter belongs to "
                         "the model (save a checkpoint instead)")
    _, adapter = split_adapter(params, trainable_mask(params, peft))
    arrays, entries = {}, []
    for index, (leaf_path, leaf) in enumerate(leaves_with_paths(adapter)):
        array = np.asarray(jax.device_get(leaf))
        arrays[f"p{index}"] = _storable(array)
        entries.append({"path": list(leaf_path), "dtype": array.dtype.name, "shape": list(array.shape)})
    metadata = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION,
                "peft": dataclasses.asdict(peft), "model": dataclasses.asdict(model_cfg),
                "parameters": entries}
    buffer = io.BytesIO()
    np.savez(buffer, **{_METADATA: np.asarray(json.dumps(metadata))}, **arrays)
    write_atomically(path, buffer.getvalue())


def load_adapter(path: str) -> tuple[dict, PeftConfig]:
    """(adapter parameters as NumPy arrays at their paths, the PeftConfig they were trained with).
    Put them on a base tree with ``join_adapter(base, adapter, model_cfg)``, which checks shapes."""
    with np.load(path, allow_pickle=False) as data:
        if _METADATA not in data.files:
            raise ValueError(f"{path} is not an adapter file written by lm.peft.params.save_adapter")
        metadata = json.loads(str(data[_METADATA]))
        version = metadata.get("version")
        if metadata.get("format") != ADAPTER_FORMAT or version not in READABLE_VERSIONS:
            raise ValueError(f"{path}: unknown adapter format {metadata.get('format')!r} version "
                             f"{metadata.get('version')!r}")
        adapter: dict = {}
        for index, entry in enumerate(metadata["parameters"]):
            array = data[f"p{index}"]
            dtype = np.dtype(jax.numpy.dtype(entry["dtype"]))
            leaf_path = tuple(entry["path"])
            leaf_path = leaf_path if version > 1 else _version_1_path(leaf_path)
            _insert(adapter, leaf_path, array.view(dtype).reshape(entry["shape"]))
    return adapter, _saved_peft(metadata["peft"], path)


def _saved_peft(section: dict, path: str) -> PeftConfig:
    try:
        return PeftConfig(**section)
    except ConfigError as e:
        raise ConfigError(f"{path}: the saved PEFT settings are invalid: {e}") from None


def _version_1_path(path: Path) -> Path:
    """A version 1 file's parameter path as the model names it now."""
    out: tuple = ()
    for part in path:
        out += VERSION_1_ADAPTERS.get(part, (part,))
    return out


def _insert(tree: dict, path: Path, leaf) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = leaf


def load_adapter_onto(path: str, base: dict, base_cfg: ModelConfig) -> tuple[dict, PeftConfig]:
    """The base model's parameters with the adapter file's on them, and the file's PeftConfig
    (build the model with ``lm.peft.build(base_cfg, peft)``): what serving a fine-tuned model
    needs."""
    adapter, peft = load_adapter(path)
    peft.check_model(base_cfg)
    return join_adapter(base, adapter, base_cfg, peft), peft
