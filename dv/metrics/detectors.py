"""The metrics' detectors (I3D, C3D, CLIP) loaded from local files, their identity and their input preprocessing.

Nothing here downloads. A detector is known by its file: path and SHA-256 of its bytes (hashed once,
cached by path, mtime and size), so a result always says which network produced it and features
from two different files are never mixed. The network is held outside the module tree: its weights
stay out of checkpoints (the hash stands for them) and a checkpoint can never swap them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from dv.errors import DataError, WeightsError

__all__ = [
    "ClipDetector",
    "DetectorId",
    "FrozenDetector",
    "as_uint8",
    "file_sha256",
    "load_c3d",
    "load_clip",
    "load_i3d",
    "video_clip",
]

PathLike = str | os.PathLike

PUBLISHED = {
    "i3d": (
        "i3d_torchscript.pt, StyleGAN-V's TorchScript port of the tf.hub I3D (Kinetics-400) that FVD uses, published at "
        "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (see src/metrics/frechet_video_distance.py of "
        "github.com/universome/stylegan-v)"
    ),
    "c3d": (
        "c3d_ucf101.pt, StyleGAN-V's TorchScript port of TGAN2's UCF-101 C3D that video IS uses, published at "
        "https://www.dropbox.com/s/jxpu7avzdc9n97q/c3d_ucf101.pt (see src/metrics/video_inception_score.py of "
        "github.com/universome/stylegan-v)"
    ),
    "clip": (
        "a CLIP ViT-B/32 checkpoint: open_clip_pytorch_model.bin of timm/vit_base_patch32_clip_224.openai on the Hugging Face "
        "Hub (OpenAI's weights, open_clip's 'openai' tag), or OpenAI's ViT-B-32.pt"
    ),
}
"""What each kind of detector file is and where it is published (printed for the user; never fetched)."""

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file's bytes, computed once per (path, mtime, size)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(resolved, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


@dataclass(frozen=True)
class DetectorId:
    """Which file a detector came from: its kind, path and SHA-256."""

    kind: str
    path: str
    sha256: str


class FrozenDetector(nn.Module):
    """A detector network locked in eval mode, run without gradients, known by its file's identity."""

    def __init__(self, net: nn.Module, identity: DetectorId) -> None:
        super().__init__()
        net.eval()
        for param in net.parameters():  # ScriptModules have no requires_grad_()
            param.requires_grad_(False)
        # Outside _modules on purpose: no weights in state_dict, and load_state_dict cannot replace them.
        object.__setattr__(self, "net", net)
        self.identity = identity
        self._net_device = torch.device("cpu")

    @property
    def device(self) -> torch.device:
        """Device the network is on."""
        return self._net_device

    def train(self, mode: bool = True) -> FrozenDetector:
        """Stay in eval mode whatever is asked (BatchNorm statistics and dropout of the reference are fixed)."""
        self.net.eval()
        return super().train(False)

    def to_device(self, device: torch.device) -> None:
        """Move the network to a device (its dtype stays float32, as the reference runs it)."""
        if device != self._net_device:
            self.net.to(device)
            self._net_device = device

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's private hook
        # .to()/.cuda() reach the metric's children through here; follow the device only, never the dtype.
        self.to_device(fn(torch.zeros(1, device=self._net_device)).device)
        return super()._apply(fn, recurse)

    def __deepcopy__(self, memo: dict) -> FrozenDetector:
        return self  # frozen and read-only: clones of a metric share one network

    @torch.no_grad()
    def forward(self, *args, **kwargs) -> Tensor:
        """Run the network on inputs moved to its device."""
        args = tuple(a.to(self._net_device) if isinstance(a, Tensor) else a for a in args)
        return self.net(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"kind={self.identity.kind}, path={self.identity.path}, sha256={self.identity.sha256[:12]}…"


def _require_file(path: PathLike | None, kind: str) -> Path:
    if path is None or not Path(path).is_file():
        raise WeightsError(
            f"{kind} detector file {path!s} not found: expected {PUBLISHED[kind]}; download it and name its local path"
        )
    return Path(path)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _jit_load(path: Path, kind: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            # The reference detectors exist only as TorchScript; its deprecation notice is not the user's concern.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as err:
        raise WeightsError(f"{path} is not a readable TorchScript archive: expected {PUBLISHED[kind]} ({err})") from err


def _load_torchscript_detector(path: PathLike | None, kind: str) -> FrozenDetector:
    file = _require_file(path, kind)
    net = _jit_load(file, kind)
    return FrozenDetector(net, DetectorId(kind, str(file.resolve()), file_sha256(file)))


def load_i3d(path: PathLike | None) -> FrozenDetector:
    """The FVD network (StyleGAN-V's i3d_torchscript.pt) from a local file."""
    return _load_torchscript_detector(path, "i3d")


def load_c3d(path: PathLike | None) -> FrozenDetector:
    """The video-IS network (StyleGAN-V's c3d_ucf101.pt) from a local file."""
    return _load_torchscript_detector(path, "c3d")


class ClipDetector(FrozenDetector):
    """A frozen open_clip model with its tokenizer and open_clip's eval preprocessing done on tensors."""

    def __init__(self, net: nn.Module, identity: DetectorId, tokenizer, preprocess_cfg: dict) -> None:  # noqa: ANN001
        super().__init__(net, identity)
        self.tokenizer = tokenizer
        size = preprocess_cfg.get("size", 224)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        if self.image_size[0] != self.image_size[1] or preprocess_cfg.get("resize_mode", "shortest") != "shortest":
            raise WeightsError(
                f"CLIP preprocessing {preprocess_cfg} is not the square shortest-side resize of ViT-B/32"
            )
        self.interpolation = preprocess_cfg.get("interpolation") or "bicubic"
        self.mean = tuple(preprocess_cfg["mean"])
        self.std = tuple(preprocess_cfg["std"])

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (N, H, W, 3) -> normalised (N, 3, S, S): open_clip's Resize(S, bicubic), CenterCrop(S), Normalize."""
        x = rearrange(images, "n h w c -> n c h w").to(self.device, torch.float32)
        size = self.image_size[0]
        h, w = x.shape[-2:]
        # torchvision's Resize(int): the short side becomes `size`, the long side is truncated, not rounded.
        new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        # antialias: PIL (open_clip resizes PIL images) low-pass filters when it shrinks; round+clip: PIL's uint8 output.
        x = F.interpolate(x, size=(new_h, new_w), mode=self.interpolation, align_corners=False, antialias=True)
        x = x.round().clamp(0, 255)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        x = x[..., top : top + size, left : left + size] / 255.0
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, images: Tensor, max_batch: int = 256) -> Tensor:
        """Unit-norm image embeddings (N, D) of uint8 (N, H, W, 3) images."""
        parts = [self.net.encode_image(self.preprocess(part)) for part in images.split(max_batch)]
        return F.normalize(torch.cat(parts).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, captions: list[str]) -> Tensor:
        """Unit-norm text embeddings (N, D) of captions (truncated to the context length by the tokenizer)."""
        tokens = self.tokenizer(list(captions)).to(self.device)
        return F.normalize(self.net.encode_text(tokens).float(), dim=-1)


def _read_clip_state_dict(file: Path) -> dict[str, Tensor]:
    if _is_torchscript(file):  # OpenAI's own ViT-B-32.pt is a TorchScript archive
        state = dict(_jit_load(file, "clip").state_dict())
        # Constants of OpenAI's archive, and the causal mask a traced open_clip model keeps: no weights.
        for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
            state.pop(key, None)
        return state
    try:
        if file.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user mistake
        raise WeightsError(f"cannot read CLIP checkpoint {file}: expected {PUBLISHED['clip']} ({err})") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise WeightsError(f"CLIP checkpoint {file} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def load_clip(path: PathLike | None, model_name: str = "ViT-B-32", quick_gelu: bool = True) -> ClipDetector:
    """A CLIP model (open_clip `model_name`, QuickGELU for OpenAI's weights) from a local checkpoint file."""
    import open_clip  # noqa: PLC0415 - slow import, only needed when a CLIP metric is configured

    file = _require_file(path, "clip")
    if open_clip.get_model_config(model_name) is None:
        raise WeightsError(
            f"unknown open_clip model {model_name!r}; use one of open_clip.list_models(), e.g. 'ViT-B-32'"
        )
    # open_clip logs "initialized randomly" for pretrained=None; the weights are loaded just below.
    quiet = _DropMessage("initialized randomly")
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    finally:
        logging.getLogger().removeFilter(quiet)
    state = _read_clip_state_dict(file)
    if "logit_scale" in state and state["logit_scale"].numel() == 1:  # scalar in some releases, (1,) in others
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise WeightsError(f"CLIP checkpoint {file} does not fit open_clip {model_name!r}: {str(err)[:500]}") from err
    missing = [k for k in result.missing_keys if k != "logit_bias"]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"CLIP checkpoint {file} does not fit open_clip {model_name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
    identity = DetectorId("clip", str(file.resolve()), file_sha256(file))
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipDetector(model, identity, tokenizer, open_clip.get_model_preprocess_cfg(model))


def as_uint8(x: Tensor) -> Tensor:
    """uint8 as given; float in [0, 1] quantised to uint8 the way frames are saved (round to nearest)."""
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise DataError(f"metric inputs must be uint8 or float in [0, 1], not {x.dtype}")
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def video_clip(videos: Tensor, num_frames: int) -> Tensor:
    """dv videos (B, T, H, W, 3) -> the video detectors' uint8 (B, 3, num_frames, H, W): the first num_frames frames."""
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise DataError(f"videos must be (B, T, H, W, 3), got {tuple(videos.shape)}")
    if videos.shape[1] < num_frames:
        raise DataError(f"videos have {videos.shape[1]} frames; the detector takes {num_frames} consecutive frames")
    return rearrange(as_uint8(videos[:, :num_frames]), "b t h w c -> b c t h w").contiguous()
