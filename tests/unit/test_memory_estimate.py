"""`dv bench --what memory`: a training step's memory per checkpointing choice, counted on the meta device."""

from __future__ import annotations

import torch

from dv.bench.memory import estimate
from dv.lit.dreamvideo import DreamVideoModule, RetentionConfig
from dv.models.speed import checkpointable_blocks, is_checkpointed
from tests.tiny import tiny_backbone


def test_checkpointing_choices_order_the_activation_estimate():
    module = DreamVideoModule(backbone=tiny_backbone(), retention=RetentionConfig(image_channels=(8, 16)))
    with torch.device("meta"):
        module.configure_model()
    rows = {r.choice: r for r in estimate(module, batch=2, frames=4, size=32, bf16=False)}
    assert list(rows) == ["none", "high-res", "down", "up", "all"]
    act = {k: r.activations for k, r in rows.items()}
    assert act["all"] < act["high-res"] < act["none"] and act["down"] < act["none"] and act["up"] < act["none"], act
    trainable = sum(p.numel() for _, p in module.trainable_parameters())
    assert all(r.gradients == 4 * trainable and r.optimizer == 8 * trainable for r in rows.values())
    assert all(r.total > r.activations > 0 for r in rows.values())
    assert not any(is_checkpointed(b) for b in checkpointable_blocks(module.backbone.unet, module.branch).values())

    bf16 = estimate(module, batch=2, frames=4, size=32, bf16=True, choices=["none"])[0]
    assert bf16.activations < rows["none"].activations and bf16.autocast_copies > 0
