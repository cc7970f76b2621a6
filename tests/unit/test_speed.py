"""Activation checkpointing per block (backbone.checkpointing) and the torch.compile switch."""

from __future__ import annotations

import pytest
import torch

from dv.errors import ConfigError
from dv.lit.t2v import T2VModule
from dv.models.speed import (
    apply_checkpointing,
    apply_compile,
    checkpointable_blocks,
    is_checkpointed,
    no_recompute,
    select_blocks,
)
from tests.tiny import tiny_backbone, tiny_dreamvideo, tiny_t2v

NAMES = [
    "unet.down_blocks.0",
    "unet.down_blocks.1",
    "unet.mid_block",
    "unet.up_blocks.0",
    "unet.up_blocks.1",
    "branch.down_blocks.0",
    "branch.down_blocks.1",
    "branch.mid_block",
]


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randint(0, 256, (2, 3, 8, 8, 3), generator=g, dtype=torch.uint8),
        "caption": ["a cat", "a boat"],
    }


def perturbed_dreamvideo():
    """A tiny DreamVideo module in train mode whose zero convs are non-zero, so every block gets gradients."""
    module = tiny_dreamvideo()
    torch.manual_seed(0)
    with torch.no_grad():
        for _, p in module.trainable_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return module.train()


def gradients(module) -> dict[str, torch.Tensor]:
    """Gradients of one seeded training loss (dropout active: the U-Net's temporal convs drop with p=0.1)."""
    module.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the dropout masks
    loss, _ = module.diffusion_loss(batch(), torch.Generator().manual_seed(7), drop=True)
    loss.mean().backward()
    return {n: p.grad.clone() for n, p in module.trainable_parameters() if p.grad is not None}


def test_selection_words_patterns_and_errors():
    assert select_blocks("none", NAMES) == [] and select_blocks(None, NAMES) == [] and select_blocks([], NAMES) == []
    assert select_blocks("all", NAMES) == NAMES
    assert select_blocks(["mid"], NAMES) == ["unet.mid_block", "branch.mid_block"]
    assert select_blocks(["up", "down"], NAMES) == [n for n in NAMES if "down" in n or "up" in n]
    assert select_blocks(["branch.*", "unet.up_blocks.1"], NAMES) == ["unet.up_blocks.1"] + NAMES[5:]
    with pytest.raises(ConfigError, match="matches no block"):
        select_blocks(["unet.side_blocks.*"], NAMES)
    # high-res: the blocks at the latent's full resolution, of the U-Net and of the branch.
    assert select_blocks("high-res", NAMES) == ["unet.down_blocks.0", "unet.up_blocks.1", "branch.down_blocks.0"]
    assert select_blocks(["high-res", "mid"], NAMES) == [
        "unet.down_blocks.0",
        "unet.mid_block",
        "unet.up_blocks.1",
        "branch.down_blocks.0",
        "branch.mid_block",
    ]


def test_checkpointed_gradients_equal_plain_ones_and_blocks_are_recomputed():
    module = perturbed_dreamvideo()
    keys = set(module.state_dict())
    plain = gradients(module)
    assert len(plain) == len(module.trainable_parameters()), "every trainable parameter gets a gradient"

    names = apply_checkpointing(module.backbone.unet, module.branch, "all")
    assert names == NAMES and set(module.state_dict()) == keys, "wrapping keeps every parameter name"
    blocks = checkpointable_blocks(module.backbone.unet, module.branch)
    assert all(is_checkpointed(b) for b in blocks.values())

    # A block's first resnet runs once in the forward pass and once more when backward recomputes the block.
    calls = {name: 0 for name in blocks}
    for name, block in blocks.items():
        block.resnets[0].register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    checkpointed = gradients(module)
    assert calls == {name: 2 for name in blocks}, calls

    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)

    # Without gradients (sampling, validation) and under no_recompute() the blocks run once.
    calls.update({name: 0 for name in blocks})
    with no_recompute():
        gradients(module)
    assert calls == {name: 1 for name in blocks}


def saved_tensor_bytes(module) -> int:
    """Bytes of the tensors autograd keeps for backward in one training loss."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.manual_seed(0)
        module.diffusion_loss(batch(), torch.Generator().manual_seed(7), drop=False)[0].mean()
    return total


def test_checkpointing_keeps_fewer_activations():
    module = tiny_t2v().train()
    before = saved_tensor_bytes(module)
    apply_checkpointing(module.backbone.unet, None, ["down", "mid", "up"])
    after = saved_tensor_bytes(module)
    assert after < before / 3, (before, after)


def test_recipe_switches_reach_the_built_networks():
    module = T2VModule(backbone=tiny_backbone(checkpointing=["up"], compile=True))
    module.configure_model()
    unet = module.backbone.unet
    assert [is_checkpointed(b) for b in unet.down_blocks] == [False, False]
    assert [is_checkpointed(b) for b in unet.up_blocks] == [True, True] and not is_checkpointed(unet.mid_block)
    assert unet._compiled_call_impl is not None, "Module.compile(): compiled in place, same parameter names"
    assert all(not n.startswith("_orig_mod") for n, _ in unet.named_parameters())
    with pytest.raises(ConfigError, match="compile_mode"):
        apply_compile(unet, None, "fastest")
