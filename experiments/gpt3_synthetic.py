"""GPT-3-shaped models on synthetic tokens: a throughput/MFU workload for accelerators.

    python -m launch.bench --config=experiments/gpt3_synthetic.py:125m
    python -m launch.main  --config=experiments/gpt3_synthetic.py:350m --workdir=runs/gpt3_350m

Variants: 125m (default), 350m, 1_3b. bf16 compute with f32 master parameters, sequence 1024.
No corpus and no TensorFlow: the data backend is synthetic.
"""
import ml_collections

from configs import meshes, models, optimizers
from experiments import shakespeare_char


def get_config(variant: str = "125m") -> ml_collections.ConfigDict:
    presets = {"125m": models.gpt3_125m, "350m": models.gpt3_350m, "1_3b": models.gpt3_1_3b}
    if variant not in presets:
        raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(presets)}")
    config = shakespeare_char.get_config()
    config.data.backend = "synthetic"        # random tokens: measures the step, not the data
    config.data.synthetic_vocab_size = 50257
    config.data.seq_len = 1024
    config.data.batch_size = 16              # global batch, sequences
    config.data.eval_batches = 4
    config.model = presets[variant]()
    config.model.max_len = 1024
    config.model.dtype = "bfloat16"          # compute; parameters stay float32
    config.optimizer = optimizers.adamw(lr=6e-4, min_lr=6e-5, warmup_steps=100, b2=0.95,
                                        weight_decay=0.1)
    config.train.steps = 1000
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    config.train.sample_tokens = 0           # synthetic tokens: samples would be noise
    config.mesh = meshes.data_parallel()
    return config
