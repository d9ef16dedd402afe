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
            with open(os.path.join(tmp_dir, VOCAB_FILE), "w") as f:
                f.write(vocab.to_json())

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


def export_workdir(workdir: str, out_dir: str, step: Optional[int] = None, overwrite: bool = False) -> int:
    """Exports the checkpoint at ``step`` (default: the latest) of a training workdir, restored
    on one local device from the workdir's config.json as ModelScorer.from_workdir does, with the
    run's vocabulary. Returns the exported step."""
    import jax

    from lm.configlib import from_section
    from lm.data import pipeline as data_lib
    from lm.eval.scoring import saved_config
    from lm.train.loop import Trainer, restore_checkpoint

    config = saved_config(workdir)
    # Refused before the (slower) restore; the trainer re-derives the same config below.
    check_llama(from_section(ModelConfig, config.model, "config.model"))
    files.check_destination(out_dir, overwrite)
    trainer = Trainer(config, workdir, devices=[jax.local_devices()[0]])
    state, step = restore_checkpoint(trainer, workdir, step)
    export_llama(jax.device_get(state.params), trainer.exp.model, out_dir,
                 data_lib.vocabulary(trainer.exp.data), overwrite)
    return step
