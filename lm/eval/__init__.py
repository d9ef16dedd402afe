"""Evaluation building blocks: text and likelihood metrics (metrics), pass@k (passk), sandboxed
execution of generated code (sandbox) and HumanEval (humaneval)."""
