"""Preference tuning: judged samples, preference pairs, DPO, a reward model, PPO and GRPO."""
