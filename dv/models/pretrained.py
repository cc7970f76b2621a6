"""Loading local weights: diffusers folders, ModelScope originals, OpenCLIP checkpoints, dv exports.

Nothing here downloads: every path is a local file or folder, and a missing one is a
WeightsError naming what is expected and where such weights are published. Files are read
with safetensors, or with `torch.load(weights_only=True)` (never arbitrary unpickling), and
keys and shapes are checked before anything is copied into a model.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from dv import __version__ as DV_VERSION
from dv.atomic import atomic_write
from dv.errors import WeightsError
from dv.models.modelscope_keys import convert_modelscope_unet, looks_like_modelscope_unet
from dv.models.trainable import export_part

__all__ = [
    "convert_ldm_vae",
    "convert_modelscope_unet",
    "load_diffusers_unet",
    "load_diffusers_vae",
    "load_dv_weights",
    "load_into",
    "load_modelscope_unet",
    "load_modelscope_vae",
    "load_open_clip",
    "load_open_clip_vision",
    "load_unet_weights",
    "load_vae_weights",
    "read_state_dict",
    "save_dv_weights",
]

PathLike = str | os.PathLike

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
DIFFUSERS_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.fp16.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.fp16.bin",
    "diffusion_pytorch_model.bin.index.fp16.json",
)
"""File names tried, in order, inside a diffusers model folder (safetensors first, fp16 variants after)."""
MODELSCOPE_UNET_FILES = ("text2video_pytorch_model.pth",)
MODELSCOPE_VAE_FILES = ("VQGAN_autoencoder.pth",)
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

PUBLISHED_UNET = (
    "a local copy of the `unet/` folder of ali-vilab/text-to-video-ms-1.7b from the Hugging Face Hub, or "
    "text2video_pytorch_model.pth of damo-vilab/modelscope-damo-text-to-video-synthesis"
)
PUBLISHED_VAE = (
    "a local copy of the `vae/` folder of ali-vilab/text-to-video-ms-1.7b from the Hugging Face Hub, or "
    "VQGAN_autoencoder.pth of damo-vilab/modelscope-damo-text-to-video-synthesis"
)
PUBLISHED_OPEN_CLIP = "open_clip_pytorch_model.bin of laion/CLIP-ViT-H-14-laion2B-s32B-b79K from the Hugging Face Hub"
PUBLISHED_DV = "a .safetensors export written by dv (save_dv_weights) at the end of a training run"

UNET_ARCH_KEYS = (
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "cross_attention_dim", "attention_head_dim", "num_attention_heads", "norm_num_groups",
)  # fmt: skip
VAE_ARCH_KEYS = (
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "latent_channels", "norm_num_groups", "scaling_factor",
)  # fmt: skip
"""Config keys that must agree between a diffusers folder's config.json and the model built
(scaling_factor is not architecture, but a different one silently rescales every latent)."""

# Wrappers that training frameworks put around a state dict: Lightning, DDP/EMA tools, others.
_CONTAINER_KEYS = ("state_dict", "model", "module")
_SHOW = 10


def read_state_dict(
    path: PathLike, *, file_names: Sequence[str] = DIFFUSERS_FILES, published: str = PUBLISHED_UNET
) -> dict[str, Tensor]:
    """Read a weights file, shard index or model folder into a flat CPU state dict, never unpickling objects."""
    path = Path(path)
    if path.is_dir():
        for name in file_names:
            if (path / name).is_file():
                return read_state_dict(path / name, file_names=file_names, published=published)
        raise WeightsError(f"Weights folder {path} holds none of {', '.join(file_names)}; expected {published}.")
    if not path.is_file():
        raise WeightsError(
            f"Weights not found at {path}: expected a weights file ({', '.join(('.safetensors',) + TORCH_SUFFIXES)}) "
            f"or a folder holding one of {', '.join(file_names)}, such as {published}."
        )
    if path.name.endswith(".json"):
        return _read_sharded(path)
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error type for a bad header
            raise WeightsError(f"{path} cannot be read as safetensors ({err}); the file may be truncated.") from err
    if path.suffix in TORCH_SUFFIXES:
        return _unwrap(_torch_load(path), path)
    raise WeightsError(
        f"{path} has an unknown weights format: use .safetensors, {', '.join(TORCH_SUFFIXES)}, "
        f"a *.index.json of shards, or a model folder."
    )


def _torch_load(path: Path) -> object:
    # mmap keeps multi-GB originals (e.g. VQGAN_autoencoder.pth) out of RAM until copied; it
    # only works for the zip format, so legacy-format files are read whole.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:
        # weights_only refuses a pickled class or function by naming the blocked GLOBAL.
        if "global" in str(err).lower():
            raise WeightsError(
                f"{path} holds pickled Python objects that dv will not unpickle: if you trust the file, load it "
                f"yourself with weights_only disabled and save its state dict with "
                f"safetensors.torch.save_file(state_dict, 'weights.safetensors')."
            ) from err
        raise WeightsError(f"{path} cannot be read as a PyTorch checkpoint ({err}); the file may be corrupt.") from err


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    """The flat tensor dict inside a checkpoint (Lightning `state_dict`, `model`, `module` wrappers)."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    others = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if others:
        raise WeightsError(f"{path} holds entries that are not tensors: {_names(others)}; save a plain state dict.")
    return dict(obj)


