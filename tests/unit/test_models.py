"""The backbone, the Image Retention branch and the DreamVideo training module."""

from __future__ import annotations

import pytest
import torch

from dv.errors import ConfigError, TrainingError
from dv.lit.t2v import OptimConfig
from dv.models.autoencoder import AutoencoderConfig, FrameAutoencoder
from dv.models.backbone import is_temporal
from dv.models.conditions import drop_conditions, video_to_model
from dv.models.pretrained import save_dv_weights
from dv.models.retention import RetentionBranch, residual_channels
from tests.tiny import tiny_backbone, tiny_dreamvideo, tiny_t2v


def make_batch(b: int = 2, t: int = 4, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (b, t, size, size, 3), generator=g, dtype=torch.uint8)
    return {
        "video": video,
        "caption": [f"the camera pans left over a photo of thing {i}" for i in range(b)],
        "meta": [{}] * b,
    }


def predict(module, batch, seed=1, with_image=True):
    """The module's prediction on fixed noisy latents, with and without the branch's image features."""
    g = torch.Generator().manual_seed(seed)
    video = video_to_model(batch["video"])
    latents = module.encode_video(video)
    noisy = torch.randn(latents.shape, generator=g)
    t = torch.tensor([10, 500])
    text = module.backbone.encode_text(batch["caption"])
    feats = module.branch.encode_image(video[:, :, 0]) if with_image else None
    return module.denoiser(noisy, t, text, feats)


def one_step(module, batch):
    opt = module.configure_optimizers()["optimizer"]
    per_sample, _ = module.diffusion_loss(batch, module.step_generator(3), drop=False)
    per_sample.mean().backward()
    opt.step()
    opt.zero_grad()
    return opt


def test_dreamvideo_starts_as_backbone_then_departs():
    torch.manual_seed(0)
    module = tiny_dreamvideo()
    batch = make_batch()
    with torch.no_grad():
        with_branch = predict(module, batch)
        backbone_only = predict(module, batch, with_image=False)
    torch.testing.assert_close(with_branch, backbone_only, rtol=0, atol=0)
    one_step(module, batch)
    with torch.no_grad():
        assert not torch.allclose(predict(module, batch), predict(module, batch, with_image=False))


def test_only_trainable_parameters_move():
    torch.manual_seed(0)
    module = tiny_dreamvideo()
    trainable = {n for n, _ in module.trainable_parameters()}
    assert trainable, "nothing to train"
    assert all(".temp_" in n or "transformer_in" in n for n in trainable if n.startswith("backbone."))
    assert any(n.startswith("branch.") for n in trainable)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = one_step(module, make_batch())
    one_step(module, make_batch(seed=5))
    optimized = {id(p) for group in opt.param_groups for p in group["params"]}
    for n, p in module.named_parameters():
        if n in trainable:
            assert id(p) in optimized
            assert p.requires_grad
        else:
            assert id(p) not in optimized and not p.requires_grad and p.grad is None
            torch.testing.assert_close(p, before[n], rtol=0, atol=0, msg=f"frozen {n} changed")
    moved = [n for n in trainable if not torch.equal(before[n], dict(module.named_parameters())[n])]
    assert len(moved) > 0.5 * len(trainable)
    assert not module.backbone.autoencoder.training and not module.backbone.text.training


def test_t2v_trains_temporal_or_all():
    temporal = {n for n, _ in tiny_t2v().trainable_parameters()}
    everything = {n for n, _ in tiny_t2v(trainable="all").trainable_parameters()}
    assert temporal < everything
    assert len(everything) == len(list(tiny_t2v().backbone.unet.parameters()))


def test_condition_dropout_rates_and_null_values():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    captions = ["a caption"] * n
    images = torch.zeros(n, 3, 2, 2) - 0.5
    out_caps, out_imgs, text_dropped, image_dropped = drop_conditions(captions, images, 0.1, 0.1, g)
    assert abs(text_dropped.float().mean().item() - 0.1) < 0.01
    assert abs(image_dropped.float().mean().item() - 0.1) < 0.01
    both = (text_dropped & image_dropped).float().mean().item()
    assert abs(both - 0.01) < 0.004, "text and image must drop independently"
    assert all((c == "") == bool(d) for c, d in zip(out_caps, text_dropped))
    assert torch.all(out_imgs[image_dropped] == 1.0), "a dropped image is white"
    assert torch.all(out_imgs[~image_dropped] == -0.5)


