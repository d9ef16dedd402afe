"""Evaluation building blocks: text and likelihood metrics (metrics), pass@k (passk), sandboxed
execution of generated code (sandbox), HumanEval (humaneval), and the lm-evaluation-harness request
types for a trained model: loglikelihood, loglikelihood_rolling, generate_until (scoring)."""