def _read_sharded(index: Path) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{index} is not a shard index (a JSON object with a 'weight_map').") from err
    state_dict: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (index.parent / shard).is_file():
            raise WeightsError(f"{index} lists shard {shard}, which is missing from {index.parent}.")
        state_dict.update(read_state_dict(index.parent / shard))
    absent = sorted(set(weight_map) - set(state_dict))
    if absent:
        raise WeightsError(f"{index} maps {len(absent)} keys its shards lack: {_names(absent)}.")
    return state_dict


def _names(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    strict: bool = True,
    prefix_strip: str | None = None,
    skip_prefixes: Sequence[str] = (),
) -> None:
    """Copy a state dict into a module after checking every key and shape; WeightsError on mismatch."""
    if prefix_strip:
        state_dict = {k[len(prefix_strip) :]: v for k, v in state_dict.items() if k.startswith(prefix_strip)}
        if not state_dict:
            raise WeightsError(f"{source} has no keys under {prefix_strip!r}.")
    # strict=False allows module keys the file lacks (a partial export); unexpected keys and
    # wrong shapes are errors either way. Keys under skip_prefixes are neither needed nor loaded.
    skip = tuple(skip_prefixes)
    expected = {k: v for k, v in module.state_dict().items() if not k.startswith(skip)}
    given = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
    missing = sorted(set(expected) - set(given)) if strict else []
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(given) & set(expected))
        if given[k].shape != expected[k].shape
    ]
    found = (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes, file vs model", wrong))
    problems = [f"{label} ({len(keys)}): {_names(keys)}" for label, keys in found if keys]
    if problems:
        raise WeightsError(f"{source} does not fit the {type(module).__name__} built here: {'; '.join(problems)}.")
    cast = {
        k: v.to(expected[k].dtype) if v.is_floating_point() and expected[k].is_floating_point() else v
        for k, v in given.items()
    }
    # A module built on the meta device has no storage to copy into: assign the tensors instead.
    assign = any(t.is_meta for t in expected.values())
    module.load_state_dict(cast, strict=strict and not skip, assign=assign)


def _check_config(path: Path, model: nn.Module, keys: Sequence[str]) -> None:
    """Compare a diffusers folder's config.json with the model's config on the architecture keys."""
    config_path = (path if path.is_dir() else path.parent) / "config.json"
    model_config = getattr(model, "config", None)
    if model_config is None or not config_path.is_file():
        return
    try:
        saved = json.loads(config_path.read_text())
    except ValueError as err:
        raise WeightsError(f"{config_path} is not valid JSON ({err}).") from err
    class_name = saved.get("_class_name")
    if class_name and class_name not in {c.__name__ for c in type(model).__mro__}:
        raise WeightsError(f"{config_path} describes a {class_name}, not a {type(model).__name__}.")
    # JSON round trip so tuples in the model config compare equal to lists in the file.
    built = json.loads(json.dumps({k: model_config[k] for k in keys if k in model_config}, default=str))
    diffs = [f"{k} {saved[k]} vs {built[k]}" for k in keys if k in saved and k in built and saved[k] != built[k]]
    if diffs:
        raise WeightsError(
            f"{config_path} describes a different {type(model).__name__} than the one built "
            f"(file vs model: {'; '.join(diffs)}); make the model config match the weights."
        )


def load_diffusers_unet(path: PathLike, unet: nn.Module) -> None:
    """Load a diffusers `unet/` folder (or one of its weight files) into a UNet3DConditionModel."""
    path = Path(path)
    _check_config(path, unet, UNET_ARCH_KEYS)
    state_dict = read_state_dict(path, file_names=DIFFUSERS_FILES, published=PUBLISHED_UNET)
    load_into(unet, state_dict, source=str(path))


def load_diffusers_vae(path: PathLike, vae: nn.Module) -> None:
    """Load a diffusers `vae/` folder (or one of its weight files) into an AutoencoderKL."""
    path = Path(path)
    _check_config(path, vae, VAE_ARCH_KEYS)
    state_dict = read_state_dict(path, file_names=DIFFUSERS_FILES, published=PUBLISHED_VAE)
    load_into(vae, state_dict, source=str(path))


def load_modelscope_unet(path: PathLike, unet: nn.Module) -> None:
    """Load ModelScope's original text2video_pytorch_model.pth into a UNet3DConditionModel."""
    state_dict = read_state_dict(path, file_names=MODELSCOPE_UNET_FILES, published=PUBLISHED_UNET)
    load_into(unet, convert_modelscope_unet(state_dict), source=str(path))


def convert_ldm_vae(state_dict: Mapping[str, Tensor], vae: nn.Module) -> dict[str, Tensor]:
    """Rename an LDM/Stable-Diffusion autoencoder state dict to diffusers' AutoencoderKL names."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    # diffusers keeps only `first_stage_model.` (or `vae.`) keys when a whole LDM checkpoint is
    # given, which is what ModelScope's VQGAN_autoencoder.pth is (its loader does the same).
    return convert_ldm_vae_checkpoint(dict(state_dict), dict(vae.config))


def load_modelscope_vae(path: PathLike, vae: nn.Module) -> None:
    """Load ModelScope's VQGAN_autoencoder.pth (an SD-style KL autoencoder) into an AutoencoderKL."""
    state_dict = read_state_dict(path, file_names=MODELSCOPE_VAE_FILES, published=PUBLISHED_VAE)
    load_into(vae, convert_ldm_vae(state_dict, vae), source=str(path))


def _is_diffusers_folder(path: Path) -> bool:
    return any((path / name).is_file() for name in DIFFUSERS_FILES)


def load_unet_weights(path: PathLike, unet: nn.Module) -> None:
    """Load U-Net weights of any supported kind: diffusers folder/file, ModelScope original, dv export."""
    path = Path(path)
    if path.is_dir():
        if _is_diffusers_folder(path) or not (path / MODELSCOPE_UNET_FILES[0]).is_file():
            load_diffusers_unet(path, unet)
        else:
            load_modelscope_unet(path, unet)
        return
    if _is_dv_export(path):
        load_dv_weights(path, unet, part="unet")
        return
    state_dict = read_state_dict(path, published=PUBLISHED_UNET)
    if looks_like_modelscope_unet(list(state_dict)):
        state_dict = convert_modelscope_unet(state_dict)
    else:
        _check_config(path, unet, UNET_ARCH_KEYS)
    load_into(unet, state_dict, source=str(path))


def _looks_like_ldm_vae(keys: Sequence[str]) -> bool:
    return any(k.startswith(("first_stage_model.", "encoder.down.", "decoder.up.")) for k in keys)


def load_vae_weights(path: PathLike, vae: nn.Module) -> None:
    """Load autoencoder weights of any supported kind: diffusers folder/file or an LDM/ModelScope file."""
    path = Path(path)
    if path.is_dir():
        if _is_diffusers_folder(path) or not (path / MODELSCOPE_VAE_FILES[0]).is_file():
            load_diffusers_vae(path, vae)
        else:
            load_modelscope_vae(path, vae)
        return
    state_dict = read_state_dict(path, published=PUBLISHED_VAE)
    if _looks_like_ldm_vae(list(state_dict)):
        state_dict = convert_ldm_vae(state_dict, vae)
    else:
        _check_config(path, vae, VAE_ARCH_KEYS)
    load_into(vae, state_dict, source=str(path))


def load_open_clip(path: PathLike, model: nn.Module, *, text_only: bool = False) -> None:
    """Load an OpenCLIP checkpoint into an open_clip model, or only its text tower (`text_only`)."""
    state_dict = read_state_dict(path, file_names=OPEN_CLIP_FILES, published=PUBLISHED_OPEN_CLIP)
    if all(k.startswith("module.") for k in state_dict):  # saved from a DDP-wrapped model
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    target = model.state_dict()
    if "positional_embedding" in state_dict and "text.positional_embedding" in target:
        from open_clip.model import convert_to_custom_text_state_dict

        state_dict = convert_to_custom_text_state_dict(state_dict)
    elif "text.positional_embedding" in state_dict and "positional_embedding" in target:
        # A CustomTextCLIP checkpoint loaded into a bare text tower.
        state_dict = {k[len("text.") :] if k.startswith("text.") else k: v for k, v in state_dict.items()}
    has_visual = any(k.startswith("visual.") for k in target)
    if text_only or not has_visual:
        # The CLIP-level scalars belong to the joint model, not to a bare text tower.
        state_dict = {
            k: v
            for k, v in state_dict.items()
            if not k.startswith("visual.") and (k in target or k not in ("logit_scale", "logit_bias"))
        }
    for key in ("logit_scale", "logit_bias"):  # scalar vs (1,) differs across open_clip versions
        if key in state_dict and key in target and state_dict[key].numel() == target[key].numel():
            state_dict[key] = state_dict[key].reshape(target[key].shape)
    skip = ("visual.",) if text_only and has_visual else ()
    load_into(model, state_dict, source=str(path), skip_prefixes=skip)


def load_open_clip_vision(path: PathLike, tower: nn.Module) -> None:
    """Load the vision tower (`visual.*` weights) of an OpenCLIP checkpoint into a bare open_clip vision tower."""
    state_dict = read_state_dict(path, file_names=OPEN_CLIP_FILES, published=PUBLISHED_OPEN_CLIP)
    if all(k.startswith("module.") for k in state_dict):  # saved from a DDP-wrapped model
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    load_into(tower, state_dict, source=str(path), prefix_strip="visual.")


def _is_dv_export(path: Path) -> bool:
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format") == "dv"
    except Exception:  # an unreadable file is reported by whichever reader handles it next
        return False


def load_dv_weights(path: PathLike, module: nn.Module, part: str | None = None) -> dict[str, str]:
    """Load a dv safetensors export (trained weights only) into a module; returns its metadata.

    Exports name their tensors by part ('unet.*', 'branch.*'); `part` loads only that part's tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights not found at {path}: expected {PUBLISHED_DV}.")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path} is not a dv weights export: dv writes .safetensors files ({PUBLISHED_DV}).")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise WeightsError(f"{path} cannot be read as safetensors ({err}); the file may be truncated.") from err
    if metadata.get("format") != "dv":
        raise WeightsError(
            f"{path} is not a dv weights export (its metadata lacks format=dv); load it as a diffusers, "
            f"ModelScope or OpenCLIP file instead."
        )
    # The file holds the trained parameters only: every one must fit, the frozen rest stays.
    prefix = f"{part}." if part else None
    if part and not any(export_part(k) == part for k in state_dict):
        raise WeightsError(f"{path} holds no '{part}' weights (its parts: {metadata.get('parts', '?')}).")
    load_into(module, state_dict, source=str(path), strict=False, prefix_strip=prefix)
    return metadata


def save_dv_weights(path: PathLike, state_dict: Mapping[str, Tensor], metadata: Mapping[str, object]) -> None:
    """Write a dv safetensors export atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta = {"dv_version": DV_VERSION, **meta, "format": "dv"}
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        value = value.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing storage (tied weights): give each its own.
        if value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        tensors[key] = value
    with atomic_write(path) as tmp:  # whole or not at all; mode 0666 less the umask
        safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
