"""Key names of the original ModelScope text-to-video U-Net mapped to diffusers' UNet3DConditionModel.

The facts follow diffusers' scripts/convert_ms_text_to_video_to_diffusers.py and the layout of
ModelScope's UNetSD (modelscope/models/multi_modal/video_synthesis/unet_sd.py):

- `input_blocks.0` = [conv_in, temporal transformer]; every later input block is either
  [ResBlock, SpatialTransformer?, TemporalTransformer?] or a bare Downsample (`input_blocks.{i}.op`).
- `middle_block` = [ResBlock, SpatialTransformer, TemporalTransformer, ResBlock].
- `output_blocks.{i}` = [ResBlock, SpatialTransformer?, TemporalTransformer?, Upsample?].
- Each ResBlock holds its temporal conv as `temopral_conv` (sic), which diffusers keeps apart
  as `temp_convs`; temporal transformers use Conv1d projections where diffusers has Linear.
"""

from __future__ import annotations

import re

from torch import Tensor

# Prefixes the original release or its training wrappers put in front of the U-Net's own names.
STRIP_PREFIXES = ("model.diffusion_model.", "module.")

_RESNET_RENAMES = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("emb_layers.1.", "time_emb_proj."),
    ("skip_connection.", "conv_shortcut."),
)
_FIXED = {
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
}
_BLOCK_KEY = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\w+)\.(.+)$")


def looks_like_modelscope_unet(keys: list[str]) -> bool:
    """True when the keys follow the original ModelScope (LDM-style) U-Net naming."""
    return any(_strip(k).startswith(("input_blocks.", "middle_block.")) for k in keys)


def convert_modelscope_unet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original ModelScope U-Net state dict to diffusers' UNet3DConditionModel names."""
    sd = {_strip(k): v for k, v in state_dict.items()}
    rules = dict(_FIXED)
    rules["input_blocks.0.1."] = ("transformer_in.", "temporal", None)
    rules.update(_down_rules(sd))
    rules.update(_mid_rules())
    rules.update(_up_rules(sd))
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new_key, value = _rename(key, value, rules)
        out[new_key] = value
    return out


def _strip(key: str) -> str:
    for prefix in STRIP_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _sub_modules(sd: dict[str, Tensor], section: str) -> dict[int, dict[str, set[str]]]:
    """{block index: {sub-module name: {parameter names below it}}} of input_blocks/output_blocks."""
    blocks: dict[int, dict[str, set[str]]] = {}
    for key in sd:
        match = _BLOCK_KEY.match(key)
        if match and match.group(1) == section:
            blocks.setdefault(int(match.group(2)), {}).setdefault(match.group(3), set()).add(match.group(4))
    return blocks


def _down_rules(sd: dict[str, Tensor]) -> dict[str, tuple[str, str, int | None]]:
    # Walk the input blocks in order: a bare Downsample closes a diffusers down block, so the
    # layers per block come from the checkpoint itself instead of a config.
    rules: dict[str, tuple[str, str, int | None]] = {}
    block, layer = 0, 0
    for i, subs in sorted(_sub_modules(sd, "input_blocks").items()):
        if i == 0:
            continue
        if "op" in subs:
            rules[f"input_blocks.{i}.op."] = (f"down_blocks.{block}.downsamplers.0.conv.", "plain", None)
            block, layer = block + 1, 0
            continue
        rules[f"input_blocks.{i}.0."] = (f"down_blocks.{block}.", "resnet", layer)
        rules[f"input_blocks.{i}.1."] = (f"down_blocks.{block}.attentions.{layer}.", "plain", None)
        rules[f"input_blocks.{i}.2."] = (f"down_blocks.{block}.temp_attentions.{layer}.", "temporal", None)
        layer += 1
    return rules


def _mid_rules() -> dict[str, tuple[str, str, int | None]]:
    return {
        "middle_block.0.": ("mid_block.", "resnet", 0),
        "middle_block.1.": ("mid_block.attentions.0.", "plain", None),
        "middle_block.2.": ("mid_block.temp_attentions.0.", "temporal", None),
        "middle_block.3.": ("mid_block.", "resnet", 1),
    }


def _up_rules(sd: dict[str, Tensor]) -> dict[str, tuple[str, str, int | None]]:
    # An Upsample (a sub-module holding only conv.weight/conv.bias) closes a diffusers up block.
    rules: dict[str, tuple[str, str, int | None]] = {}
    block, layer = 0, 0
    for i, subs in sorted(_sub_modules(sd, "output_blocks").items()):
        upsampled = False
        for name, params in subs.items():
            prefix = f"output_blocks.{i}.{name}."
            if name == "0":
                rules[prefix] = (f"up_blocks.{block}.", "resnet", layer)
            elif params == {"conv.weight", "conv.bias"}:
                rules[prefix] = (f"up_blocks.{block}.upsamplers.0.", "plain", None)
                upsampled = True
            elif name == "1":
                rules[prefix] = (f"up_blocks.{block}.attentions.{layer}.", "plain", None)
            elif name == "2":
                rules[prefix] = (f"up_blocks.{block}.temp_attentions.{layer}.", "temporal", None)
        block, layer = (block + 1, 0) if upsampled else (block, layer + 1)
    return rules


def _rename(key: str, value: Tensor, rules: dict) -> tuple[str, Tensor]:
    """The diffusers name (and layout) of one original key; unknown keys pass unchanged."""
    parts = key.split(".")
    for n in (3, 2):
        prefix = ".".join(parts[:n]) + "."
        rule = rules.get(prefix)
        if rule is None:
            continue
        rest = key[len(prefix) :]
        if isinstance(rule, str):
            return rule + rest, value
        new_prefix, kind, layer = rule
        if kind == "resnet":
            if rest.startswith("temopral_conv."):
                return f"{new_prefix}temp_convs.{layer}.{rest[len('temopral_conv.') :]}", value
            for old, new in _RESNET_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            return f"{new_prefix}resnets.{layer}.{rest}", value
        if kind == "temporal" and rest in ("proj_in.weight", "proj_out.weight") and value.ndim == 3:
            # Conv1d with kernel 1 in the original, Linear in diffusers.
            value = value[:, :, 0]
        return new_prefix + rest, value
    return key, value
