"""Accelerate + DeepSpeed trainer for TSM+W3 and its baselines."""
