"""FVD, video IS, FFF_SSIM, CLIP-SIM and FFF_CLIP on tiny stand-in detectors loaded from files."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import scipy.linalg
import skimage.data
import torch
from PIL import Image
from skimage.metrics import structural_similarity
from test_metrics_stand_ins import OneHotC3D, tiny_c3d, tiny_clip, tiny_i3d, videos

from dv.errors import DataError
from dv.metrics import FFFSSIM, FVD, CLIPSim, FFFClip, VideoIS, inception_score, ssim


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
    return tiny_i3d(tmp_path_factory.mktemp("i3d"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


# --- FVD -------------------------------------------------------------------------------------------


def _fvd(i3d, real, fake, **kwargs) -> float:
    metric = FVD(i3d, num_features=8, max_batch=8, **kwargs)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute().item()


def test_fvd_of_a_set_against_itself_is_zero(i3d):
    real = videos(12, seed=0)
    assert abs(_fvd(i3d, real, real)) < 1e-6


def test_fvd_grows_with_a_shift_of_the_fakes(i3d):
    real = videos(12, seed=0)
    shifted = lambda by: (real.int() + by).clamp(0, 255).to(torch.uint8)  # noqa: E731 - the reals, brightened
    near, far = _fvd(i3d, real, shifted(10)), _fvd(i3d, real, shifted(60))
    assert 1e-3 < near < far


def test_fvd_equals_stylegan_v_formula_on_the_same_features(i3d):
    """The metric's value equals StyleGAN-V's numpy computation (mean/cov ÷ n, scipy sqrtm) on the detector's features."""
    real, fake = videos(12, seed=2), videos(12, seed=3, shift=30)
    clip = lambda v: v.permute(0, 4, 1, 2, 3)  # noqa: E731 - dv (B,T,H,W,C) -> the detector's (B,C,T,H,W)
    feats = [i3d(clip(v), rescale=True, resize=True, return_features=True).double().numpy() for v in (real, fake)]
    (mu_r, cov_r), (mu_g, cov_g) = [(f.mean(0), f.T @ f / len(f) - np.outer(f.mean(0), f.mean(0))) for f in feats]
    s = scipy.linalg.sqrtm(cov_g @ cov_r)
    expected = float(np.real(np.square(mu_g - mu_r).sum() + np.trace(cov_g + cov_r - 2 * s)))
    assert _fvd(i3d, real, fake) == pytest.approx(expected, rel=1e-6)


def test_fvd_takes_float_videos_and_the_first_frames(i3d):
    real = videos(6, seed=4, frames=20)
    as_float = real.float() / 255
    assert _fvd(i3d, real, real[:, :16]) == pytest.approx(0.0, abs=1e-6)
    assert _fvd(i3d, real, as_float) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DataError, match="16 consecutive frames"):
        FVD(i3d, num_features=8).update(real[:, :8], real=True)


def test_fvd_can_keep_real_statistics_across_reset(i3d):
    real, fake = videos(8, seed=5), videos(8, seed=6)
    metric = FVD(i3d, num_features=8, reset_real_features=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    first = metric.compute()
    metric.reset()
    assert metric.real_count == 8 and metric.fake_count == 0
    metric.update(fake, real=False)
    assert torch.equal(metric.compute(), first)
    with pytest.raises(DataError, match="at least 2"), pytest.warns(UserWarning, match="before the ``update``"):
        FVD(i3d, num_features=8).compute()


# --- video IS --------------------------------------------------------------------------------------


def test_is_of_uniform_predictions_is_one():
    mean, std = inception_score(torch.full((40, 7), 1 / 7))
    assert mean.item() == pytest.approx(1.0, abs=1e-12) and std.item() == pytest.approx(0.0, abs=1e-12)


def test_is_of_evenly_spread_one_hot_predictions_is_k():
    k = 5
    probs = torch.eye(k).repeat(8, 1)  # 40 certain predictions, 8 per class
    mean, _ = inception_score(probs, num_splits=1)
    assert mean.item() == pytest.approx(k, rel=1e-12)
    # Ten splits of 4 after the reference's shuffle: a split of certain predictions scores exp(entropy of its classes).
    order = np.random.RandomState(42).permutation(40)
    expected = []
    for i in range(10):
        p = np.bincount(order[i * 4 : (i + 1) * 4] % k, minlength=k) / 4
        expected.append(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    assert inception_score(probs)[0].item() == pytest.approx(np.mean(expected), rel=1e-12)


def test_is_matches_the_reference_split_code():
    """StyleGAN-V's compute_isv body, run in numpy on the same probabilities."""
    probs = torch.softmax(torch.randn(103, 11, generator=torch.Generator().manual_seed(0)) * 3, dim=1).double()
    ref = probs.numpy().copy()
    np.random.RandomState(42).shuffle(ref)
    scores = []
    for i in range(10):
        part = ref[i * 103 // 10 : (i + 1) * 103 // 10]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    mean, std = inception_score(probs)
    assert mean.item() == pytest.approx(np.mean(scores), rel=1e-12) and std.item() == pytest.approx(
        np.std(scores), rel=1e-9
    )


def test_video_is_through_a_one_hot_c3d_file(tmp_path):
    """k classes predicted with certainty, evenly spread: IS = k, through the metric and a loaded file."""
    k = 4
    vids = videos(12, seed=0, size=8)
    vids[:, 0, 0, 0, 0] = torch.arange(12, dtype=torch.uint8)  # class = index mod k
    metric = VideoIS(tiny_c3d(tmp_path, OneHotC3D(k)), num_splits=1)
    metric.update(vids[:5])
    metric.update(vids[5:])
    report = metric.report()
    assert report["value"] == pytest.approx(k) and report["std"] == 0.0
    assert report["sha256"] == metric.detector_id.sha256


def test_video_is_on_probabilities_of_a_c3d_file(tmp_path):
    metric = VideoIS(tiny_c3d(tmp_path), num_splits=2)
    metric.update(videos(6, seed=1, size=8))
    mean, std = metric.compute()
    assert 1.0 <= mean.item() <= 7.0 and std.item() >= 0
    few = VideoIS(metric.detector)
    few.update(videos(3, seed=1, size=8))
    with pytest.raises(DataError, match="at least 10"):
        few.compute()


# --- FFF_SSIM --------------------------------------------------------------------------------------


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )


def test_ssim_equals_skimage_on_random_images():
    rng = np.random.default_rng(0)
    for h, w in ((11, 11), (37, 50), (64, 64)):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-60, 60, (h, w, 3)), 0, 255).astype(np.uint8)
        got = ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None]).item()
        assert abs(got - _skimage_ssim(a, b)) < 1e-4
        assert abs(got - _skimage_ssim(a, b)) < 1e-10  # in fact equal up to rounding


