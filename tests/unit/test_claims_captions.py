"""The caption probe of the claims experiment: the top-1 rule, and that it finds a caption the model reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dv.claims.captions import caption_losses, probe, top1_rate
from dv.claims.inputs import per_move
from dv.claims.motion import MOTIONS
from dv.cli import build_parser
from dv.errors import ConfigError
from tests.tiny import tiny_t2v


def test_top1_rate_counts_the_own_caption_and_shares_ties():
    losses = np.array([[0.1, 0.2, 0.3], [0.5, 0.4, 0.6], [0.2, 0.2, 0.2]])
    assert top1_rate(losses, np.array([0, 1, 2])) == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert top1_rate(losses, np.array([1, 0, 0])) == pytest.approx((0 + 0 + 1 / 3) / 3)


def clips(n: int = 6) -> list[tuple[np.ndarray, str, str]]:
    rng = np.random.default_rng(0)
    return [
        (rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), "rocket", MOTIONS[i % len(MOTIONS)]) for i in range(n)
    ]


def test_a_model_that_ignores_the_caption_is_at_chance():
    module = tiny_t2v().eval()
    for block in module.backbone.unet.modules():  # cut every cross-attention's output: the text cannot matter
        if hasattr(block, "attn2") and block.attn2 is not None:
            torch.nn.init.zeros_(block.attn2.to_out[0].weight)
            torch.nn.init.zeros_(block.attn2.to_out[0].bias)
    losses = caption_losses(module, clips(), 500)
    assert np.allclose(losses, losses[:, :1])
    assert probe(module, clips(), timesteps=(500,))[0]["top1"] == pytest.approx(1 / len(MOTIONS))


def test_the_probe_sees_a_model_that_reads_the_caption():
    # A real tiny model whose prediction depends on the caption: its losses differ between captions, and the same
    # seed gives the same losses (same latent draw and noise for every caption).
    module = tiny_t2v().eval()
    torch.manual_seed(0)
    for block in module.backbone.unet.modules():
        if hasattr(block, "attn2") and block.attn2 is not None:
            torch.nn.init.normal_(block.attn2.to_out[0].weight, std=0.5)
    a, b = caption_losses(module, clips(), 500, seed=3), caption_losses(module, clips(), 500, seed=3)
    assert np.array_equal(a, b)
    assert not np.allclose(a, a[:, :1])
    row = probe(module, clips(), timesteps=(500,))[0]
    truth = np.array([MOTIONS.index(m) for _, _, m in clips()])
    assert row["top1"] == pytest.approx(top1_rate(caption_losses(module, clips(), 500), truth))
    assert row["own_loss"] == pytest.approx(caption_losses(module, clips(), 500)[np.arange(6), truth].mean())


def test_clips_per_move_keeps_every_photo_and_caption_with_fewer_clips():
    """`dv probe-captions --clips-per-move 2`: the first two clips of each photo and move, in their order."""
    clips = [(np.full((1,), i), photo, move) for i in range(3) for photo in ("moon", "rocket") for move in MOTIONS[:2]]
    kept = per_move(clips, 2)
    assert [int(c[0][0]) for c in kept] == [0] * 4 + [1] * 4
    assert {(c[1], c[2]) for c in kept} == {(c[1], c[2]) for c in clips}
    assert per_move(clips, 5) == clips
    with pytest.raises(ConfigError, match="--clips-per-move"):
        per_move(clips, 0)
    args = build_parser().parse_args(["probe-captions", "--model", "a=r.yaml,m.ckpt", "--val-shards", "v"])
    assert args.clips_per_move is None
