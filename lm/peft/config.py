"""PeftConfig: which parameter-efficient fine-tuning method a run applies, and its sizes.

It sits beside the ``ModelConfig`` (the experiment's ``peft`` section), not inside it: the base
model knows nothing of fine-tuning. Every method but 'none' and 'full' adds parameters, which
``lm.peft.build`` attaches to the base model in the same parameter tree as the base weights, so
the trainer, checkpoints and sharding see one tree.
"""
from __future__ import annotations

import dataclasses
import re

from lm.configlib import ConfigError, from_section

# none: no PEFT (pretraining: every parameter trains); full: full fine-tuning (every parameter
# trains, started from a base checkpoint); lora / adapter / prefix / prompt: only the method's
# own parameters train, the base weights are frozen.
METHODS = ("none", "full", "lora", "adapter", "prefix", "prompt")
# The methods that add parameters to the model (and need a decoder-family stack).
ADDING_METHODS = ("lora", "adapter", "prefix", "prompt")
# Architectures whose stack (lm.models.transformer.Decoder) the adding methods know.
PEFT_ARCHS = ("decoder", "prefix_decoder", "encoder")

# Matched (re.fullmatch) against the path of every dense kernel, '/'-joined, e.g.
# 'blocks/0/attention/query/kernel' (a list of layers) or 'blocks/attention/query/kernel'
# (scanned layers). Other kernels: attention/{key,value,out}, mlp/{wi,wi_up,wo}, head.
DEFAULT_LORA_TARGETS = r".*attention/(query|key|value|out)/kernel"
TEXT_INIT = "text:"


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    method: str = "none"          # none | full | lora | adapter | prefix | prompt
    lora_rank: int = 8            # r: A is [in, r], B is [r, out]
    lora_alpha: float = 16.0      # the update is scaled by alpha / r
    lora_dropout: float = 0.0     # dropout on the LoRA branch's input (training only)
    lora_targets: str = DEFAULT_LORA_TARGETS  # regex over dense kernel paths (see above)
    adapter_dim: int = 16         # bottleneck width of each Houlsby adapter
    prefix_length: int = 8        # learned key/value slots per layer
    prefix_hidden: int = 0        # > 0: prefixes from an MLP of this width (Li & Liang); 0: direct
    prompt_length: int = 8        # soft-prompt embeddings prepended to every input
    prompt_init: str = "vocab"    # vocab (random token embeddings) | text:<text> (its embeddings)

    @classmethod
    def from_config(cls, section, where: str = "config.peft") -> "PeftConfig":
        return from_section(cls, section, where).validated(where)

    @property
    def trains_everything(self) -> bool:
        """'none' and 'full': no parameter is frozen."""
        return self.method in ("none", "full")

    @property
    def adds_parameters(self) -> bool:
        return self.method in ADDING_METHODS

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    @property
    def prompt_text(self) -> str:
        """The text of ``prompt_init='text:<text>'`` ('' for 'vocab')."""
        return self.prompt_init[len(TEXT_INIT):] if self.prompt_init.startswith(TEXT_INIT) else ""

    def validated(self, where: str = "config.peft") -> "PeftConfig":
        if self.method not in METHODS:
            raise ConfigError(f"{where}.method={self.method!r} is not one of {', '.join(METHODS)}")
        for field in ("lora_rank", "adapter_dim", "prefix_length", "prompt_length"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{where}.{field} must be >= 1, got {getattr(self, field)}")
        if self.prefix_hidden < 0:
            raise ConfigError(f"{where}.prefix_hidden must be >= 0 (0: no reparameterization), "
                              f"got {self.prefix_hidden}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"{where}.lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"{where}.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        try:
            re.compile(self.lora_targets)
        except re.error as e:
            raise ConfigError(f"{where}.lora_targets={self.lora_targets!r} is not a regular "
                              f"expression: {e}") from None
        if self.prompt_init != "vocab" and not (self.prompt_init.startswith(TEXT_INIT) and self.prompt_text):
            raise ConfigError(f"{where}.prompt_init={self.prompt_init!r}: use 'vocab' or "
                              f"'{TEXT_INIT}<some text>'")
        return self

    def check_model(self, model, where: str = "config.peft") -> None:
        """Refuses a method the model cannot carry (``model`` is the ModelConfig)."""
        if not self.adds_parameters:
            return
        if model.arch not in PEFT_ARCHS:
            raise ConfigError(f"{where}.method={self.method!r} needs config.model.arch in "
                              f"{', '.join(PEFT_ARCHS)}, got {model.arch!r} (use 'full' or 'none')")
        if self.method in ("prefix", "prompt") and model.pipelined:
            raise ConfigError(f"{where}.method={self.method!r} does not run in a pipelined stack "
                              f"(config.model.pipeline_stages={model.pipeline_stages}); use lora or "
                              f"adapter, or no pipeline parallelism")
