"""The latent cache: sample format, same loss as on videos, resume after interruption, foreign VAEs refused."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch

from data_prep import camera_pans
from data_prep.writer import BuildConfig, Record, build
from dv.data.datamodule import VideoDataModule
from dv.data.latent_cache import CacheConfig, Encoders, build_cache
from dv.data.shards import (
    LATENT_DTYPE,
    decode_latent_sample,
    encode_latent_sample,
    read_stats,
    stats_name,
)
from dv.errors import ConfigError, DataError
from dv.lit.dreamvideo import DreamVideoModule, RetentionConfig
from dv.lit.t2v import OptimConfig, T2VModule
from dv.models.autoencoder import AutoencoderConfig
from dv.models.conditions import video_to_model
from dv.models.identity import text_encoder_identity
from tests.tiny import tiny_backbone

TINY_KL = AutoencoderConfig(
    kind="kl",
    kl=dict(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
        latent_channels=12,
    ),
)
"""A tiny diffusers AutoencoderKL with the tiny U-Net's 12 latent channels and downscale 2."""


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory) -> Path:
    """6 camera-pans clips of 4 frames at 16x16 in 3 train shards (real shard builder)."""
    out = tmp_path_factory.mktemp("video")
    recs = [
        Record(f"{p}-{m}", camera_pans.PanRenderer(p, m, 0), camera_pans.caption_for(p, m))
        for p, m in itertools.product(["astronaut", "coins", "grass"], list(camera_pans.MOVES)[:2])
    ]
    build(
        {"train": recs},
        BuildConfig(out_dir=str(out), source="camera-pans", frames=4, size=16, shard_size=2),
        quiet=True,
    )
    return out


def module(kind: str, dreamvideo: bool, init_seed: int = 0) -> T2VModule:
    """A built tiny T2V or DreamVideo module over a space-to-depth or tiny KL autoencoder."""
    backbone = tiny_backbone(init_seed=init_seed, **({"autoencoder": TINY_KL} if kind == "kl" else {}))
    optim = OptimConfig(lr=1e-3, warmup_steps=1)
    if dreamvideo:
        m = DreamVideoModule(backbone=backbone, retention=RetentionConfig(image_channels=(8, 16)), optim=optim)
    else:
        m = T2VModule(backbone=backbone, optim=optim)
    m.configure_model()
    return m


def encoders(m: T2VModule, text: bool = False) -> Encoders:
    """The module's own frozen encoders as the cache's callables (what `dv cache-latents` wires from a recipe)."""
    ae = m.backbone.autoencoder
    if not text:
        return Encoders(posterior=lambda v: ae.posterior(video_to_model(v)), vae=ae.identity())
    return Encoders(
        posterior=lambda v: ae.posterior(video_to_model(v)),
        vae=ae.identity(),
        text=m.backbone.encode_text,
        text_encoder=text_encoder_identity(m.backbone.text),
    )


def cache(shards: Path, out: Path, enc: Encoders, **cfg):
    """Cache every train shard of `shards` into `out` in this process."""
    return build_cache(
        sorted(str(p) for p in shards.glob("train-*.tar")),
        enc,
        CacheConfig(out_dir=str(out), workers=0, **cfg),
        quiet=True,
    )


def first_batch(pattern: Path, **kwargs) -> dict:
    """The first validation-order batch (deterministic) of some shards."""
    dm = VideoDataModule(val_shards=str(pattern), batch_size=4, num_workers=0, **kwargs)
    dm.setup("validate")
    return next(iter(dm.val_dataloader()))


def test_latent_sample_round_trip():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(12, 4, 8, 8, generator=g), torch.randn(12, 4, 8, 8, generator=g)
    reference = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8)
    text = torch.randn(16, 32, generator=g)
    meta = {"source_id": "x", "stride": 4, "size": [16, 16]}
    raw = encode_latent_sample(
        "x_c000", mean, logvar, reference, "a caption", meta, "vae-sha", text=text, text_encoder="text-sha"
    )
    out = decode_latent_sample(raw)
    assert out["latent_mean"].dtype == out["latent_logvar"].dtype == LATENT_DTYPE
    torch.testing.assert_close(out["latent_mean"], mean.to(LATENT_DTYPE))
    torch.testing.assert_close(out["latent_logvar"], logvar.to(LATENT_DTYPE))
    assert torch.equal(out["reference"], reference)  # PNG: lossless
    torch.testing.assert_close(out["text_embedding"], text.to(LATENT_DTYPE))
    assert (out["caption"], out["vae"], out["text_encoder"]) == ("a caption", "vae-sha", "text-sha")
    assert {k: out["meta"][k] for k in meta} == meta and out["meta"]["key"] == "x_c000"
    assert decode_latent_sample(raw, num_frames=2)["latent_mean"].shape == (12, 2, 8, 8)
    with pytest.raises(DataError, match="fewer than"):
        decode_latent_sample(raw, num_frames=5)
    with pytest.raises(DataError, match="frame_size 32"):
        decode_latent_sample(raw, frame_size=32)
    with pytest.raises(DataError, match="uint8"):
        encode_latent_sample("x", mean, logvar, reference.float(), "c", meta, "v")


