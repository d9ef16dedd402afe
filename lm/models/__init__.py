"""Flax modules only: layers, attention, Transformer stacks. Nothing here reads flags or meshes."""
from lm.models.config import ModelConfig
from lm.models.transformer import Decoder


def build(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """The model for ``cfg`` with parameters initialised from ``seed``."""
    from flax import nnx
    return Decoder(cfg, nnx.Rngs(params=seed))


__all__ = ["ModelConfig", "Decoder", "build"]