def test_dropped_caption_is_the_empty_prompt():
    module = tiny_t2v()
    emb = module.backbone.encode_text(["a cat", ""])
    torch.testing.assert_close(emb[1], module.backbone.text([""])[0])
    assert not torch.allclose(emb[0], emb[1])


def test_text_encoder_penultimate_layer_differs_from_last():
    from dv.models.text import TextEncoder, TextEncoderConfig

    cfg = tiny_backbone().text
    torch.manual_seed(0)
    pen = TextEncoder(cfg)
    last = TextEncoder(TextEncoderConfig(**{**cfg.__dict__, "layer": "last"}))
    last.load_state_dict(pen.state_dict())
    assert not torch.allclose(pen(["a dog"]), last(["a dog"]))
    with pytest.raises(ConfigError):
        TextEncoder(TextEncoderConfig(**{**cfg.__dict__, "layer": "first"}))


def test_retention_branch_copies_unet_and_shapes_match():
    module = tiny_t2v()
    unet = module.backbone.unet
    branch = RetentionBranch.from_unet(unet, downscale=2, image_channels=(8, 16))
    for name in ("time_embedding", "transformer_in", "down_blocks", "mid_block"):
        for (k, a), b in zip(getattr(unet, name).state_dict().items(), getattr(branch, name).state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)
    torch.testing.assert_close(unet.conv_in.weight, branch.conv_d.weight)
    z = torch.randn(2, 12, 3, 8, 8)
    down, mid = branch(z, torch.tensor([1, 2]), torch.randn(2, 16, 32), branch.encode_image(torch.randn(2, 3, 16, 16)))
    assert [r.shape[1] for r in down] == residual_channels(unet)
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0


def test_concat_fusion_equals_add_at_init():
    unet = tiny_t2v().backbone.unet
    torch.manual_seed(0)
    add = RetentionBranch.from_unet(unet, downscale=2, fusion="add", image_channels=(8, 16))
    cat = RetentionBranch.from_unet(unet, downscale=2, fusion="concat", image_channels=(8, 16))
    # make the outputs visible: replace the zero convs by identities in both
    for br in (add, cat):
        for conv in [*br.zero_convs, br.mid_zero_conv]:
            torch.nn.init.dirac_(conv.weight)
    z, t, txt = torch.randn(1, 12, 2, 8, 8), torch.tensor([5]), torch.randn(1, 16, 32)
    img = torch.randn(1, 3, 16, 16)
    a = add(z, t, txt, add.encode_image(img))
    c = cat(z, t, txt, cat.encode_image(img))
    torch.testing.assert_close(a[1], c[1])
    with pytest.raises(ConfigError):
        RetentionBranch.from_unet(unet, downscale=2, fusion="multiply", image_channels=(8, 16))
    with pytest.raises(ConfigError, match="entries"):
        RetentionBranch.from_unet(unet, downscale=2, image_channels=(8, 16, 32))


def test_residual_scale_multiplies_every_residual_and_starts_at_zero():
    """retention.residual_scale: the same branch weights give s times the residuals; at init they are still zero,
    so the U-Net with the branch starts as the U-Net without it."""
    unet = tiny_t2v().backbone.unet
    torch.manual_seed(0)
    plain = RetentionBranch.from_unet(unet, downscale=2, image_channels=(8, 16))
    scaled = RetentionBranch.from_unet(unet, downscale=2, image_channels=(8, 16), residual_scale=20.0)
    z, t, txt, img = torch.randn(1, 12, 2, 8, 8), torch.tensor([5]), torch.randn(1, 16, 32), torch.randn(1, 3, 16, 16)
    down, mid = scaled(z, t, txt, scaled.encode_image(img))
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
    for conv in [*plain.zero_convs, plain.mid_zero_conv]:
        torch.nn.init.dirac_(conv.weight)
    scaled.load_state_dict(plain.state_dict())
    (d1, m1), (d20, m20) = plain(z, t, txt, plain.encode_image(img)), scaled(z, t, txt, scaled.encode_image(img))
    for a, b in zip((*d1, m1), (*d20, m20)):
        assert torch.count_nonzero(a) > 0
        torch.testing.assert_close(b, 20 * a)
    with pytest.raises(ConfigError, match="residual_scale"):
        RetentionBranch.from_unet(unet, downscale=2, image_channels=(8, 16), residual_scale=0.0)


