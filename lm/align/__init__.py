"""Alignment tuning: preference data, reward models, DPO, PPO and GRPO."""
