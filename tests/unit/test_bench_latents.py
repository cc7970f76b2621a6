"""`dv bench --latents`: dv's step and the plain loop train from a latent batch (as from `dv cache-latents --text`
shards) and run no frozen encoder; `--channels-last` and `--cudnn-benchmark` are named in the setting line."""

from __future__ import annotations

import torch

from dv.bench import plain
from dv.bench.dvpath import fit_times, loss_and_backward
from dv.bench.workload import build_workload
from dv.cli import main


def test_latent_steps_run_no_frozen_encoder(tiny_recipe):
    work = build_workload(tiny_recipe, 2, "cpu", latents=True)
    batch = work.train_batch
    assert "video" not in batch and batch["latent_mean"].shape == (2, 12, 4, 8, 8)
    assert batch["text_embedding"].shape[0] == 2
    captions, vae_calls = [], []
    work.module.backbone.text.register_forward_pre_hook(lambda _m, args: captions.append(list(args[0])))
    work.module.backbone.autoencoder.register_forward_pre_hook(lambda _m, _a: vae_calls.append(1))
    work.module.backbone.autoencoder.encode = None  # any VAE encode call now fails loudly
    plain.train_step(work)()
    loss_and_backward(work, clips=1)()
    assert len(fit_times(work, 0, 2)) == 2
    assert vae_calls == []
    # The text encoder only (re)makes its cached empty-prompt embedding (after a device move); no caption is encoded.
    assert all(c == [""] for c in captions), f"captions encoded in a latent step: {captions}"


def test_bench_flags_are_named_in_the_setting(tiny_recipe, capsys):
    try:
        assert (
            main(
                [
                    "bench",
                    "--recipe",
                    tiny_recipe,
                    "--steps",
                    "1",
                    "--warmup",
                    "0",
                    "--device",
                    "cpu",
                    "--latents",
                    "--channels-last",
                    "--cudnn-benchmark",
                ]
            )
            == 0
        )
    finally:
        torch.backends.cudnn.benchmark = False
    out = capsys.readouterr().out
    setting = next(line for line in out.splitlines() if line.startswith("setting"))
    assert "latent batches" in setting and "channels-last" in setting and "cudnn.benchmark" in setting
    assert "plain s/step" in out and "dv / plain time" in out
