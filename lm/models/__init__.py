"""Flax modules only: layers, attention, Transformer stacks. Nothing here reads flags or meshes."""
from lm.models.config import ModelConfig
from lm.models.transformer import Decoder


def build(cfg: ModelConfig, seed: int = 0):
    """The model for ``cfg`` (by ``cfg.arch``) with parameters initialised from ``seed``. With a
    PEFT method that adds parameters (``cfg.peft``), they are attached from a stream of their
    own, so the base parameters are those of the model without PEFT and the same seed."""
    from flax import nnx
    if cfg.vocab_size <= 0:
        raise ValueError("ModelConfig.vocab_size must be set before building the model")
    cfg.peft.check_model(cfg)
    rngs = nnx.Rngs(params=seed)
    if cfg.arch == "lstm":
        from lm.models.lstm import LSTMLM
        return LSTMLM(cfg, rngs)
    if cfg.arch == "encoder_decoder":
        from lm.models.encdec import EncoderDecoder
        return EncoderDecoder(cfg, rngs)
    model = Decoder(cfg, rngs)  # 'encoder' is the same stack attending in both directions
    if cfg.peft.adds_parameters:
        from lm.peft.model import add_peft_parameters
        add_peft_parameters(model, cfg, seed)
    return model


__all__ = ["ModelConfig", "Decoder", "build"]
