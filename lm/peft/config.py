"""PeftConfig: which parameter-efficient fine-tuning method a run applies, and its sizes.

It sits beside the ``ModelConfig`` (the experiment's ``peft`` section), not inside it: the base
model knows nothing of fine-tuning. Every method but 'none' and 'full' adds parameters, which
``lm.peft.build`` attaches to the base model in the same parameter tree as the base weights, so
the trainer, checkpoints and sharding see one tree.
"""
from __future__ import annotations

import dataclasses
import re

from lm.configlib import ConfigError, Section, at_least, fraction, one_of, option, positive, rule

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


def _is_regex(text) -> bool:
    try:
        re.compile(text)
        return True
    except re.error:
        return False


def _is_prompt_init(text) -> bool:
    return text == "vocab" or (text.startswith(TEXT_INIT) and len(text) > len(TEXT_INIT))


@dataclasses.dataclass(frozen=True)
class PeftConfig(Section):
    where = "config.peft"
    method: str = option("none", "none | full | lora | adapter | prefix | prompt (above)",
                         one_of(*METHODS))
    lora_rank: int = option(8, "r: A is [in, r], B is [r, out]", at_least(1))
    lora_alpha: float = option(16.0, "the update is scaled by alpha / r", positive())
    lora_dropout: float = option(0.0, "dropout on the LoRA branch's input (training only)",
                                 fraction(low_open=False))
    lora_targets: str = option(DEFAULT_LORA_TARGETS, "regex over dense kernel paths (above)",
                               rule(_is_regex, "is not a regular expression", "(unclosed"))
    adapter_dim: int = option(16, "bottleneck width of each Houlsby adapter", at_least(1))
    prefix_length: int = option(8, "learned key/value slots per layer", at_least(1))
    prefix_hidden: int = option(0, "> 0: prefixes from an MLP of this width (Li & Liang)",
                                at_least(0, "0: learned directly"))
    prompt_length: int = option(8, "soft-prompt embeddings prepended to every input",
                                at_least(1))
    prompt_init: str = option("vocab", "vocab (random token embeddings) | text:<text> (its "
                              "embeddings)", rule(_is_prompt_init, f"must be 'vocab' or "
                                                  f"'{TEXT_INIT}<some text>'", "text:"))

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
