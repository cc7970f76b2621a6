"""DynamiCrafter-style conditioning: dual cross-attention, reference latent, stride embedding, strided shards."""

from __future__ import annotations

import argparse
import json
import math
import tarfile

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from einops import rearrange, repeat

from data_prep import camera_pans
from data_prep.__main__ import main as data_prep_main
from data_prep.writer import BuildConfig, build, source_stride
from dv.data.datamodule import VideoDataModule
from dv.data.shards import read_stats
from dv.diffusion.pipeline import VideoSampler
from dv.diffusion.sampling import SamplerConfig
from dv.errors import ConfigError
from dv.models.conditions import video_to_model
from dv.models.dual_attention import DualCrossAttnProcessor, dual_attention_processors
from dv.models.dynamicrafter import is_new_unet_parameter
from dv.models.pretrained import save_dv_weights
from tests.tiny import tiny_dynamicrafter, tiny_t2v
from tests.unit.test_models import make_batch, one_step


def inputs(module, batch, seed=1, stride=None):
    """Fixed noisy latents, timesteps, text and image condition of a batch."""
    g = torch.Generator().manual_seed(seed)
    video = video_to_model(batch["video"])
    latents = module.encode_video(video)
    noisy = torch.randn(latents.shape, generator=g)
    text = module.backbone.encode_text(batch["caption"])
    condition = module.branch.encode_image(video[:, :, 0], stride)
    return noisy, torch.tensor([10, 500]), text, condition


@torch.no_grad()
def predict(module, batch, stride=None, with_image=True):
    noisy, t, text, condition = inputs(module, batch, stride=stride)
    return module.denoiser(noisy, t, text, condition if with_image else None)


def test_starts_as_the_backbone_then_departs():
    module, backbone = tiny_dynamicrafter(), tiny_t2v()  # same backbone config and init seed: same U-Net weights
    batch = make_batch()
    noisy, t, text, _ = inputs(module, batch)
    with torch.no_grad():
        plain = backbone.denoiser(noisy, t, text)
    torch.testing.assert_close(predict(module, batch), plain, rtol=0, atol=0)
    torch.testing.assert_close(predict(module, batch, with_image=False), plain, rtol=0, atol=0)
    one_step(module, batch)
    assert not torch.allclose(predict(module, batch), plain)


def reference_dual_attention(attn, hidden, text, image, scale, queries, frames):
    """softmax(Q K_txtᵀ/√d) V_txt + λ softmax(Q K_imgᵀ/√d) V_img per head, with row r reading frame r mod T's tokens."""
    proc = attn.processor
    heads = attn.heads
    split = lambda x: rearrange(x, "r n (h d) -> r h n d", h=heads)  # noqa: E731
    q = split(hidden @ attn.to_q.weight.T)
    d = q.shape[-1]
    attend = lambda k, v: torch.softmax(q @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1) @ split(v)  # noqa: E731
    out = attend(text @ attn.to_k.weight.T, text @ attn.to_v.weight.T)
    rows = []
    for r in range(hidden.shape[0]):
        f = r % frames
        own = image[r : r + 1, f * queries : (f + 1) * queries]
        rows.append(
            torch.softmax(q[r : r + 1] @ split(own @ proc.to_k_img.weight.T).transpose(-1, -2) / math.sqrt(d), -1)
            @ split(own @ proc.to_v_img.weight.T)
        )
    out = out + scale * torch.cat(rows)
    return attn.to_out[0](rearrange(out, "r h n d -> r n (h d)"))


