"""Interoperability with other model formats: Hugging Face Llama checkpoints (docs/interop.md)."""
from lm.interop.errors import HFCheckpointError
from lm.interop.llama import export_llama, export_workdir, import_llama, load_llama_model

__all__ = ["HFCheckpointError", "export_llama", "export_workdir", "import_llama", "load_llama_model"]
