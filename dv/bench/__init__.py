"""`dv bench`: seconds per step, clips/s, peak memory, model FLOPs and MFU of a recipe's model, beside the plain loop.

Modules: cli (the command), workload (model and synthetic batch of a recipe), dvpath (dv's own training
step through Lightning, and its sampler), plain (the same work as the plainest diffusers + torch loop),
flops (FLOP counting and MFU), device (synchronising, peak memory, device names), loader (VideoDataModule
clips/s, shared with benchmarks/loader.py), explain (torch._dynamo.explain of the denoiser).
"""
