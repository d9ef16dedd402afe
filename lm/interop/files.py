"""Reading and writing Hugging Face checkpoint folders: config.json plus safetensors.

Export writes into a fresh temporary folder beside the destination and renames it into place
only once every file is complete, so a crash or an error never leaves a half-written export
where a loader would find it. Tensors go through ``safetensors.numpy``: neither direction needs
torch.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable

import numpy as np

from lm.fileio import new_folder_mode, write_atomically
from lm.interop.errors import HFCheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


def check_destination(out_dir: str, overwrite: bool) -> None:
    """Refuses, before anything is computed or written, to replace a non-empty folder unasked."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; choose a new folder or pass overwrite=True "
                              f"(--overwrite) to replace it")


def write_folder_atomically(out_dir: str, write: Callable[[str], None], overwrite: bool = False) -> None:
    """Calls ``write(tmp_dir)`` then moves ``tmp_dir`` to ``out_dir`` in one rename.

    The temporary folder sits in the destination's parent so that the rename stays on one file
    system; on any error it is removed and ``out_dir`` is left as it was."""
    out_dir = os.path.abspath(out_dir)
    check_destination(out_dir, overwrite)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        os.chmod(tmp_dir, new_folder_mode())  # mkdtemp's 0700 would stay with the export
        write(tmp_dir)
        _replace_folder(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _replace_folder(new_dir: str, out_dir: str) -> None:
    """``new_dir`` becomes ``out_dir``; an existing ``out_dir`` is moved aside first and only
    deleted once the new folder is in place."""
    if not os.path.exists(out_dir):
        os.rename(new_dir, out_dir)
        return
    old_dir = new_dir + ".old"
    os.rename(out_dir, old_dir)
    os.rename(new_dir, out_dir)
    shutil.rmtree(old_dir, ignore_errors=True)


def write_json(path: str, value: dict) -> None:
    write_atomically(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_tensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """One safetensors file; the 'pt' format tag is what transformers checks before loading."""
    from safetensors.numpy import save_file
    save_file({name: np.ascontiguousarray(t) for name, t in tensors.items()}, path,
              metadata={"format": "pt"})


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, CONFIG_FILE)
    if not os.path.isdir(hf_dir):
        raise HFCheckpointError(f"{hf_dir} is not a folder: give a Hugging Face checkpoint folder "
                                f"(config.json and model.safetensors)")
    if not os.path.exists(path):
        raise HFCheckpointError(f"{path} not found: a Hugging Face checkpoint folder has a config.json")
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise HFCheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise HFCheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of the folder: ``model.safetensors``, or the shards that
    ``model.safetensors.index.json`` lists. PyTorch ``.bin`` checkpoints are not read (they
    need torch and unpickling); convert them with transformers' ``save_pretrained`` first."""
    from safetensors.numpy import load_file
    single, index = (os.path.join(hf_dir, name) for name in (WEIGHTS_FILE, WEIGHTS_INDEX_FILE))
    if os.path.exists(single):
        return load_file(single)
    if os.path.exists(index):
        tensors = {}
        for shard in _shard_files(index):
            tensors.update(load_file(os.path.join(hf_dir, shard)))
        return tensors
    raise HFCheckpointError(f"{hf_dir} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}; only "
                            f"safetensors checkpoints are imported (re-save a .bin checkpoint with "
                            f"transformers' save_pretrained)")


def _shard_files(index_path: str) -> list[str]:
    with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise HFCheckpointError(f"{index_path} has no 'weight_map' of tensor names to shard files")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.exists(os.path.join(os.path.dirname(index_path), s))]
    if missing:
        raise HFCheckpointError(f"{index_path} lists shard files that are missing: {', '.join(missing)}")
    return shards