def test_init_weights_starts_a_run_from_an_earlier_export_and_may_train_more(tmp_path):
    """model.init_weights: an earlier DreamVideo run's export (temporal layers and branch) is loaded over the
    backbone, so a new run with `trainable: all` starts where that one ended; without it the weights are fresh."""
    earlier = tiny_dreamvideo()
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in earlier.trainable_parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "earlier.safetensors"
    save_dv_weights(path, earlier.trained_state_dict(use_ema=False), {"format": "dv", "parts": "branch,unet"})

    fresh = tiny_dreamvideo(trainable="all")
    started = tiny_dreamvideo(trainable="all", init_weights=str(path))
    own = dict(started.backbone.unet.named_parameters()) | {
        f"branch.{n}": p for n, p in started.branch.named_parameters()
    }
    fresh_weights = fresh.trained_state_dict(use_ema=False)
    for name, value in earlier.trained_state_dict(use_ema=False).items():
        loaded = own[name.removeprefix("unet.")] if name.startswith("unet.") else own[name]
        torch.testing.assert_close(loaded, value)
        assert not torch.equal(value, fresh_weights[name])
    # The spatial layers the earlier run froze come from the backbone, and now they train.
    spatial = next(n for n, _ in started.backbone.unet.named_parameters() if not is_temporal(n))
    torch.testing.assert_close(
        dict(started.backbone.unet.named_parameters())[spatial], dict(fresh.backbone.unet.named_parameters())[spatial]
    )
    assert f"backbone.unet.{spatial}" in dict(started.trainable_parameters())


def test_space_to_depth_is_lossless_and_kl_chunking_is_exact():
    video = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    s2d = FrameAutoencoder(AutoencoderConfig(kind="space_to_depth", factor=2))
    z = s2d.encode(video)
    assert z.shape == (2, 12, 5, 4, 4)
    torch.testing.assert_close(s2d.decode(z), video)
    torch.manual_seed(0)
    kl_cfg = dict(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
    )
    whole = FrameAutoencoder(AutoencoderConfig(kind="kl", kl=kl_cfg, chunk_frames=100))
    chunked = FrameAutoencoder(AutoencoderConfig(kind="kl", kl=kl_cfg, chunk_frames=3))
    chunked.load_state_dict(whole.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(whole.posterior(video)[0], chunked.posterior(video)[0], rtol=1e-4, atol=1e-5)
        lat = whole.posterior(video)[0] * whole.scaling_factor
        torch.testing.assert_close(whole.decode(lat), chunked.decode(lat), rtol=1e-4, atol=1e-5)
    assert whole.downscale == 2 and whole.scaling_factor == pytest.approx(0.18215)


def test_non_finite_loss_stops_with_the_step():
    import lightning as L

    module = tiny_t2v()
    with torch.no_grad():
        next(p for _, p in module.trainable_parameters()).fill_(float("nan"))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(TrainingError, match="step 0"):
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([make_batch()], batch_size=None))


def test_bad_settings_are_config_errors():
    from dv.lit.t2v import T2VModule

    with pytest.raises(ConfigError):
        T2VModule(backbone=tiny_backbone(), trainable="spatial")
    with pytest.raises(ConfigError):
        T2VModule(backbone=tiny_backbone(), p_drop_text=1.5)


def test_long_caption_is_truncated_with_a_warning():
    module = tiny_t2v()
    context = module.backbone.text.context_length
    with pytest.warns(UserWarning, match="truncated"):
        emb = module.backbone.encode_text(["a very long caption " * 40])
    assert emb.shape[1] == context


def test_the_recipes_adamw_settings_reach_the_optimizer():
    module = tiny_t2v(optim=OptimConfig(lr=2e-3, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-5, warmup_steps=4))
    optimizer = module.configure_optimizers()["optimizer"]
    group = optimizer.param_groups[0]
    assert (group["eps"], group["weight_decay"], group["betas"]) == (1e-5, 0.05, (0.8, 0.99))
    assert group["initial_lr"] == 2e-3 and group["lr"] == pytest.approx(2e-3 / 4), "warm-up starts at lr / warmup_steps"
    assert not group["fused"], "the fused kernel only for weights on a GPU"
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for _, p in module.trainable_parameters())
