"""Local weight loading: diffusers folders, ModelScope originals, OpenCLIP checkpoints, dv exports."""

from __future__ import annotations

import json
import os

import open_clip
import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from open_clip.model import CLIPTextCfg, _build_text_tower

from dv.errors import WeightsError
from dv.models import pretrained
from dv.models.pretrained import (
    convert_modelscope_unet,
    load_diffusers_unet,
    load_diffusers_vae,
    load_dv_weights,
    load_into,
    load_modelscope_unet,
    load_modelscope_vae,
    load_open_clip,
    load_unet_weights,
    load_vae_weights,
    read_state_dict,
    save_dv_weights,
)

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=16,
    attention_head_dim=8,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)
TINY_CLIP = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, layers=1, width=32, head_width=16, patch_size=16),
    text_cfg=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=2),
)


def make_unet(seed: int, **overrides) -> UNet3DConditionModel:
    torch.manual_seed(seed)
    return UNet3DConditionModel(**{**TINY_UNET, **overrides}).eval()


def make_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE).eval()


def unet_output(unet: UNet3DConditionModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 2, 8, 8, generator=g)  # (B, C, T, H, W)
    text = torch.randn(1, 3, 16, generator=g)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=text).sample


def vae_output(vae: AutoencoderKL) -> torch.Tensor:
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return vae.decode(vae.encode(image).latent_dist.mean).sample


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.startswith(skip):
            assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------- diffusers folders


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_diffusers_unet_folder_loads_every_key(tmp_path, safe):
    source = make_unet(0)
    source.save_pretrained(tmp_path / "unet", safe_serialization=safe)
    target = make_unet(1)
    assert not torch.equal(source.conv_in.weight, target.conv_in.weight)
    assert read_state_dict(tmp_path / "unet").keys() == target.state_dict().keys()
    load_diffusers_unet(tmp_path / "unet", target)
    assert_same_weights(source, target)
    assert torch.equal(unet_output(source), unet_output(target))


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_diffusers_vae_folder_loads_every_key(tmp_path, safe):
    source = make_vae(0)
    source.save_pretrained(tmp_path / "vae", safe_serialization=safe)
    target = make_vae(1)
    load_diffusers_vae(tmp_path / "vae", target)
    assert_same_weights(source, target)
    assert torch.equal(vae_output(source), vae_output(target))


def test_sharded_folder_and_dispatch(tmp_path):
    source = make_unet(0)
    source.save_pretrained(tmp_path / "unet", max_shard_size="200KB")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    target = make_unet(1)
    load_unet_weights(tmp_path / "unet", target)
    assert_same_weights(source, target)


def test_folder_config_must_match_the_model(tmp_path):
    make_unet(0).save_pretrained(tmp_path / "unet")
    with pytest.raises(WeightsError, match=r"config\.json.*layers_per_block 1 vs 2"):
        load_diffusers_unet(tmp_path / "unet", make_unet(1, layers_per_block=2))


