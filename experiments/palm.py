"""PaLM-shaped models (8B / 62B / 540B) on synthetic tokens: for compile-only sizing and pods.

    python -m launch.compile --config=experiments/palm.py:8b --fake_devices=64 \
        --config.mesh.fsdp=16 --config.mesh.tensor=4

The recipe of the paper: Adafactor (no factorization), lr 1e-2 then 1/sqrt(k), z-loss 1e-4,
sequence 2048, no dropout; bf16 compute, f32 parameters, full remat, scanned layers.
"""
import ml_collections

from configs import meshes, models, optimizers
from experiments import shakespeare_char


def get_config(variant: str = "8b") -> ml_collections.ConfigDict:
    presets = {"8b": models.palm_8b, "62b": models.palm_62b, "540b": models.palm_540b}
    if variant not in presets:
        raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(presets)}")
    config = shakespeare_char.get_config()
    config.data.backend = "synthetic"          # no corpus: sizing and throughput
    config.data.synthetic_vocab_size = 256_000
    config.data.seq_len = 2048
    config.data.batch_size = 64                # global batch, sequences (PaLM ramps 512->2048)
    config.data.eval_batches = 1
    config.model = presets[variant]()
    config.optimizer = optimizers.palm_adafactor()
    config.train.steps = 10_000
    config.train.z_loss = 1e-4
    config.train.sample_tokens = 0
    config.mesh = meshes.palm_2d(tensor=4)
    return config
