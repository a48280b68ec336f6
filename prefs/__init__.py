"""Preference tuning: judged samples, preference pairs, DPO."""
