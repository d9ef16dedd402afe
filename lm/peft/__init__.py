"""Parameter-efficient fine-tuning built into the model: LoRA, Houlsby adapters, prefix tuning,
prompt tuning, full fine-tuning (docs/peft.md).

  config    PeftConfig (``ModelConfig.peft``)
  lora      LoRA factors on dense layers; merge_lora / unmerge_lora
  adapters  bottleneck adapters after attention and after the MLP
  prefix    per-layer learned key/value prefixes (optionally from an MLP)
  prompt    the soft prompt and its initialization from vocabulary or text embeddings
  model     attaches the method's parameters to a freshly built model (lm.models.build)
  stacking  new parameters stacked like the layers they join (scanned or pipelined stacks)
  params    trainable mask, counts, split/join, adapter files, base checkpoints
  counts    trainable-parameter counts by formula from the configuration
  optim     ``frozen``: an optimizer that updates and keeps state for trainable leaves only

Only the configuration is imported here: lm.models imports it, and the rest imports lm.models.
"""
from lm.peft.config import METHODS, PeftConfig

__all__ = ["METHODS", "PeftConfig"]
