"""The embedded default: a character-level 'baby GPT' on Shakespeare's plays (nanoGPT's CPU recipe).

    python -m launch.main --config=experiments/shakespeare_char.py --workdir=runs/demo
    python -m launch.main --config=experiments/shakespeare_char.py:smoke --workdir=/tmp/smoke

Variants: '' (the full 2000-step recipe), 'smoke' (a few steps, for tests and quick checks).
"""
import ml_collections

from configs import meshes, models, optimizers


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # pretrain | eval (validation loss and the config.eval tasks) | sample (continue a prompt)
    config.mode = "pretrain"
    config.seed = 1337             # parameters, data order and dropout all derive from it

    config.data = data_section()

    # Model: causal decoder (model.arch), 4 layers, 4 heads, d_model 128, GELU MLP, LayerNorm,
    # learned positions, tied embeddings, no biases, no dropout (configs/models.py: every field).
    config.model = models.tiny_char()

    # Optimizer: AdamW lr 1e-3, 100 warm-up steps then cosine to 1e-4, beta2 0.99, wd 0.1, clip 1.
    config.optimizer = optimizers.adamw(lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99,
                                        weight_decay=0.1)
    config.train = train_section()
    config.sample = sample_section()
    config.eval = eval_section()

    # Mesh: one device here; the same program shards over (data, fsdp, tensor) on a pod.
    config.mesh = meshes.data_parallel()

    if variant == "smoke":
        config.train.steps = 20
        config.train.eval_every = 10
        config.train.checkpoint_every = 10
        config.train.log_every = 5
        config.train.sample_tokens = 20
        config.data.eval_batches = 2
        config.eval.num_examples = 4
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of shakespeare_char; use '' or 'smoke'")
    return config


def data_section() -> ml_collections.ConfigDict:
    """The 42 modern-spelling plays concatenated in sorted file-name order, split 90/10."""
    data = ml_collections.ConfigDict()
    data.backend = "array"      # seqio (tf.data) | array (NumPy, no TensorFlow) | synthetic
    data.corpus = "shakespeare"  # embedded corpus name, or a .txt file / folder of them
    data.vocab = "char"         # char | sentencepiece
    data.vocab_model = ""       # SentencePiece .model path ('' = the shipped one)
    data.seq_len = 64           # context length (tokens per training window)
    data.batch_size = 12        # global batch, in windows
    data.train_fraction = 0.9   # first 90% of characters train, the rest validation
    data.eval_batches = 50      # validation batches per evaluation (50 x 12 x 64 tokens)
    data.packing = False        # pack documents with segment ids (document tasks)
    data.synthetic_vocab_size = 256  # vocabulary of the synthetic backend
    data.mixture = ""           # '' = one corpus; 'gutenberg' or 'shakespeare:0.7,milton:0.3'
    data.mixture_temperature = 1.0  # mixture rates ∝ size^(1/T) when none are given
    data.cache_dir = ""         # pre-tokenized cache (python -m lm.data.cache); '' = none
    data.prefetch = 2           # batches prepared ahead on a background thread (0: none)
    # Objective (must fit config.model.arch): causal_lm | prefix_lm | span_corruption | mlm.
    data.objective = "causal_lm"
    data.eval_objective = ""    # '' = the training objective; e.g. prefix_lm for all archs
    data.prefix_fraction = 0.5  # prefix_lm: share of each window that is the prefix
    data.noise_density = 0.15   # span_corruption: share of tokens hidden behind sentinels
    data.mean_noise_span_length = 3.0  # span_corruption: mean hidden span length
    data.mlm_probability = 0.15  # mlm: share of positions masked and predicted

    return data


def train_section() -> ml_collections.ConfigDict:
    train = ml_collections.ConfigDict()
    train.steps = 2000            # optimizer updates
    train.eval_every = 500        # validation loss and a text sample every N steps
    train.checkpoint_every = 1000  # and at the end; resumed automatically
    train.keep_checkpoints = 2    # older checkpoints are deleted
    train.async_checkpoint = True  # save in the background
    train.log_every = 50          # train metrics to metrics.jsonl / TensorBoard
    train.grad_accum_steps = 1    # microbatches per step
    train.z_loss = 0.0            # PaLM's auxiliary 1e-4 * log(Z)^2 (off here)
    train.sample_tokens = 300     # characters generated at each evaluation
    train.sample_prompt = "\n"    # sampling starts from this text
    train.sample_temperature = 0.8
    train.sample_top_k = 0        # 0: sample from the whole distribution
    train.progress = True         # progress bar with ETA
    return train


def sample_section() -> ml_collections.ConfigDict:
    # Sampling (config.mode='sample', cached decoding of the latest checkpoint; --interactive
    # continues each stdin line instead of the prompt).
    sample = ml_collections.ConfigDict()
    sample.prompt = "ROMEO:"         # text to continue
    sample.max_new_tokens = 32       # new characters; prompt + new must fit the context (64)
    sample.temperature = 0.8         # 0: greedy
    sample.top_k = 0                 # sample from the k most likely characters; 0: all
    sample.top_p = 1.0               # nucleus: the smallest set with this mass; 1: all
    sample.repetition_penalty = 1.0  # CTRL penalty on characters already present; 1: none
    sample.beam_size = 1             # > 1: beam search (deterministic)
    sample.length_penalty = 0.0      # beam search: GNMT alpha, ((5 + len) / 6) ** alpha
    sample.stop = ""                 # stop strings separated by '|', e.g. '\n\n'; '' = none
    sample.stop_at_eos = True        # the vocabulary's EOS id ends the continuation
    sample.seed = 0                  # same seed, same continuation
    return sample


def eval_section() -> ml_collections.ConfigDict:
    # Evaluation (config.mode='eval'): validation loss, then these tasks through seqio.Evaluator
    # (lm/eval/tasks.py); results in <workdir>/eval/step<N>.{json,md}.
    eval = ml_collections.ConfigDict()
    eval.tasks = "heldout_docs,next_line_choice,word_order_choice,last_word,next_line,humaneval"
    eval.num_examples = 0          # rows per task, evenly spaced; 0: all
    eval.batch_size = 16
    eval.max_new_tokens = 0        # 0: each task's default (HumanEval: 128)
    eval.code_samples = 1          # completions per HumanEval problem (1: greedy)
    eval.code_temperature = 0.8    # when code_samples > 1
    eval.pass_k = "1"              # e.g. '1,10' with code_samples >= 10
    eval.heldout_doc_chars = 2048  # heldout_docs: characters per document
    return eval
