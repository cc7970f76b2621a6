"""Detector files: missing ones, identities, eval lock, no mixing of detectors, and build_metrics' skipping."""

from __future__ import annotations

import hashlib
import logging
import warnings

import pytest
import safetensors.torch
import torch
from test_metrics_stand_ins import TinyI3D, save_script, tiny_c3d, tiny_clip, tiny_i3d, videos

from dv.errors import ConfigError, DVError, WeightsError
from dv.metrics import FFFSSIM, FVD, CLIPSim, FFFClip, VideoIS, build_metrics, load_c3d, load_clip, load_i3d
from dv.metrics.detectors import file_sha256


@pytest.mark.parametrize(
    ("loader", "expected"),
    [(load_i3d, "i3d_torchscript.pt"), (load_c3d, "c3d_ucf101.pt"), (load_clip, "vit_base_patch32_clip_224.openai")],
)
def test_missing_detector_file_names_the_file_and_where_it_is_published(tmp_path, loader, expected):
    with pytest.raises(WeightsError, match=expected) as err:
        loader(tmp_path / "nowhere.pt")
    assert "not found" in str(err.value) and ("dropbox.com" in str(err.value) or "Hugging Face" in str(err.value))
    with pytest.raises(WeightsError):
        loader(None)


def test_a_file_that_is_not_torchscript_is_a_weights_error(tmp_path):
    bogus = tmp_path / "i3d_torchscript.pt"
    torch.save({"w": torch.zeros(2)}, bogus)
    with pytest.raises(WeightsError, match="TorchScript"):
        load_i3d(bogus)


def test_identity_is_path_and_sha256_cached_by_mtime_and_size(tmp_path):
    det = tiny_i3d(tmp_path)
    path = tmp_path / "i3d_torchscript.pt"
    assert det.identity.path == str(path.resolve())
    assert det.identity.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    save_script(TinyI3D(num_features=4), path)  # rewritten: another size, so hashed again
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() != det.identity.sha256


def test_report_names_the_detector_file(tmp_path):
    metric = FVD(tiny_i3d(tmp_path), num_features=8)
    metric.update(videos(4, seed=0), real=True)
    metric.update(videos(4, seed=1), real=False)
    report = metric.report()
    assert set(report) == {"value", "detector", "sha256"}
    assert report["detector"].endswith("i3d_torchscript.pt") and report["sha256"] == metric.detector_id.sha256


def test_detector_stays_in_eval_mode_and_out_of_the_state_dict(tmp_path):
    metric = FVD(tiny_i3d(tmp_path), num_features=8)
    metric.train()
    assert not metric.detector.training and not metric.detector.net.training
    assert not any(p.requires_grad for p in metric.detector.net.parameters())
    metric.update(videos(2, seed=0), real=True)
    assert metric.real_sum.grad_fn is None  # features come from under no_grad
    assert all(key == "_extra_state" for key in metric.state_dict())  # no detector weights in checkpoints
    metric.to("cpu").double()  # the detector follows devices, never dtypes: the reference runs it in float32
    assert metric.detector.device == torch.device("cpu")
    assert all(p.dtype == torch.float32 for p in metric.detector.net.parameters())


def test_wrong_kind_of_detector_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="I3D"):
        FVD(tiny_c3d(tmp_path))
    with pytest.raises(WeightsError, match="C3D"):
        VideoIS(tiny_i3d(tmp_path))
    with pytest.raises(WeightsError, match="CLIP detector"):
        CLIPSim(tiny_i3d(tmp_path))


def test_a_c3d_file_that_returns_logits_is_refused(tmp_path):
    logits = load_c3d(save_script(TinyI3D(), tmp_path / "not_c3d.pt"))  # returns 5 unnormalised logits
    with pytest.raises(WeightsError, match="class probabilities"):
        VideoIS(logits).update(videos(2, seed=0, size=8))


