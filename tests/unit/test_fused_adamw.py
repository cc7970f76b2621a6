"""AdamW's fused kernel with dv's own gradient clipping: the same updates as the foreach kernel, the norm computed once."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from dv.lit.t2v import OptimConfig
from tests.tiny import tiny_t2v
from tests.unit.test_models import make_batch


def _train(fused: bool, steps: int = 2) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer, list]:
    torch.manual_seed(0)
    module = tiny_t2v(optim=OptimConfig(lr=1e-3, warmup_steps=1, fused=fused))
    norms = []
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=0.05,
    )
    original = torch.nn.utils.get_total_norm

    def counted(*args, **kwargs):
        norms.append(1)
        return original(*args, **kwargs)

    torch.nn.utils.get_total_norm = counted
    try:
        trainer.fit(module, DataLoader([make_batch(seed=i) for i in range(steps)], batch_size=None))
    finally:
        torch.nn.utils.get_total_norm = original
    return {n: p.detach().clone() for n, p in module.trainable_parameters()}, trainer.optimizers[0], norms


def test_fused_adamw_steps_as_foreach_does_with_clipping():
    fused, fused_opt, norms = _train(fused=True)
    foreach, foreach_opt, _ = _train(fused=False)
    assert fused_opt.param_groups[0]["fused"] and not foreach_opt.param_groups[0]["fused"]
    assert len(norms) == 2, "the gradient norm is computed once a step, for the log and the clipping"
    for name in foreach:
        torch.testing.assert_close(fused[name], foreach[name], rtol=1e-5, atol=1e-6, msg=name)
    start = {n: p.detach() for n, p in tiny_t2v().trainable_parameters()}
    moved = sum(not torch.equal(start[n], foreach[n]) for n in foreach)
    assert moved > len(foreach) // 2, "the weights were stepped"