@pytest.mark.parametrize(
    "kind,dreamvideo,text",
    [("space_to_depth", False, False), ("space_to_depth", True, True), ("kl", False, True), ("kl", True, False)],
)
def test_cached_latents_give_the_loss_of_the_videos(video_shards, tmp_path, kind, dreamvideo, text):
    m = module(kind, dreamvideo)
    summary = cache(video_shards, tmp_path, encoders(m, text))
    assert summary.clips_written == 6 and not summary.shards_failed
    videos, latents = first_batch(video_shards / "train-*.tar"), first_batch(tmp_path / "train-*.tar")
    assert [x["key"] for x in videos["meta"]] == [x["key"] for x in latents["meta"]]
    assert "video" not in latents and ("text_embedding" in latents) == text
    for seed in range(2):  # with condition dropout drawing from the same generator
        on_the_fly, _ = m.diffusion_loss(videos, m.step_generator(seed), drop=True)
        cached, _ = m.diffusion_loss(latents, m.step_generator(seed), drop=True)
        torch.testing.assert_close(cached, on_the_fly, rtol=1e-2, atol=1e-4)  # the posterior is stored in bf16
    # The same posterior sample: the cached draw matches encoding on the fly, and another seed's draw does not.
    drawn, _ = m.cached_latents(latents, torch.Generator().manual_seed(7))
    encoded = m.encode_video(video_to_model(videos["video"]), torch.Generator().manual_seed(7))
    other = m.encode_video(video_to_model(videos["video"]), torch.Generator().manual_seed(8))
    err = (drawn - encoded).abs().max()
    assert err < 2e-2 * encoded.abs().max()
    if kind == "kl":
        assert (other - encoded).abs().max() > 10 * err


def test_interrupted_build_resumes(video_shards, tmp_path):
    m = module("space_to_depth", dreamvideo=False)
    enc = encoders(m)
    whole = tmp_path / "whole"
    cache(video_shards, whole, enc)

    # Interrupt a build: the encoder fails on its second call, inside the second shard.
    calls = []

    def failing(video):
        calls.append(len(video))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return enc.posterior(video)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        cache(video_shards, out, Encoders(posterior=failing, vae=enc.vae), batch_size=2)
    assert (out / "train-000000.tar").is_file() and read_stats(out / stats_name("train", 0)) is not None
    assert (out / "train-000001.tar.tmp").is_file() and not (out / "train-000001.tar").exists()
    first_mtime = (out / "train-000000.tar").stat().st_mtime_ns
    # A shard renamed but without its stats (a crash in between) counts as unfinished too.
    shutil.copy(whole / "train-000002.tar", out / "train-000002.tar")

    summary = cache(video_shards, out, enc, batch_size=2)
    assert summary.shards_already_complete == ["train-000000.tar"]
    assert sorted(summary.shards_written) == ["train-000001.tar", "train-000002.tar"]
    assert (out / "train-000000.tar").stat().st_mtime_ns == first_mtime
    assert not list(out.glob("*.tmp"))
    for i in range(3):  # byte-identical to the uninterrupted build
        assert (out / f"train-00000{i}.tar").read_bytes() == (whole / f"train-00000{i}.tar").read_bytes()
        stats = read_stats(out / stats_name("train", i))
        assert stats.samples_written == 2 and stats.bytes_written == (out / f"train-00000{i}.tar").stat().st_size
        assert stats.settings["vae"] == enc.vae and stats.settings["kind"] == "latents"


def test_nodes_split_the_shards(video_shards, tmp_path):
    enc = encoders(module("space_to_depth", dreamvideo=False))
    summary = cache(video_shards, tmp_path, enc, num_nodes=2, node_rank=1)
    assert summary.shards_written == ["train-000001.tar"]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000001.tar"]


def test_a_cache_of_another_vae_is_refused(video_shards, tmp_path):
    ours, theirs = module("kl", dreamvideo=True, init_seed=0), module("kl", dreamvideo=True, init_seed=1)
    assert ours.backbone.autoencoder.identity() != theirs.backbone.autoencoder.identity()
    cache(video_shards, tmp_path, encoders(theirs))
    latents = first_batch(tmp_path / "train-*.tar")
    with pytest.raises(DataError, match="another VAE"):
        ours.diffusion_loss(latents, ours.step_generator(0), drop=False)
    theirs.diffusion_loss(latents, theirs.step_generator(0), drop=False)  # the VAE that made it is accepted
    # Adding shards of another VAE to the same folder is refused too.
    with pytest.raises(ConfigError, match="another --out"):
        cache(video_shards, tmp_path, encoders(ours))


def test_the_data_module_checks_the_cached_size(video_shards, tmp_path):
    cache(video_shards, tmp_path, encoders(module("space_to_depth", dreamvideo=False)))
    assert first_batch(tmp_path / "train-*.tar", frame_size=16, num_frames=2)["latent_mean"].shape == (4, 12, 2, 8, 8)
    with pytest.raises(ConfigError, match="frame_size"):
        first_batch(tmp_path / "train-*.tar", frame_size=32)
    with pytest.raises(ConfigError, match="num_frames"):
        first_batch(tmp_path / "train-*.tar", num_frames=8)


def test_cached_text_embeddings_are_used_and_checked(video_shards, tmp_path):
    m = module("space_to_depth", dreamvideo=False)
    backbone = m.backbone
    captions = ["a cat", "", "a dog"]
    cached = torch.full((3, backbone.text.context_length, backbone.text.width), 0.5, dtype=LATENT_DTYPE)
    emb = backbone.encode_text(captions, cached)
    torch.testing.assert_close(emb[0], torch.full_like(emb[0], 0.5))
    torch.testing.assert_close(emb[1], backbone.text.empty_prompt(1)[0])  # dropped captions: the null condition
    assert not torch.allclose(backbone.encode_text(captions)[0], emb[0])  # outside the block: the encoder again

    cache(video_shards, tmp_path, encoders(m, text=True))
    latents = first_batch(tmp_path / "train-*.tar")
    latents["text_encoder"] = ["0" * 64] * len(latents["caption"])
    with pytest.raises(DataError, match="another text encoder"):
        m.diffusion_loss(latents, m.step_generator(0), drop=False)