@pytest.mark.parametrize("frames", [3, 1])
def test_processor_is_the_dual_attention_formula(frames):
    torch.manual_seed(0)
    attn = Attention(query_dim=24, cross_attention_dim=16, heads=3, dim_head=8)
    proc = DualCrossAttnProcessor(attn, num_text_tokens=5, queries=2, image_scale=0.7)
    torch.nn.init.normal_(proc.to_v_img.weight)
    torch.nn.init.normal_(proc.to_k_img.weight)
    attn.set_processor(proc)
    assert "processor.to_v_img.weight" in dict(attn.named_parameters()), "the processor's weights belong to the layer"
    b, t = 2, 3
    hidden = torch.randn(b * t, 7, 24)
    text = torch.randn(b * t, 5, 16)
    # As UNet3DConditionModel hands it over: each video's tokens repeated for each of its frames.
    image = repeat(torch.randn(b, frames * 2, 16), "b n d -> (b t) n d", t=t)
    out = attn(hidden, encoder_hidden_states=torch.cat([text, image], dim=1))
    with torch.no_grad():
        expected = reference_dual_attention(
            attn, hidden, text, image, 0.7, queries=2, frames=frames if frames > 1 else 1
        )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        attn(hidden, encoder_hidden_states=text),
        reference_dual_attention(attn, hidden, text, image, 0.0, queries=2, frames=1),
    )


def test_only_spatial_cross_attention_sees_the_image_tokens():
    module = tiny_dynamicrafter()
    unet = module.backbone.unet
    processors = dual_attention_processors(unet)
    spatial = [n for n in unet.attn_processors if n.endswith("attn2.processor") and ".attentions." in f".{n}"]
    assert sorted(processors) == sorted(spatial) and processors
    seen = {}
    for name, layer in unet.named_modules():
        if isinstance(layer, Attention):
            layer.register_forward_pre_hook(
                lambda m, args, kwargs, name=name: seen.__setitem__(name, kwargs.get("encoder_hidden_states")),
                with_kwargs=True,
            )
    predict(module, make_batch())
    text_tokens = module.backbone.text.context_length
    for name, context in seen.items():
        if name + ".processor" in processors:
            assert context.shape[1] == text_tokens + 2 * 4  # text + 2 queries for each of 4 frames
        else:
            assert context is None or context.shape[1] == text_tokens, f"{name} got image tokens"


def test_stride_changes_the_prediction_once_trained():
    module = tiny_dynamicrafter()
    batch = make_batch()
    one_stride = torch.tensor([1, 1])
    torch.testing.assert_close(
        predict(module, batch, one_stride), predict(module, batch, one_stride * 5), rtol=0, atol=0
    )
    batch["stride"] = torch.tensor([2, 6])
    one_step(module, batch)  # a real step: the stride MLP's last layer gets a gradient at step 0
    assert module.backbone.unet.time_embedding.cond_proj.mlp[2].weight.abs().sum() > 0
    assert not torch.allclose(predict(module, batch, one_stride), predict(module, batch, one_stride * 5))


def test_stages_train_what_the_paper_trains():
    projection = tiny_dynamicrafter(stage="projection", optim=None)  # the paper's learning rates by default
    names = [n for n, _ in projection.trainable_parameters()]
    unet_names = [n.removeprefix("backbone.unet.") for n in names if n.startswith("backbone.unet.")]
    assert unet_names and all(is_new_unet_parameter(n) for n in unet_names)
    for part in (
        "conv_in.reference.",
        "time_embedding.cond_proj.",
        "processor.to_k_img",
        "processor.to_v_img",
        "processor.image_scale",
    ):
        assert any(part in n for n in unet_names), part
    assert any(n.startswith("branch.projection.") for n in names)
    assert not any("image_encoder" in n for n in names)
    assert projection.optim.lr == 1e-4
    everything = tiny_dynamicrafter(stage="all", optim=None)
    all_names = {n for n, _ in everything.trainable_parameters()}
    assert {f"backbone.unet.{n}" for n, _ in everything.backbone.unet.named_parameters()} <= all_names
    assert not any("image_encoder" in n for n in all_names) and everything.optim.lr == 5e-5
    with pytest.raises(ConfigError, match="stage"):
        tiny_dynamicrafter(stage="spatial")


