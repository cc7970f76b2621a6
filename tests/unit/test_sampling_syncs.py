"""The sampling loop's speed contract: z_s once per video, and no device-to-host reads between denoising steps."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dv.diffusion.guidance import Conditions
from dv.diffusion.pipeline import VideoSampler
from dv.diffusion.sampling import SamplerConfig, ddim_sample, ddim_scheduler
from dv.models.denoiser import Denoiser
from tests.syncs import SyncCounter
from tests.tiny import tiny_dreamvideo

HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}
"""Tensor methods that copy a value to the host: on a GPU each one waits for every queued kernel."""


class HostReads(TorchFunctionMode):
    """Records tensor-to-host reads once armed, including indexing by a 0-dim tensor (read back as an int)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if self.armed:
            scalar_index = name == "__getitem__" and any(
                isinstance(a, torch.Tensor) and a.ndim == 0 and not a.is_floating_point() for a in args[1:]
            )
            if name in HOST_READS or scalar_index:
                self.reads.append(name)
        return func(*args, **(kwargs or {}))


def test_no_host_reads_in_the_denoising_loop():
    module = tiny_dreamvideo().eval()
    denoiser = Denoiser(module.backbone.unet, module.branch)
    b = 2
    images = module.branch.encode_image(torch.rand(b, 3, 8, 8))
    null = module.branch.encode_image(torch.ones(b, 3, 8, 8))
    text = torch.randn(b, 16, 32)
    cond = Conditions(text=text, null_text=torch.zeros_like(text), image=images, null_image=null)
    mode = HostReads()

    def armed_denoiser(*args):
        mode.armed = True  # from the first denoiser call on: the loop itself, not its set-up
        return denoiser(*args)

    config = SamplerConfig(steps=4, eta=0.0, s_text=3.0, s_image=1.5)
    generators = [torch.Generator().manual_seed(s) for s in range(b)]
    with torch.no_grad(), mode:
        ddim_sample(
            armed_denoiser,
            ddim_scheduler(module.noise_scheduler),
            (b, 12, 3, 4, 4),
            cond,
            config,
            generators,
            progress=False,
        )
    assert mode.armed and mode.reads == [], f"host reads in the loop: {sorted(set(mode.reads))}"


def test_image_features_are_computed_once_per_video_not_per_step():
    module = tiny_dreamvideo().eval()
    sampler = VideoSampler(module.backbone, module.branch, module.noise_scheduler, num_frames=3, frame_size=8)
    calls = []
    module.branch.conv_s.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    branch_calls = []
    module.branch.register_forward_hook(lambda *_: branch_calls.append(1))
    for steps in (2, 5):
        calls.clear(), branch_calls.clear()
        sampler.sample(
            ["a cat", "a dog"], torch.rand(2, 3, 8, 8) * 2 - 1, SamplerConfig(steps=steps), [0, 1], progress=False
        )
        assert calls == [2, 2], "conv_s runs twice per sample call (white and reference images), whatever the steps"
        assert len(branch_calls) == steps, "one batched branch call per step (Eq. 5)"


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_no_syncs_in_the_sampler_counting_copies_masks_and_its_setup(eta):
    module = tiny_dreamvideo().eval()
    denoiser = Denoiser(module.backbone.unet, module.branch)
    b, steps = 2, 4
    text = torch.randn(b, 16, 32)
    cond = Conditions(
        text=text,
        null_text=torch.zeros_like(text),
        image=module.branch.encode_image(torch.rand(b, 3, 8, 8)),
        null_image=module.branch.encode_image(torch.ones(b, 3, 8, 8)),
    )
    counter = SyncCounter()
    in_loop = []

    def labelled_denoiser(*args):
        counter.label = "loop"
        in_loop.append(1)
        return denoiser(*args)

    config = SamplerConfig(steps=steps, eta=eta, s_text=3.0, s_image=1.5)
    generators = [torch.Generator().manual_seed(s) for s in range(b)]
    with torch.no_grad(), counter:
        counter.armed, counter.label = True, "setup"
        ddim_sample(
            labelled_denoiser,
            ddim_scheduler(module.noise_scheduler),
            (b, 12, 3, 4, 4),
            cond,
            config,
            generators,
            progress=False,
        )
    assert len(in_loop) == steps
    assert [s for s in counter.syncs if s[0] == "loop"] == [], f"syncs in the loop: {counter.syncs}"
    # The set-up tabulates the scheduler's coefficients once per video (ddim_tables): three reads of the scheduler's
    # own tables, which diffusers keeps on the host (free on a GPU), whatever the number of steps, and nothing else.
    assert counter.syncs == [("setup", "cpu")] * 3, counter.syncs
