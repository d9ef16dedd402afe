"""Count-based baselines scored with the Transformer trainer's validation metric.

``ngram``: an interpolated Kneser-Ney n-gram model (orders 1..6) in NumPy.
``run``: fits it on a config's train split, evaluates it on the trainer's validation batches
and samples it with the shared sampler (``run_ngram``, ``validate_ngram``).
"""