def test_sampler_drives_it_unchanged():
    module = tiny_dynamicrafter(num_frames=3).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for _, p in module.trainable_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    sampler = VideoSampler(module.backbone, module.branch, module.noise_scheduler, num_frames=3, frame_size=8)
    config = SamplerConfig(steps=2, s_text=3.0, s_image=1.5)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    both = sampler.sample(["a cat", "a boat"], images, config, seeds=[3, 4], progress=False)
    assert both.shape == (2, 3, 3, 8, 8)
    single = sampler.sample(["a boat"], images[1:], config, seeds=[4], progress=False)
    torch.testing.assert_close(both[1:], single, rtol=1e-4, atol=1e-5)
    other = sampler.sample(["a boat"], images[:1], config, seeds=[4], progress=False)
    assert not torch.allclose(single, other), "the image steers the video"
    assert sampler.sample(["a cat"], None, config, seeds=[0], progress=False).shape == (1, 3, 3, 8, 8)
    with pytest.raises(ConfigError, match="3 frames"):
        VideoSampler(module.backbone, module.branch, module.noise_scheduler, num_frames=2, frame_size=8).sample(
            ["a cat"], images[:1], config, seeds=[0], progress=False
        )


def test_source_stride_is_drawn_and_fits_short_videos(tmp_path):
    cfg = BuildConfig(out_dir=".", source="x", frames=16, stride_range=(1, 6))
    draws = [source_stride(cfg, f"video{i}") for i in range(60)]
    assert set(draws) == set(range(1, 7)) and draws == [source_stride(cfg, f"video{i}") for i in range(60)]
    assert all(source_stride(cfg, f"video{i}", num_source_frames=40) <= 2 for i in range(60))  # 15 gaps of 2 fit in 40
    assert source_stride(BuildConfig(out_dir=".", source="x"), "video0") == 4
    assert data_prep_main(["build", "--source", "camera-pans", "--out", ".", "--stride-range", "3", "1"]) == 2
    assert (
        data_prep_main(
            [
                "build",
                "--source",
                "camera-pans",
                "--out",
                str(tmp_path),
                "--split",
                "val",
                "--frames",
                "2",
                "--size",
                "16",
                "--clips-per-video",
                "1",
                "--workers",
                "1",
                "--stride-range",
                "2",
                "5",
                "-q",
            ]
        )
        == 0
    )
    stats = read_stats(tmp_path / "val-000000.stats.json")
    assert stats.settings["stride_range"] == [2, 5]
    with tarfile.open(tmp_path / "val-000000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert metas and all(2 <= m["stride"] <= 5 and m["frame_indices"] == [0, m["stride"]] for m in metas)


def test_loader_yields_the_stride_its_clips_have(tmp_path):
    records = camera_pans.records(argparse.Namespace(seed=0))["train"][::7][:6]
    cfg = BuildConfig(
        out_dir=str(tmp_path), source="camera-pans", frames=4, size=64, shard_size=6, workers=1, stride_range=(1, 3)
    )
    assert not build({"train": records}, cfg, quiet=True).shards_failed
    dm = VideoDataModule(val_shards=str(tmp_path / "train-*.tar"), batch_size=6, num_workers=0)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    strides = batch["stride"].tolist()
    assert strides == [m["stride"] for m in batch["meta"]] and len(set(strides)) > 1 and set(strides) <= {1, 2, 3}
    for video, meta in zip(batch["video"].numpy().astype(float), batch["meta"]):
        renderer = camera_pans.PanRenderer(meta["extra"]["photo"], meta["extra"]["move"], seed=0)
        assert meta["frame_indices"] == [i * meta["stride"] for i in range(4)]
        error = {s: np.abs(video - renderer.render(0, 4, 64, stride=s)).mean() for s in (1, 2, 3)}
        assert min(error, key=error.get) == meta["stride"], (meta["source_id"], error)


def test_image_encoder_loads_the_vision_tower_of_an_open_clip_checkpoint(tmp_path):
    import open_clip
    import safetensors.torch

    from dv.models.image_encoder import ImageEncoder, ImageEncoderConfig
    from tests.tiny import TINY_VISION

    clip = open_clip.CLIP(
        embed_dim=32, vision_cfg=dict(TINY_VISION), text_cfg=dict(width=32, heads=2, layers=1, context_length=8)
    )
    path = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, path)
    encoder = ImageEncoder(ImageEncoderConfig(vision_cfg=dict(TINY_VISION), embed_dim=32, checkpoint=str(path)))
    for name, value in encoder.tower.state_dict().items():
        torch.testing.assert_close(value, clip.visual.state_dict()[name], rtol=0, atol=0, msg=name)
    image = torch.rand(2, 3, 24, 24) * 2 - 1
    tokens = encoder(image)
    assert (
        tokens.shape == (2, 16, 32) and not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    )
    x = encoder.preprocess(image)
    with torch.no_grad():  # the last layer's patch tokens, after ln_post: what DynamiCrafter projects
        expected = clip.visual.ln_post(clip.visual.transformer(clip.visual._embeds(x)))[:, 1:]
    torch.testing.assert_close(tokens, expected)


