"""Tiny stand-ins for the metrics' detectors, saved as real files and loaded through dv.metrics.detectors.

They have the reference files' call signatures: I3D `(videos, rescale, resize, return_features)` on
uint8 (B, 3, T, H, W) returning features, C3D `(videos)` returning class probabilities, and an
open_clip CLIP built from a tiny registered config. The metrics' own preprocessing runs on them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import open_clip
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dv.metrics.detectors import ClipDetector, FrozenDetector, load_c3d, load_clip, load_i3d

TINY_CLIP = "dv-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class TinyI3D(nn.Module):
    """i3d_torchscript.pt's signature: rescale [0, 255] -> [-1, 1], resize frames to 224, features or logits."""

    def __init__(self, num_features: int = 8) -> None:
        super().__init__()
        self.features = nn.Linear(3 * 2 * 4 * 4, num_features)
        self.logits = nn.Linear(num_features, 5)
        self.norm = nn.BatchNorm1d(num_features)  # changes in train mode: shows the lock on eval

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> Tensor:
        x = x.float()
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=[x.shape[2], 224, 224], mode="trilinear", align_corners=False)
        feats = self.norm(self.features(F.adaptive_avg_pool3d(x, [2, 4, 4]).flatten(1)))
        return feats if return_features else self.logits(feats)


class TinyC3D(nn.Module):
    """c3d_ucf101.pt's signature: uint8 (B, 3, 16, H, W) -> softmax probabilities over the classes."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 2 * 2 * 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool3d(x.float() / 255, [2, 2, 2]).flatten(1)
        return torch.softmax(4 * self.fc(pooled), dim=1)


class OneHotC3D(nn.Module):
    """A C3D stand-in whose prediction is certain: class = first pixel value mod num_classes."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return F.one_hot(x[:, 0, 0, 0, 0].long() % self.num_classes, self.num_classes).float()


def save_script(module: nn.Module, path: Path) -> Path:
    """TorchScript-compile a stand-in and save it where a user's detector file would be."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the reference files are TorchScript
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def tiny_i3d(tmp_path: Path, seed: int = 0, name: str = "i3d_torchscript.pt") -> FrozenDetector:
    """A TinyI3D saved to tmp_path and loaded through load_i3d."""
    torch.manual_seed(seed)
    return load_i3d(save_script(TinyI3D(), tmp_path / name))


def tiny_c3d(tmp_path: Path, module: nn.Module | None = None, name: str = "c3d_ucf101.pt") -> FrozenDetector:
    """A C3D stand-in saved to tmp_path and loaded through load_c3d."""
    torch.manual_seed(0)
    return load_c3d(save_script(module or TinyC3D(), tmp_path / name))


def register_tiny_clip(config_dir: Path) -> str:
    """Register the tiny CLIP config with open_clip (idempotent) and return its name."""
    if open_clip.get_model_config(TINY_CLIP) is None:
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
        open_clip.add_model_config(config_dir / f"{TINY_CLIP}.json")
    return TINY_CLIP


def tiny_clip(tmp_path: Path, seed: int = 0) -> ClipDetector:
    """A tiny open_clip CLIP saved as safetensors and loaded through load_clip."""
    name = register_tiny_clip(tmp_path / "clip_configs")
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    path = tmp_path / f"tiny_clip_{seed}.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return load_clip(path, model_name=name, quick_gelu=False)


def videos(n: int, seed: int, frames: int = 16, size: int = 24, shift: int = 0) -> Tensor:
    """uint8 (n, frames, size, size, 3) videos with per-video brightness, optionally brightened by `shift`."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 120, (n, 1, 1, 1, 3), generator=g)
    noise = torch.randint(0, 100, (n, frames, size, size, 3), generator=g)
    return (base + noise + shift).clamp(0, 255).to(torch.uint8)


def test_stand_ins_load_as_detectors(tmp_path):
    """The stand-ins script, save and load like the real files, with their identities."""
    i3d, c3d = tiny_i3d(tmp_path), tiny_c3d(tmp_path)
    clip = videos(2, 0).permute(0, 4, 1, 2, 3).contiguous()
    assert i3d(clip, rescale=True, resize=True, return_features=True).shape == (2, 8)
    assert torch.allclose(c3d(clip).sum(1), torch.ones(2))
    assert i3d.identity.kind == "i3d" and len(i3d.identity.sha256) == 64
    assert i3d.identity.sha256 != c3d.identity.sha256