def test_fff_ssim_equals_skimage_on_a_natural_image():
    """skimage.data.astronaut() against a shifted, noised copy and against itself."""
    img = skimage.data.astronaut()[::2, ::2]  # 256x256x3, a dv-sized frame
    rng = np.random.default_rng(1)
    other = np.clip(np.roll(img, (3, -2), axis=(0, 1)).astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(
        np.uint8
    )
    first = torch.from_numpy(np.stack([other, img]))  # generated first frames
    reference = torch.from_numpy(np.stack([img, img]))
    gen_videos = first[:, None].repeat(1, 3, 1, 1, 1)  # (B, T, H, W, 3)
    metric = FFFSSIM()
    metric.update(gen_videos, reference)
    expected = (_skimage_ssim(other, img) + 1.0) / 2
    assert abs(metric.compute().item() - expected) < 1e-4
    assert metric.report()["detector"] is None
    with pytest.raises(DataError, match="one shape"):
        metric.update(gen_videos, reference[:, :128])


# --- CLIP-SIM and FFF_CLIP -------------------------------------------------------------------------


def test_clip_preprocessing_matches_open_clip_pil_transform(clip):
    """The tensor preprocessing equals open_clip's own PIL eval transform up to resampling rounding."""
    frames = videos(3, seed=0, frames=1, size=48)[:, 0]
    frames = torch.cat([frames, frames[:, :40]], dim=1)  # 88x48: a non-square frame
    transform = open_clip.image_transform(32, is_train=False)
    expected = torch.stack([transform(Image.fromarray(f.numpy())) for f in frames])
    got = clip.preprocess(frames)
    assert got.shape == expected.shape == (3, 3, 32, 32)
    assert (got - expected).abs().mean() < 0.01 and (got - expected).abs().max() < 0.1


def test_clip_sim_is_100_times_the_mean_frame_caption_cosine(clip):
    vids, captions = videos(2, seed=3, frames=3, size=40), ["a red car", "two dogs playing"]
    metric = CLIPSim(clip)
    metric.update(vids, captions)
    net = clip.net
    with torch.no_grad():
        image = torch.nn.functional.normalize(net.encode_image(clip.preprocess(vids.flatten(0, 1))), dim=-1).view(
            2, 3, -1
        )
        text = torch.nn.functional.normalize(net.encode_text(open_clip.get_tokenizer("dv-tiny-clip")(captions)), dim=-1)
    expected = 100 * (image * text[:, None]).sum(-1).mean().item()
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(DataError, match="captions"):
        metric.update(vids, captions[:1])


def test_fff_clip_is_1_for_the_real_first_frame(clip):
    vids = videos(3, seed=4, frames=2, size=36)
    metric = FFFClip(clip)  # the paper's Table 1 reports FFF_CLIP as a plain cosine (0.76)
    metric.update(vids, vids[:, 0])
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-5)
    metric.update(vids, videos(3, seed=5, frames=1, size=64)[:, 0])  # another reference size is fine
    assert metric.compute().item() < 1.0
    assert FFFClip(clip, scale=100.0).scale == 100.0