def test_states_of_different_detectors_are_never_mixed(tmp_path):
    a, b = tiny_i3d(tmp_path, seed=0, name="a.pt"), tiny_i3d(tmp_path, seed=1, name="b.pt")
    first, second, same = FVD(a, num_features=8), FVD(b, num_features=8), FVD(a, num_features=8)
    for metric in (first, second, same):
        metric.update(videos(3, seed=0), real=True)
    with pytest.raises(DVError, match="cannot be mixed"):
        first.merge_state(second)
    with pytest.raises(DVError, match="cannot be mixed"):
        first.merge_state(dict(second.metric_state))  # a bare state dict carries no identity
    first.merge_state(same)
    assert first.real_count == 6
    with pytest.raises(DVError, match="keeps the detector"):
        first.detector = b

    second.persistent(True)
    saved = second.state_dict()
    with pytest.raises(DVError, match="cannot be mixed"):
        FVD(a, num_features=8).load_state_dict(saved)
    restored = FVD(b, num_features=8)
    restored.load_state_dict(saved)
    assert restored.real_count == 3
    # A checkpoint without saved states carries no features: any detector may load it.
    FVD(a, num_features=8).load_state_dict(FVD(b, num_features=8).state_dict())


def test_clip_metrics_share_one_loaded_model(tmp_path):
    clip = tiny_clip(tmp_path)
    sim, fff = CLIPSim(clip), FFFClip(clip)
    assert sim.detector is fff.detector and sim.detector_id.kind == "clip"
    assert sim.clone().detector is clip  # clones share the frozen network


def test_clip_checkpoint_that_does_not_fit_is_a_weights_error(tmp_path, caplog):
    clip = tiny_clip(tmp_path)
    # Once, for the stand-in's own random creation; load_clip's create_model is followed by the file's weights.
    assert caplog.text.count("initialized randomly") == 1
    state = {k: v.contiguous() for k, v in clip.net.state_dict().items()}
    state["ln_final.weight"] = torch.zeros(5)
    safetensors.torch.save_file(state, str(tmp_path / "bad_shape.safetensors"))
    with pytest.raises(WeightsError, match="does not fit"):
        load_clip(tmp_path / "bad_shape.safetensors", model_name="dv-tiny-clip")
    del state["ln_final.weight"]
    safetensors.torch.save_file(state, str(tmp_path / "missing_key.safetensors"))
    with pytest.raises(WeightsError, match="1 missing keys"):
        load_clip(tmp_path / "missing_key.safetensors", model_name="dv-tiny-clip")
    (tmp_path / "text.bin").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_clip(tmp_path / "text.bin", model_name="dv-tiny-clip")


def test_a_torchscript_clip_archive_loads_like_openai_vit_b_32_pt(tmp_path):
    """OpenAI's own checkpoint is a TorchScript archive: its weights load into the open_clip model."""
    clip = tiny_clip(tmp_path)
    image, tokens = torch.randn(1, 3, 32, 32), clip.tokenizer(["a cat"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and torch.jit deprecation notices
        torch.jit.save(torch.jit.trace(clip.net, (image, tokens), check_trace=False), str(tmp_path / "ViT-B-32.pt"))
    loaded = load_clip(tmp_path / "ViT-B-32.pt", model_name="dv-tiny-clip", quick_gelu=False)
    assert torch.allclose(loaded.net.encode_image(image), clip.net.encode_image(image))
    assert loaded.identity.sha256 != clip.identity.sha256


def test_unconfigured_metrics_are_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="dv.metrics"):
        metrics = build_metrics({})
    assert list(metrics) == ["fff_ssim"] and isinstance(metrics["fff_ssim"], FFFSSIM)
    text = caplog.text
    assert "FVD skipped" in text and "video IS skipped" in text and "CLIP-SIM and FFF_CLIP skipped" in text
    with pytest.raises(ConfigError, match="unknown metrics settings"):
        build_metrics({"fvd_detector": "x"})


def test_configured_metrics_are_built_from_their_files(tmp_path, caplog):
    i3d, c3d, clip = tiny_i3d(tmp_path), tiny_c3d(tmp_path), tiny_clip(tmp_path)
    metrics = build_metrics(
        {"i3d": i3d.identity.path, "c3d": c3d.identity.path, "clip": clip.identity.path,
         "clip_model": "dv-tiny-clip", "clip_quick_gelu": False, "fff_ssim": False}
    )  # fmt: skip
    assert list(metrics) == ["fvd", "is", "clip_sim", "fff_clip"]
    assert metrics["clip_sim"].detector is metrics["fff_clip"].detector
    # A configured but missing file is an error, not a skip.
    with pytest.raises(WeightsError, match="not found"):
        build_metrics({"i3d": str(tmp_path / "missing.pt")})