def test_file_sources_take_their_clips_at_the_drawn_stride(tmp_path):
    from data_prep.writer import Record
    from dv.data.shards import decode_sample
    from dv.data.video import write_video

    def ramp(frames: int) -> np.ndarray:  # frame i is a flat gray of level 5·i: the decoded level tells the index
        return np.stack([np.full((16, 16, 3), 5 * i, dtype=np.uint8) for i in range(frames)])

    records = []
    for i in range(6):
        write_video(tmp_path / f"v{i}.mp4", ramp(40 if i else 12), fps=10)
        records.append(Record(f"v{i}", str(tmp_path / f"v{i}.mp4"), "a ramp"))
    cfg = BuildConfig(out_dir=str(tmp_path / "out"), source="test", frames=4, size=16, workers=1, stride_range=(1, 6))
    assert build({"train": records}, cfg, quiet=True).clips_written == 6
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    samples = [
        decode_sample({ext: members[f"{key}.{ext}"] for ext in ("mp4", "txt", "json")} | {"__key__": key})
        for key in sorted({n.split(".")[0] for n in members})
    ]
    strides = {s["meta"]["source_id"]: s["meta"]["stride"] for s in samples}
    assert len(set(strides.values())) > 1 and strides["v0"] <= 3, strides  # v0 has 12 frames: 3 gaps of at most 3
    for sample in samples:
        indices, stride = sample["meta"]["frame_indices"], sample["meta"]["stride"]
        assert np.diff(indices).tolist() == [stride] * 3
        levels = sample["video"].float().mean(dim=(1, 2, 3)) / 5
        assert torch.allclose(levels, torch.tensor(indices, dtype=torch.float), atol=0.5), (indices, levels)


def test_init_weights_loads_an_earlier_stage_over_the_adapted_unet_and_branch(tmp_path):
    # `stage: all` from a `stage: projection` export (DynamiCrafter's two stages): every exported weight is loaded.
    earlier = tiny_dynamicrafter()
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in earlier.trainable_parameters():
            p.add_(torch.randn_like(p))
    exported = earlier.trained_state_dict(use_ema=False)
    path = tmp_path / "projection.safetensors"
    save_dv_weights(path, exported, {"format": "dv", "parts": "branch,unet"})
    started = tiny_dynamicrafter(stage="all", init_weights=str(path))
    own = {f"unet.{n}": p for n, p in started.backbone.unet.named_parameters()}
    own |= {f"branch.{n}": p for n, p in started.branch.named_parameters()}
    for name, value in exported.items():
        torch.testing.assert_close(own[name], value)
