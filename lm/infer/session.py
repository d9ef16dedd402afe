"""``config.mode='sample'``: continue prompts with the latest checkpoint of a workdir, once
(``config.sample.prompt``) or as a chat loop over the lines of stdin (``--interactive``).

Characters of a prompt that the vocabulary lacks are encoded as UNK, which the model has rarely
or never seen: each prompt that has some gets a one-line warning on stderr naming them, and is
continued all the same (every vocabulary here has UNK, so the prompt can always be encoded)."""
from __future__ import annotations

import dataclasses
import sys
from typing import Iterable, Optional, TextIO

from lm.configlib import ConfigError, Section, at_least, fraction, one_of, option, positive
from lm.data.vocab import unknown_characters
from lm.infer.decode import DecodeSettings, check_request, generate_text

# How a prompt is wrapped: as typed, as an instruction (lm.instruct's task template), or as one
# user turn of lm.instruct's chat template; the model answers until EOS ends its response.
TEMPLATES = ("", "instruction", "chat")


@dataclasses.dataclass(frozen=True)
class SampleConfig(Section):
    """The ``config.sample`` section: config.mode='sample' continues prompts with the latest
    checkpoint (``--interactive``: each stdin line instead of the prompt)."""
    where = "config.sample"
    prompt: str = option("\n", "text to continue", escapes=True)
    max_new_tokens: int = option(200, "new tokens; prompt + new must fit the context",
                                 at_least(1))
    temperature: float = option(0.8, "0: greedy", at_least(0))
    top_k: int = option(0, "sample from the k most likely tokens", at_least(0, "0: all"))
    top_p: float = option(1.0, "nucleus: the smallest set with this mass",
                          fraction(high_open=False))
    repetition_penalty: float = option(1.0, "CTRL penalty on tokens already present; 1: none",
                                       positive())
    beam_size: int = option(1, "> 1: beam search (deterministic)", at_least(1))
    length_penalty: float = option(0.0, "beam search: GNMT alpha, ((5 + len) / 6) ** alpha")
    stop: str = option("", "stop strings separated by '|', e.g. '\\n\\n'; '' = none",
                       escapes=True)
    stop_at_eos: bool = option(True, "the vocabulary's EOS id ends a continuation")
    seed: int = option(0, "same seed, same continuation")
    template: str = option("", "how each prompt is wrapped: '' (as typed) | instruction | chat",
                           one_of(*TEMPLATES))

    def wrap(self, prompt: str) -> str:
        """The prompt as an instruction-tuned model saw its questions in training."""
        if self.template == "instruction":
            from lm.instruct.instances import INSTRUCTION_TEMPLATE
            return INSTRUCTION_TEMPLATE.format({"instruction": prompt, "input": "", "output": "-"}).prompt
        if self.template == "chat":
            from lm.instruct.chat import chat_prompt
            return chat_prompt([{"role": "user", "content": prompt}])
        return prompt

    def settings(self, eos_id: int) -> DecodeSettings:
        return DecodeSettings(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p, repetition_penalty=self.repetition_penalty, beam_size=self.beam_size,
            length_penalty=self.length_penalty, stop_tokens=(eos_id,) if self.stop_at_eos else (),
            stop_strings=tuple(s for s in self.stop.split("|") if s), seed=self.seed)


def sample_workdir(config, workdir: str, interactive: bool = False,
                   stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
                   devices=None, overrides: Optional[dict] = None,
                   stderr: Optional[TextIO] = None) -> dict:
    """Prints the continuation of ``config.sample.prompt`` (or of every stdin line) by the
    latest checkpoint in ``workdir``, decoded with its parameters sharded on ``config``'s mesh.
    The model comes from the workdir's config.json; ``config`` gives the use-time sections."""
    from lm.train.run import Run

    stdout = stdout or sys.stdout
    sample = SampleConfig.from_config(config.get("sample"))
    run = Run.from_workdir(workdir, overrides, use_time=config, devices=devices)
    vocab, model_cfg = run.vocab, run.exp.model
    settings = sample.settings(vocab.eos_id)
    context = min(run.exp.data.seq_len, model_cfg.max_len)
    prompts = _lines(stdin or sys.stdin) if interactive else [sample.prompt]
    if not interactive:
        _check(model_cfg, vocab, sample.wrap(sample.prompt), settings, context)
    params, step = run.restore()
    count = 0
    for prompt in map(sample.wrap, prompts):
        try:
            _check(model_cfg, vocab, prompt, settings, context)
        except ConfigError as e:
            if not interactive:
                raise
            print(f"error: {e}", file=stdout, flush=True)
            continue
        warn_unknown_characters(vocab, prompt, stderr or sys.stderr)
        text = generate_text(run.graphdef, params, vocab, [prompt], settings, context=context,
                             mesh=run.mesh, rules=run.rules)[0]
        print(prompt + text if not interactive else text, file=stdout, flush=True)
        count += 1
    return {"step": step, "samples": count}


def warn_unknown_characters(vocab, prompt: str, stream: TextIO) -> None:
    """One line on ``stream`` naming the characters of ``prompt`` that ``vocab`` encodes as UNK."""
    unknown = unknown_characters(vocab, prompt)
    if unknown:
        print("warning: prompt characters not in the vocabulary, encoded as <unk>: "
              + ", ".join(map(repr, unknown)), file=stream, flush=True)


def _check(model_cfg, vocab, prompt: str, settings: DecodeSettings, context: int) -> None:
    try:
        check_request(model_cfg, [vocab.encode(prompt)], settings, context)
    except ValueError as e:
        raise ConfigError(f"config.sample: {e}") from None


def _lines(stream: TextIO) -> Iterable[str]:
    for line in stream:
        yield line.rstrip("\n")


def validate_sample(config) -> None:
    """The use-time sections sampling reads (config.sample, config.mesh)."""
    from lm.parallel import MeshConfig
    SampleConfig.from_config(config.get("sample")).settings(0)
    MeshConfig.from_config(config.mesh)
