"""Flax modules only: layers, attention, Transformer stacks. Nothing here reads flags or meshes,
and nothing here knows fine-tuning methods (lm.peft attaches them from outside)."""
from lm.models.config import ModelConfig
from lm.models.transformer import Decoder


def build(cfg: ModelConfig, seed: int = 0):
    """The model for ``cfg`` (by ``cfg.arch``) with parameters initialised from ``seed``."""
    from flax import nnx
    if cfg.vocab_size <= 0:
        raise ValueError("ModelConfig.vocab_size must be set before building the model")
    rngs = nnx.Rngs(params=seed)
    if cfg.arch == "lstm":
        from lm.models.lstm import LSTMLM
        return LSTMLM(cfg, rngs)
    if cfg.arch == "encoder_decoder":
        from lm.models.encdec import EncoderDecoder
        return EncoderDecoder(cfg, rngs)
    return Decoder(cfg, rngs)  # 'encoder' is the same stack attending in both directions


__all__ = ["ModelConfig", "Decoder", "build"]
