"""Sampling: double-condition classifier-free guidance, DDIM, chained inference, zero-shot baselines."""
