"""Chat transcripts as instances: every assistant turn is trained, every other turn is context.

With the default ``ChatTemplate`` a transcript reads (``<EOS>`` is the vocabulary's EOS id,
not text)::

    System: Answer briefly.
    User: Who wrote Hamlet?
    Assistant: Shakespeare.<EOS>
    User: When?
    Assistant: About 1600.<EOS>

Role markers ("Assistant: ") are prompt: the model is trained on what follows the marker, and
at generation time the prompt ends with the marker (``chat_prompt``). The EOS after each
assistant turn teaches the model to stop; the separator after it is prompt again.

``chat_prompt`` returns text, which cannot hold the EOS ids that end earlier assistant turns;
for multi-turn generation ``chat_prompt_tokens`` gives the exact token stream the model was
trained on.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from lm.instruct.instances import Instance, Segment

Message = Mapping[str, Any]  # {'role': ..., 'content': ...}


def _default_roles() -> dict[str, str]:
    return {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    roles: Mapping[str, str] = dataclasses.field(default_factory=_default_roles)  # role -> marker
    turn_separator: str = "\n"
    response_role: str = "assistant"  # the role whose turns are trained on

    def __post_init__(self):
        if self.response_role not in self.roles:
            raise ValueError(f"ChatTemplate.response_role {self.response_role!r} is not one of "
                             f"the roles {sorted(self.roles)}")

    def format(self, transcript: Sequence[Message]) -> Instance:
        """Every turn of ``transcript``; the response role's contents are the responses."""
        if not transcript:
            raise ValueError("a chat transcript needs at least one message")
        return Instance(self._segments(transcript))

    def prompt(self, transcript: Sequence[Message]) -> str:
        """The text a model continues to write the next response turn (ends with its marker)."""
        return self.prompt_instance(transcript).text

    def prompt_instance(self, transcript: Sequence[Message]) -> Instance:
        """``transcript`` plus the response role's marker, as an instance (earlier responses
        stay responses, so encoding it puts EOS after each of them)."""
        if transcript and _role(transcript[-1], len(transcript) - 1) == self.response_role:
            raise ValueError(f"the transcript already ends with a {self.response_role!r} turn; "
                             "add the next user turn before asking for a response")
        marker = self.roles[self.response_role]
        separator = self.turn_separator if transcript else ""
        return Instance(self._segments(transcript) + ((separator + marker, False),))

    def _segments(self, transcript: Sequence[Message]) -> tuple[Segment, ...]:
        segments: list[Segment] = []
        for index, message in enumerate(transcript):
            role, content = _role(message, index), _content(message, index)
            if role not in self.roles:
                raise ValueError(f"message {index} has unknown role {role!r}; allowed roles: "
                                 f"{', '.join(sorted(self.roles))}")
            separator = self.turn_separator if index else ""
            segments.append((separator + self.roles[role], False))
            segments.append((content, role == self.response_role))
        return tuple(segments)


CHAT_TEMPLATE = ChatTemplate()


def format_chat(transcript: Sequence[Message], template: ChatTemplate = CHAT_TEMPLATE) -> Instance:
    """A multi-turn instance: every assistant turn is a response, every other turn prompt."""
    return template.format(transcript)


def chat_prompt(transcript: Sequence[Message], template: ChatTemplate = CHAT_TEMPLATE) -> str:
    """The text a model should continue: the transcript and then the assistant marker."""
    return template.prompt(transcript)


def chat_prompt_tokens(transcript: Sequence[Message], vocab,
                       template: ChatTemplate = CHAT_TEMPLATE) -> list[int]:
    """``chat_prompt`` as tokens, with EOS after each earlier assistant turn as in training."""
    from lm.instruct.rows import encode_instance

    return encode_instance(template.prompt_instance(transcript), vocab)[0]


def _role(message: Message, index: int) -> str:
    if not isinstance(message, Mapping) or "role" not in message:
        raise ValueError(f"message {index} must be a dict with 'role' and 'content', got {message!r}")
    return message["role"]


def _content(message: Message, index: int) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(f"message {index}: 'content' must be a string, got "
                         f"{type(content).__name__} {content!r}")
    return content
