"""The embedded default: a character-level 'baby GPT' on Shakespeare's plays (nanoGPT's CPU recipe).

    python -m launch.main --config=experiments/shakespeare_char.py --workdir=runs/demo
    python -m launch.main --config=experiments/shakespeare_char.py:smoke --workdir=/tmp/smoke

Variants: '' (the full 2000-step recipe), 'smoke' (a few steps, for tests and quick checks).
Only what differs from the defaults is written here; `python -m lm.sections` lists every field.
The defaults already are the recipe's: the 42 modern-spelling plays split 90/10 into 64-character
windows, batch 12; AdamW lr 1e-3, 100 warm-up steps then cosine to 1e-4, beta2 0.99, weight
decay 0.1, clip 1; data parallel over every device.
"""
import ml_collections

from configs import base, models


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = base.config()
    config.seed = 1337
    # 4 layers, 4 heads, d_model 128, GELU MLP, LayerNorm, learned positions, tied embeddings.
    config.model = models.tiny_char()
    config.train.update(eval_every=500, checkpoint_every=1000, keep_checkpoints=2,
                        sample_tokens=300)
    config.sample.update(prompt="ROMEO:", max_new_tokens=32)
    config.eval.tasks = ("heldout_docs,next_line_choice,word_order_choice,last_word,next_line,"
                         "humaneval")
    if variant == "smoke":
        config.train.update(steps=20, eval_every=10, checkpoint_every=10, log_every=5,
                            sample_tokens=20)
        config.data.eval_batches = 2
        config.eval.num_examples = 4
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of shakespeare_char; use '' or 'smoke'")
    return config