def test_wrong_missing_and_unexpected_keys_are_named(tmp_path):
    state = dict(make_unet(0).state_dict())
    state["conv_in.weight"] = torch.zeros(32, 4, 1, 1)
    del state["conv_out.bias"]
    state["not.a.key"] = torch.zeros(1)
    safetensors.torch.save_file(state, tmp_path / "unet.safetensors")
    target = make_unet(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_diffusers_unet(tmp_path / "unet.safetensors", target)
    message = str(err.value)
    assert str(tmp_path / "unet.safetensors") in message
    assert "conv_in.weight (32, 4, 1, 1) vs (32, 4, 3, 3)" in message
    assert "missing keys (1): conv_out.bias" in message and "unexpected keys (1): not.a.key" in message
    # Checked before copying: nothing was half-loaded.
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_paths_name_the_file_and_where_it_is_published(tmp_path):
    with pytest.raises(WeightsError, match=r"nowhere.*text-to-video-ms-1\.7b"):
        load_diffusers_unet(tmp_path / "nowhere", make_unet(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=r"empty holds none of diffusion_pytorch_model\.safetensors"):
        read_state_dict(tmp_path / "empty")
    with pytest.raises(WeightsError, match="laion/CLIP-ViT-H-14"):
        load_open_clip(tmp_path / "nowhere.bin", _build_text_tower(16, CLIPTextCfg(**TINY_CLIP["text_cfg"])))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_objects_are_refused_unexecuted(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"w": torch.zeros(2), "payload": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="pickled Python objects.*safetensors"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(os.urandom(256))
    with pytest.raises(WeightsError, match="cannot be read"):
        read_state_dict(tmp_path / "junk.pth")


def test_containers_are_unwrapped_and_prefixes_selected(tmp_path):
    source = make_unet(0)
    wrapped = {f"unet.{k}": v for k, v in source.state_dict().items()}
    wrapped["retention.w"] = torch.zeros(1)
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "last.ckpt")
    torch.save({"model": dict(source.state_dict())}, tmp_path / "model.pt")
    assert read_state_dict(tmp_path / "model.pt").keys() == source.state_dict().keys()
    target = make_unet(1).half()
    load_into(target, read_state_dict(tmp_path / "last.ckpt"), source="last.ckpt", prefix_strip="unet.")
    assert target.conv_in.weight.dtype == torch.float16
    assert torch.equal(target.conv_in.weight, source.conv_in.weight.half())


# ---------------------------------------------------------------- ModelScope originals


def modelscope_unet_shapes(
    in_dim=4, dim=32, out_dim=4, dim_mult=(1, 2), num_heads=8, head_dim=8, num_res_blocks=1, attn_scales=(1.0,),
    context_dim=16,
) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """Parameter shapes of ModelScope's UNetSD, written from its __init__ (unet_sd.py), not from dv's mapping.

    One liberty: the original hard-codes context_dim=1024 in the decoder's spatial transformers.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(p, i, o, bias=True):
        shapes[p + "weight"] = (o, i)
        if bias:
            shapes[p + "bias"] = (o,)

    def conv(p, i, o, *kernel):
        shapes[p + "weight"], shapes[p + "bias"] = (o, i, *kernel), (o,)

    def norm(p, c):
        shapes[p + "weight"], shapes[p + "bias"] = (c,), (c,)

    def res_block(p, cin, cout):  # ResBlock with its TemporalConvBlock_v2 `temopral_conv`
        norm(p + "in_layers.0.", cin), conv(p + "in_layers.2.", cin, cout, 3, 3)
        linear(p + "emb_layers.1.", 4 * dim, cout)
        norm(p + "out_layers.0.", cout), conv(p + "out_layers.3.", cout, cout, 3, 3)
        if cin != cout:
            conv(p + "skip_connection.", cin, cout, 1, 1)
        norm(p + "temopral_conv.conv1.0.", cout), conv(p + "temopral_conv.conv1.2.", cout, cout, 3, 1, 1)
        for n in (2, 3, 4):
            norm(p + f"temopral_conv.conv{n}.0.", cout), conv(p + f"temopral_conv.conv{n}.3.", cout, cout, 3, 1, 1)

    def transformer(p, c, heads, temporal):  # Spatial (Linear proj) / TemporalTransformer (Conv1d proj)
        inner = heads * head_dim
        norm(p + "norm.", c)
        conv(p + "proj_in.", c, inner, 1) if temporal else linear(p + "proj_in.", c, inner)
        b = p + "transformer_blocks.0."
        for attn, kv_dim in (("attn1", inner), ("attn2", inner if temporal else context_dim)):
            linear(f"{b}{attn}.to_q.", inner, inner, bias=False)
            linear(f"{b}{attn}.to_k.", kv_dim, inner, bias=False)
            linear(f"{b}{attn}.to_v.", kv_dim, inner, bias=False)
            linear(f"{b}{attn}.to_out.0.", inner, inner)
        linear(b + "ff.net.0.proj.", inner, inner * 8), linear(b + "ff.net.2.", inner * 4, inner)
        for n in (1, 2, 3):
            norm(f"{b}norm{n}.", inner)
        conv(p + "proj_out.", inner, c, 1) if temporal else linear(p + "proj_out.", c, inner)

    enc_dims = [dim * u for u in (1, *dim_mult)]
    dec_dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
    linear("time_embed.0.", dim, 4 * dim), linear("time_embed.2.", 4 * dim, 4 * dim)
    conv("input_blocks.0.0.", in_dim, dim, 3, 3)
    transformer("input_blocks.0.1.", dim, num_heads, temporal=True)
    shortcut, scale, idx = [dim], 1.0, 1
    for i, (cin, cout) in enumerate(zip(enc_dims[:-1], enc_dims[1:])):
        for j in range(num_res_blocks):
            res_block(f"input_blocks.{idx}.0.", cin, cout)
            if scale in attn_scales:
                transformer(f"input_blocks.{idx}.1.", cout, cout // head_dim, temporal=False)
                transformer(f"input_blocks.{idx}.2.", cout, cout // head_dim, temporal=True)
            cin, idx = cout, idx + 1
            shortcut.append(cout)
            if i != len(dim_mult) - 1 and j == num_res_blocks - 1:
                conv(f"input_blocks.{idx}.op.", cout, cout, 3, 3)
                shortcut.append(cout)
                scale, idx = scale / 2, idx + 1
    res_block("middle_block.0.", cout, cout)
    transformer("middle_block.1.", cout, cout // head_dim, temporal=False)
    transformer("middle_block.2.", cout, cout // head_dim, temporal=True)
    res_block("middle_block.3.", cout, cout)
    idx = 0
    for i, (cin, cout) in enumerate(zip(dec_dims[:-1], dec_dims[1:])):
        for j in range(num_res_blocks + 1):
            res_block(f"output_blocks.{idx}.0.", cin + shortcut.pop(), cout)
            sub = 1
            if scale in attn_scales:
                transformer(f"output_blocks.{idx}.1.", cout, cout // head_dim, temporal=False)
                transformer(f"output_blocks.{idx}.2.", cout, cout // head_dim, temporal=True)
                sub = 3
            cin = cout
            if i != len(dim_mult) - 1 and j == num_res_blocks:
                conv(f"output_blocks.{idx}.{sub}.conv.", cout, cout, 3, 3)
                scale *= 2
            idx += 1
    norm("out.0.", cout), conv("out.2.", cout, out_dim, 3, 3)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {prefix + k: torch.randn(s, generator=g) for k, s in shapes.items()}


# Original name -> diffusers name, read off convert_ms_text_to_video_to_diffusers.py for this layout.
MODELSCOPE_PAIRS = {
    "time_embed.2.weight": "time_embedding.linear_2.weight",
    "input_blocks.0.0.weight": "conv_in.weight",
    "input_blocks.0.1.transformer_blocks.0.attn1.to_q.weight": (
        "transformer_in.transformer_blocks.0.attn1.to_q.weight"
    ),
    "input_blocks.1.0.in_layers.2.weight": "down_blocks.0.resnets.0.conv1.weight",
    "input_blocks.1.0.emb_layers.1.bias": "down_blocks.0.resnets.0.time_emb_proj.bias",
    "input_blocks.1.0.temopral_conv.conv4.3.weight": "down_blocks.0.temp_convs.0.conv4.3.weight",
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    ),
    "input_blocks.1.2.norm.bias": "down_blocks.0.temp_attentions.0.norm.bias",
    "input_blocks.2.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
    "input_blocks.3.0.skip_connection.weight": "down_blocks.1.resnets.0.conv_shortcut.weight",
    "middle_block.0.out_layers.3.weight": "mid_block.resnets.0.conv2.weight",
    "middle_block.1.proj_in.weight": "mid_block.attentions.0.proj_in.weight",
    "middle_block.2.transformer_blocks.0.ff.net.2.weight": (
        "mid_block.temp_attentions.0.transformer_blocks.0.ff.net.2.weight"
    ),
    "middle_block.3.temopral_conv.conv1.0.weight": "mid_block.temp_convs.1.conv1.0.weight",
    "output_blocks.0.0.out_layers.0.weight": "up_blocks.0.resnets.0.norm2.weight",
    "output_blocks.1.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
    "output_blocks.2.0.temopral_conv.conv2.3.bias": "up_blocks.1.temp_convs.0.conv2.3.bias",
    "output_blocks.3.1.norm.weight": "up_blocks.1.attentions.1.norm.weight",
    "output_blocks.3.2.transformer_blocks.0.norm3.bias": (
        "up_blocks.1.temp_attentions.1.transformer_blocks.0.norm3.bias"
    ),
    "out.0.weight": "conv_norm_out.weight",
    "out.2.bias": "conv_out.bias",
}


def test_modelscope_unet_names_map_to_diffusers():
    original = random_state(modelscope_unet_shapes(), prefix="model.diffusion_model.")
    converted = convert_modelscope_unet(original)
    for old, new in MODELSCOPE_PAIRS.items():
        assert converted[new] is original["model.diffusion_model." + old], (old, new)
    # Conv1d (out, in, 1) projections of the temporal transformers become Linear weights.
    proj = original["model.diffusion_model.input_blocks.0.1.proj_in.weight"]
    assert proj.shape == (64, 32, 1)
    assert torch.equal(converted["transformer_in.proj_in.weight"], proj[:, :, 0])


def test_modelscope_unet_file_fills_every_diffusers_key(tmp_path):
    original = random_state(modelscope_unet_shapes())
    torch.save(original, tmp_path / "text2video_pytorch_model.pth")
    unet = make_unet(1)
    load_modelscope_unet(tmp_path, unet)  # strict: every key used, every shape equal
    shortcut = original["input_blocks.3.0.skip_connection.weight"]
    assert torch.equal(unet.down_blocks[1].resnets[0].conv_shortcut.weight, shortcut)
    other = make_unet(2)
    load_unet_weights(tmp_path / "text2video_pytorch_model.pth", other)
    assert_same_weights(unet, other)


def test_modelscope_unet_full_size_layout_on_meta():
    # The released 1.7B layout (4 levels, 2 layers each, input blocks numbered past 9), shapes only.
    shapes = modelscope_unet_shapes(
        dim=320, dim_mult=(1, 2, 4, 4), num_heads=8, head_dim=64, num_res_blocks=2, attn_scales=(1.0, 0.5, 0.25),
        context_dim=1024,
    )  # fmt: skip
    with torch.device("meta"):
        unet = UNet3DConditionModel()  # diffusers' defaults are the text-to-video-ms-1.7b U-Net
        original = {k: torch.empty(s) for k, s in shapes.items()}
    converted = convert_modelscope_unet(original)
    assert converted["down_blocks.3.resnets.1.conv1.weight"] is original["input_blocks.11.0.in_layers.2.weight"]
    assert converted["up_blocks.2.upsamplers.0.conv.weight"] is original["output_blocks.8.3.conv.weight"]
    load_into(unet, converted, source="text2video_pytorch_model.pth")


def ldm_vae_shapes(ch=8, ch_mult=(1, 2), num_res_blocks=1, z=4) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the LDM AutoencoderKL in ModelScope's autoencoder.py (double_z, attention in mid only)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(p, i, o, k):
        shapes[p + "weight"], shapes[p + "bias"] = (o, i, k, k), (o,)

    def norm(p, c):
        shapes[p + "weight"], shapes[p + "bias"] = (c,), (c,)

    def resnet(p, cin, cout):
        norm(p + "norm1.", cin), conv(p + "conv1.", cin, cout, 3)
        norm(p + "norm2.", cout), conv(p + "conv2.", cout, cout, 3)
        if cin != cout:
            conv(p + "nin_shortcut.", cin, cout, 1)

    def mid(p, c):
        resnet(p + "mid.block_1.", c, c), resnet(p + "mid.block_2.", c, c), norm(p + "mid.attn_1.norm.", c)
        for name in ("q", "k", "v", "proj_out"):
            conv(f"{p}mid.attn_1.{name}.", c, c, 1)

    conv("encoder.conv_in.", 3, ch, 3)
    block_in = ch
    for level, mult in enumerate(ch_mult):
        for b in range(num_res_blocks):
            resnet(f"encoder.down.{level}.block.{b}.", block_in, ch * mult)
            block_in = ch * mult
        if level != len(ch_mult) - 1:
            conv(f"encoder.down.{level}.downsample.conv.", block_in, block_in, 3)
    mid("encoder.", block_in), norm("encoder.norm_out.", block_in), conv("encoder.conv_out.", block_in, 2 * z, 3)
    conv("decoder.conv_in.", z, block_in, 3), mid("decoder.", block_in)
    for level in reversed(range(len(ch_mult))):
        for b in range(num_res_blocks + 1):
            resnet(f"decoder.up.{level}.block.{b}.", block_in, ch * ch_mult[level])
            block_in = ch * ch_mult[level]
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv.", block_in, block_in, 3)
    norm("decoder.norm_out.", block_in), conv("decoder.conv_out.", block_in, 3, 3)
    conv("quant_conv.", 2 * z, 2 * z, 1), conv("post_quant_conv.", z, z, 1)
    return shapes


def test_modelscope_vae_checkpoint_loads(tmp_path):
    # VQGAN_autoencoder.pth is a whole LDM checkpoint; ModelScope keeps its first_stage_model.* keys.
    state = random_state(ldm_vae_shapes(), prefix="first_stage_model.")
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "global_step": 5}, tmp_path / "VQGAN_autoencoder.pth")
    vae = make_vae(1)
    load_modelscope_vae(tmp_path, vae)
    q = state["first_stage_model.decoder.mid.attn_1.q.weight"]
    assert torch.equal(vae.decoder.mid_block.attentions[0].to_q.weight, q[:, :, 0, 0])
    upsample = state["first_stage_model.decoder.up.1.upsample.conv.weight"]
    assert torch.equal(vae.decoder.up_blocks[0].upsamplers[0].conv.weight, upsample)
    other = make_vae(2)
    load_vae_weights(tmp_path / "VQGAN_autoencoder.pth", other)
    assert_same_weights(vae, other)


def test_sd_vae_full_size_layout_on_meta():
    from dv.models.autoencoder import SD_VAE

    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE)
        state = {f"first_stage_model.{k}": torch.empty(s) for k, s in ldm_vae_shapes(128, (1, 2, 4, 4), 2).items()}
    load_into(vae, pretrained.convert_ldm_vae(state, vae), source="VQGAN_autoencoder.pth")


# ---------------------------------------------------------------- OpenCLIP


@pytest.fixture(scope="module")
def clip_name(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / "dv-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "dv-test-tiny-clip.json")
    return "dv-test-tiny-clip"


def make_clip(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None).eval()


@pytest.mark.parametrize("file_name", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_open_clip_full_and_text_only(tmp_path, clip_name, file_name):
    source = make_clip(clip_name, 0)
    if file_name.endswith(".bin"):
        torch.save(source.state_dict(), tmp_path / file_name)
    else:
        safetensors.torch.save_file(source.state_dict(), tmp_path / file_name)
    full = make_clip(clip_name, 1)
    load_open_clip(tmp_path / file_name, full)
    assert_same_weights(source, full)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(full.encode_text(tokens), source.encode_text(tokens))

    fresh = make_clip(clip_name, 2)
    text_only = make_clip(clip_name, 2)
    load_open_clip(tmp_path, text_only, text_only=True)  # the folder: found by file name
    assert_same_weights(source, text_only, skip=("visual.",))
    assert_same_weights(fresh, text_only, skip=tuple(k for k in source.state_dict() if not k.startswith("visual.")))

    tower = _build_text_tower(TINY_CLIP["embed_dim"], CLIPTextCfg(**TINY_CLIP["text_cfg"]))
    load_open_clip(tmp_path / file_name, tower, text_only=True)  # dv's TextEncoder holds a bare text tower
    for key, value in tower.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_open_clip_mismatch_is_named(tmp_path, clip_name):
    state = dict(make_clip(clip_name, 0).state_dict())
    state["ln_final.weight"] = torch.ones(7)
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"ln_final\.weight \(7,\) vs \(32,\)"):
        load_open_clip(tmp_path / "open_clip_pytorch_model.bin", make_clip(clip_name, 1), text_only=True)


# ---------------------------------------------------------------- dv exports


def temporal_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in unet.state_dict().items() if "temp_" in k or "transformer_in" in k}


def test_dv_weights_round_trip(tmp_path):
    trained, fresh = make_unet(0), make_unet(1)
    path = tmp_path / "out" / "temporal.safetensors"
    exported = {f"unet.{k}": v for k, v in temporal_state(trained).items()}  # exports name tensors by part
    save_dv_weights(path, exported, {"parts": "unet", "step": 12})
    metadata = load_dv_weights(path, fresh, part="unet")
    assert metadata["format"] == "dv" and metadata["parts"] == "unet" and metadata["step"] == "12"
    with pytest.raises(WeightsError, match="no 'branch' weights"):
        load_dv_weights(path, make_unet(1), part="branch")
    assert metadata["dv_version"]
    trained_part, frozen = temporal_state(trained), make_unet(1).state_dict()
    assert 0 < len(trained_part) < len(frozen)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, trained_part.get(key, frozen[key])), key
    again = make_unet(1)
    load_unet_weights(path, again)  # the backbone's dispatcher recognises dv exports
    assert_same_weights(fresh, again)


def test_dv_weights_refuse_foreign_and_extra_keys(tmp_path):
    safetensors.torch.save_file({"conv_in.bias": torch.zeros(32)}, tmp_path / "plain.safetensors")
    with pytest.raises(WeightsError, match="not a dv weights export"):
        load_dv_weights(tmp_path / "plain.safetensors", make_unet(0))
    save_dv_weights(tmp_path / "extra.safetensors", {"retention.conv.weight": torch.zeros(2)}, {"parts": "retention"})
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): retention\.conv\.weight"):
        load_dv_weights(tmp_path / "extra.safetensors", make_unet(0))


def test_dv_weights_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_dv_weights(path, {"a": torch.ones(3)}, {"parts": "test"})
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pretrained.safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_dv_weights(path, {"a": torch.zeros(3)}, {"parts": "test"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
