"""The error raised for a Hugging Face checkpoint that cannot be imported as it is."""
from __future__ import annotations


class HFCheckpointError(ValueError):
    """A Hugging Face folder is missing, malformed or outside what the Llama mapping covers; the
    message names the file, the config.json field or the tensor, and the reason."""
