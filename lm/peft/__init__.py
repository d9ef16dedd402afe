"""Parameter-efficient fine-tuning attached to a base model from outside: LoRA, Houlsby
adapters, prefix tuning, prompt tuning, full fine-tuning (docs/peft.md).

  config    PeftConfig (the experiment's ``peft`` section, beside ``config.model``)
  model     ``build(model_cfg, peft, seed)``: the base model with the method attached
  lora      LoRA factors on dense layers; merge_lora / unmerge_lora
  adapters  bottleneck adapters after attention and after the MLP
  prefix    per-layer learned key/value prefixes (optionally from an MLP)
  prompt    the soft prompt and its initialization from vocabulary or text embeddings
  slots     a decoder whose key/value cache starts with learned slots (prefix and prompt tuning)
  stacking  new parameters stacked like the layers they join (scanned or pipelined stacks)
  params    trainable mask, counts, split/join, adapter files, base checkpoints
  counts    trainable-parameter counts by formula from the configuration
  optim     ``frozen``: an optimizer that updates and keeps state for trainable leaves only

lm.models never imports this package; this package imports lm.models.
"""
from lm.peft.config import METHODS, PeftConfig
from lm.peft.model import build

__all__ = ["METHODS", "PeftConfig", "build"]
