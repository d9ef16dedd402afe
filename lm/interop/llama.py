"""Export an lm Llama-architecture model to a Hugging Face LlamaForCausalLM folder, and import one.

  export_llama(params, model_cfg, out_dir, vocab=None)   -> out_dir (config.json, model.safetensors)
  export_workdir(workdir, out_dir, step=None)            the checkpoint of a training run
  import_llama(hf_dir, scan_layers=False)                -> (ModelConfig, params)
  load_llama_model(hf_dir, scan_layers=False)            -> the built lm model

The folder loads with ``transformers.LlamaForCausalLM.from_pretrained(out_dir)`` and computes
the same logits (docs/interop.md). Tensors are exported in float32 whatever param_dtype was.
"""
from __future__ import annotations

import os
from typing import Optional

from lm.fileio import write_atomically
from lm.interop import files
from lm.interop.llama_config import check_llama, hf_config, model_config_from_hf
from lm.interop.llama_params import from_hf_tensors, to_hf_tensors
from lm.models.config import ModelConfig

VOCAB_FILE = "lm_vocabulary.json"  # the lm vocabulary (vocabulary_from_json), when one is given


def export_llama(params, model_cfg: ModelConfig, out_dir: str, vocab=None,
                 overwrite: bool = False) -> str:
    """Writes ``params`` of the Llama-architecture ``model_cfg`` as a Hugging Face folder.

    A config without an exact Llama counterpart is refused (ConfigError naming the field and
    the fix) before anything is written; the folder appears complete or not at all."""
    check_llama(model_cfg)
    files.check_destination(out_dir, overwrite)
    tensors = to_hf_tensors(params, model_cfg)
    config = hf_config(model_cfg, vocab)

    def write(tmp_dir: str) -> None:
        files.write_json(os.path.join(tmp_dir, files.CONFIG_FILE), config)
        files.write_tensors(os.path.join(tmp_dir, files.WEIGHTS_FILE), tensors)
        if vocab is not None and hasattr(vocab, "to_json"):
            # Scratch in a folder that is renamed into place whole; the atomic writer is used
            # anyway so that every file the project writes is written one way.
            write_atomically(os.path.join(tmp_dir, VOCAB_FILE), vocab.to_json())

    files.write_folder_atomically(out_dir, write, overwrite)
    return out_dir


def import_llama(hf_dir: str, scan_layers: bool = False) -> tuple[ModelConfig, dict]:
    """The ModelConfig and params (per-layer, or stacked when ``scan_layers``) of a Hugging Face
    LlamaForCausalLM folder; anything the mapping cannot express exactly is refused
    (HFCheckpointError naming the config.json field or the tensor)."""
    cfg = model_config_from_hf(files.read_config(hf_dir), scan_layers,
                               os.path.join(hf_dir, files.CONFIG_FILE))
    return cfg, from_hf_tensors(files.read_tensors(hf_dir), cfg, hf_dir)


def load_llama_model(hf_dir: str, scan_layers: bool = False):
    """The lm model (``lm.models.build``'s Decoder) holding the weights of ``hf_dir``."""
    import jax
    from flax import nnx

    from lm.train.state import abstract_model

    cfg, params = import_llama(hf_dir, scan_layers)
    graphdef, _ = abstract_model(cfg)  # shapes only: no initial values to throw away
    return nnx.merge(graphdef, jax.tree.map(jax.numpy.asarray, params))


def export_workdir(workdir: str, out_dir: str, step: Optional[int] = None, overwrite: bool = False,
                   devices=None) -> int:
    """Exports the checkpoint at ``step`` (default: the latest) of a training workdir, with the
    run's vocabulary. The parameters are restored sharded on the run's mesh (``Run.from_workdir``)
    and each array is gathered to the host only as it is converted. Returns the exported step."""
    from lm.train.run import Run

    run = Run.from_workdir(workdir, devices=devices)
    check_llama(run.exp.model)  # refused before the (slower) restore
    files.check_destination(out_dir, overwrite)
    params, step = run.restore(step)
    export_llama(params, run.exp.model, out_dir, run.vocab, overwrite)
    return step
