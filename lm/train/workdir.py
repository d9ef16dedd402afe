"""The workdir: the resolved config next to the checkpoints, and the check that they match."""
from __future__ import annotations

import dataclasses
import json
import os

from lm.fileio import write_atomically
from lm.train.checkpoint import CheckpointError
from lm.train.experiment import Experiment


# Fields that change parameter shapes or meaning; others (remat, attention kernel, dtype,
# dropout) may differ between the run that wrote a checkpoint and the run that resumes it.
PARAMETER_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads",
                     "head_dim", "d_ff", "max_len", "positions", "norm", "mlp", "block",
                     "tie_embeddings", "use_bias", "scan_layers", "param_dtype",
                     "pipeline_stages", "pipeline_repeats")


def check_workdir(workdir: str, exp: Experiment) -> None:
    """Refuses to touch a workdir whose checkpoints belong to a different model (base fields or
    PEFT method, which adds parameters)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return
    with open(path) as f:
        saved = json.load(f)
    model = saved.get("model", {})
    now = dataclasses.asdict(exp.model)
    changed = [f"model.{name}: saved {model.get(name)!r}, now {now[name]!r}"
               for name in PARAMETER_FIELDS if name in model and model[name] != now[name]]
    saved_peft = saved.get("peft") or model.get("peft")  # nested: saved before PEFT moved out
    if saved_peft is not None and _full_peft(saved_peft) != dataclasses.asdict(exp.peft):
        changed.append(f"peft: saved {saved_peft!r}, now {dataclasses.asdict(exp.peft)!r}")
    if changed:
        raise CheckpointError(
            f"{workdir} holds checkpoints of a different model ({'; '.join(changed)}). Use a new "
            f"--workdir or the saved configuration; nothing in {workdir} was changed.")


def _full_peft(section: dict) -> dict:
    """A saved peft section with its defaults filled in (a config may give only some fields)."""
    from lm.peft.config import PeftConfig
    return dataclasses.asdict(PeftConfig(**section))


def save_config(workdir: str, config, exp: Experiment) -> None:
    resolved = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    resolved["model"] = dataclasses.asdict(exp.model)  # with the derived vocab_size
    resolved["peft"] = dataclasses.asdict(exp.peft)
    write_atomically(os.path.join(workdir, "config.json"),
                     json.dumps(resolved, indent=2, sort_keys=True, default=str))
