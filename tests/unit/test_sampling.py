"""VideoSampler: modes, determinism, batching, chained inference."""

from __future__ import annotations

import pytest
import torch

from dv.diffusion.pipeline import VideoSampler
from dv.diffusion.sampling import SamplerConfig
from dv.errors import ConfigError
from tests.tiny import tiny_dreamvideo, tiny_t2v

CONFIG = SamplerConfig(steps=3, s_text=3.0, s_image=1.5)


def perturbed(module):
    """A tiny module whose zero convs are non-zero, so the branch matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for _, p in module.trainable_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return module.eval()


@pytest.fixture(scope="module")
def dreamvideo_sampler():
    m = perturbed(tiny_dreamvideo())
    return VideoSampler(m.backbone, m.branch, m.noise_scheduler, num_frames=3, frame_size=8)


def image(seed=0):
    return torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_modes_shapes_and_determinism(dreamvideo_sampler):
    s = dreamvideo_sampler
    for captions, images in ((["a cat"], None), (None, image()), (["a cat"], image())):
        a = s.sample(captions, images, CONFIG, seeds=[7], progress=False)
        b = s.sample(captions, images, CONFIG, seeds=[7], progress=False)
        assert a.shape == (1, 3, 3, 8, 8) and a.min() >= -1 and a.max() <= 1
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = s.sample(["a cat"], image(), CONFIG, seeds=[8], progress=False)
    assert not torch.allclose(a, c), "another seed, another video"


def test_image_and_text_change_the_video(dreamvideo_sampler):
    s = dreamvideo_sampler
    base = s.sample(["a cat"], image(0), CONFIG, seeds=[1], progress=False)
    assert not torch.allclose(base, s.sample(["a cat"], image(1), CONFIG, seeds=[1], progress=False))
    assert not torch.allclose(base, s.sample(["a dog on a boat"], image(0), CONFIG, seeds=[1], progress=False))


def test_batch_equals_one_by_one(dreamvideo_sampler):
    s = dreamvideo_sampler
    imgs = torch.cat([image(0), image(1)])
    config = SamplerConfig(steps=3, eta=0.5, s_text=2.0, s_image=1.0)
    batched = s.sample(["a cat", "a boat"], imgs, config, seeds=[3, 4], progress=False)
    for i, (cap, seed) in enumerate((("a cat", 3), ("a boat", 4))):
        single = s.sample([cap], imgs[i : i + 1], config, seeds=[seed], progress=False)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-4, atol=1e-5)


def test_chained_stages_hand_over_the_last_frame(dreamvideo_sampler):
    s = dreamvideo_sampler
    video, refs = s.chained(["pan left", "zoom in", "pan up"], image(), CONFIG, seed=5)
    assert video.shape == (1, 3, 3 * 3 - 2, 8, 8), "N·T frames less the N−1 repeated ones"
    torch.testing.assert_close(refs[0], image())
    # stage k+1 is conditioned on stage k's last frame, and that frame appears once, at the seam
    stage1 = s.sample(["pan left"], image(), CONFIG, seeds=[5], progress=False)
    torch.testing.assert_close(refs[1], stage1[:, :, -1])
    torch.testing.assert_close(video[:, :, :3], stage1)
    stage2 = s.sample(["zoom in"], refs[1], CONFIG, seeds=[6], progress=False)
    torch.testing.assert_close(video[:, :, 3:5], stage2[:, :, 1:])


def test_t2v_model_refuses_an_image_and_needs_a_condition():
    m = tiny_t2v().eval()
    s = VideoSampler(m.backbone, None, m.noise_scheduler, num_frames=2, frame_size=8)
    assert s.sample(["a cat"], None, CONFIG, seeds=[0], progress=False).shape == (1, 3, 2, 8, 8)
    with pytest.raises(ConfigError, match="retention branch"):
        s.sample(["a cat"], image(), CONFIG, seeds=[0], progress=False)
    with pytest.raises(ConfigError):
        s.sample(None, None, CONFIG, seeds=[0], progress=False)
    with pytest.raises(ConfigError, match="multiple"):
        VideoSampler(m.backbone, None, m.noise_scheduler, num_frames=2, frame_size=9)


def test_chained_batch_equals_chained_one_by_one(dreamvideo_sampler):
    s = dreamvideo_sampler
    images = torch.cat([image(0), image(1)])
    batched, _ = s.chained_batch(
        [["pan left", "a boat"], ["zoom in", "pan up"]], images, CONFIG, seeds=[5, 9], progress=False
    )
    for i, (prompts, seed) in enumerate(((["pan left", "zoom in"], 5), (["a boat", "pan up"], 9))):
        single, _ = s.chained(prompts, images[i : i + 1], CONFIG, seed=seed, progress=False)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-4, atol=1e-5)
