"""The claims experiment: sample every model under every condition on the held-out photos and score each video.

Each generated video becomes one row (a dict): which model and mode made it, from which photo, caption
motion, seed and guidance scales, and its scores — PSNR and SSIM of the first frame against the
reference photo (paper Table 1's FFF_SSIM) and the camera motion recovered from its frames.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio
from tqdm.auto import tqdm

from dv.claims.motion import MOTIONS, estimate_motion
from dv.data.camera_pans import MOVES, VAL_PHOTOS, caption_for, reference_view
from dv.data.images import image_to_model
from dv.diffusion.pipeline import generate
from dv.diffusion.sampling import SamplerConfig
from dv.metrics.ssim import ssim
from dv.models.conditions import video_from_model


@dataclass
class ClaimsConfig:
    """What the experiment samples."""

    seeds: tuple[int, ...] = (0, 1)
    """Sampling seeds; every number is reported as mean ± std over them."""
    photos: tuple[str, ...] = VAL_PHOTOS
    """Held-out photos (never seen in training)."""
    steps: int = 10
    """DDIM steps per video."""
    s_text: float = 3.0
    s_image: float = 2.0
    """The guidance scales of the main comparison (Eq. 5)."""
    grid_s_text: tuple[float, ...] = (1.0, 6.0)
    grid_s_image: tuple[float, ...] = (1.0, 4.0)
    """The guidance-scale grid (paper Fig. 3), for models with an image branch."""
    resample_steps: int = 1
    """TI2V-Zero's extra denoising runs per frame."""
    chain_pairs: tuple[tuple[str, str], ...] = (
        ("pan-left", "pan-right"),
        ("pan-right", "pan-up"),
        ("pan-up", "pan-down"),
        ("pan-down", "zoom-in"),
        ("zoom-in", "zoom-out"),
        ("zoom-out", "pan-left"),
    )
    """(stage 1, stage 2) caption motions of the chained videos (paper §5.5)."""
    figure_photo: str = "rocket"
    """The photo shown in the figure."""
    frame_size: int = 32
    num_frames: int = 8


def first_frame_scores(videos: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB) and SSIM of each video's first frame against its reference: uint8 (B, T, H, W, 3) and (B, H, W, 3)."""
    first = videos[:, 0]
    # Identical frames have an infinite PSNR (TI2V-Zero starts from the reference itself); say so, don't warn.
    psnr = np.array(
        [
            np.inf if np.array_equal(r, f) else peak_signal_noise_ratio(r, f, data_range=255)
            for r, f in zip(references, first)
        ]
    )
    structural = ssim(torch.from_numpy(first), torch.from_numpy(references)).numpy()
    return psnr, structural


class ClaimsRun:
    """Samples the models and collects one scored row per video."""

    def __init__(self, config: ClaimsConfig, progress: bool = True, share: tuple[int, int] = (0, 1)) -> None:
        self.config = config
        self.progress = progress
        self.share = share
        """(k, n): this run makes every n-th video of each setting from the k-th on, so n processes split the work."""
        self.rows: list[dict] = []
        self.videos: dict[tuple, np.ndarray] = {}
        self.batches: dict[tuple, np.ndarray] = {}
        """uint8 videos (B, T, H, W, 3) of each (model, mode, s_text, s_image), for FVD."""
        self.references = {p: reference_view(p, config.frame_size) for p in config.photos}
        self.figure_setting: tuple[str, float, float] | None = None
        """(mode, s_text, s_image) whose videos the figure shows: the main setting of the model being sampled."""

    # ---- what is asked ------------------------------------------------------------------------------------------
    def mine(self, jobs: list) -> list:
        """This run's share of a fixed-order list of videos."""
        k, n = self.share
        return jobs[k::n]

    def requests(self) -> list[tuple[str, str, int]]:
        """(photo, motion, seed) of this run's videos of one setting, in a fixed order."""
        return self.mine(list(itertools.product(self.config.photos, MOTIONS, self.config.seeds)))

    def reference_batch(self, requests) -> torch.Tensor:
        """Reference images (B, 3, H, W) in [-1, 1] for the requests."""
        return image_to_model(np.stack([self.references[p] for p, _, _ in requests]))

    def score(self, model: str, mode: str, requests, videos: torch.Tensor, s_text: float, s_image: float) -> None:
        """Score a batch of videos (B, 3, T, H, W) in [-1, 1] made for `requests` and keep the rows."""
        frames = video_from_model(videos.cpu()).numpy()
        refs = np.stack([self.references[p] for p, _, _ in requests])
        psnr, structural = first_frame_scores(frames, refs)
        self.batches[(model, mode, s_text, s_image)] = frames
        for i, (photo, motion, seed) in enumerate(requests):
            estimate = estimate_motion(frames[i])
            self.rows.append(
                dict(
                    model=model,
                    mode=mode,
                    photo=photo,
                    motion=motion,
                    seed=seed,
                    s_text=s_text,
                    s_image=s_image,
                    psnr=float(psnr[i]),
                    ssim=float(structural[i]),
                    predicted=estimate.label,
                    motion_size=estimate.size,
                )
            )
            shown = (mode, s_text, s_image) == self.figure_setting
            if shown and photo == self.config.figure_photo and seed == self.config.seeds[0]:
                self.videos[(model, mode, motion)] = frames[i]

    # ---- sampling ---------------------------------------------------------------------------------------------
    def generate(self, module, mode: str, captions, images, config: SamplerConfig, seeds, next_captions=()):
        """`dv.diffusion.pipeline.generate` at the experiment's video shape."""
        return generate(
            module,
            mode,
            captions,
            images,
            config,
            seeds,
            frames=self.config.num_frames,
            size=self.config.frame_size,
            next_captions=next_captions,
            resample_steps=self.config.resample_steps,
        )

    def run_setting(self, model: str, module, mode: str, s_text: float, s_image: float) -> None:
        """All photos × motions × seeds of one model, mode and pair of scales."""
        requests = self.requests()
        captions = [caption_for(p, m) for p, m, _ in requests]
        seeds = [seed for _, _, seed in requests]
        images = self.reference_batch(requests)
        config = SamplerConfig(steps=self.config.steps, s_text=s_text, s_image=s_image)
        videos = self.generate(module, mode, captions, images, config, seeds)
        self.score(model, mode, requests, videos, s_text, s_image)

    def run_chained(self, model: str, module) -> None:
        """Two-stage videos with two different motion captions; one row per stage plus the seam statistics."""
        config = SamplerConfig(steps=self.config.steps, s_text=self.config.s_text, s_image=self.config.s_image)
        t = self.config.num_frames
        jobs = self.mine(list(itertools.product(self.config.photos, self.config.chain_pairs, self.config.seeds)))
        stage_captions = [[caption_for(p, pair[k]) for p, pair, _ in jobs] for k in (0, 1)]
        images = self.reference_batch([(p, None, s) for p, _, s in jobs])
        videos = self.generate(
            module, "ti2v", stage_captions[0], images, config, [s for _, _, s in jobs], next_captions=stage_captions[1:]
        )
        frames = video_from_model(videos.cpu()).numpy()
        for (photo, (first, second), seed), video in zip(jobs, frames):
            diffs = np.abs(np.diff(video.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))  # between consecutive frames
            for stage, (motion, part) in enumerate(((first, video[:t]), (second, video[t - 1 :]))):
                self.rows.append(
                    dict(
                        model=model,
                        mode=f"chained-stage{stage + 1}",
                        photo=photo,
                        motion=motion,
                        seed=seed,
                        s_text=config.s_text,
                        s_image=config.s_image,
                        predicted=estimate_motion(part).label,
                        seam_diff=float(diffs[t - 1]),
                        within_diff=float(np.delete(diffs, t - 1).mean()),
                    )
                )

    def run_model(self, model: str, module) -> None:
        """Everything the claims ask of one model: T2V models (no branch) and image-conditioned ones differ."""
        c = self.config
        settings: list[tuple[str, float, float]]
        if module.branch is None:
            settings = [("t2v", c.s_text, 1.0), ("zero_shot", c.s_text, 1.0)]
        else:
            settings = [("ti2v", c.s_text, c.s_image), ("i2v", 1.0, c.s_image), ("t2v", c.s_text, 1.0)]
            grid = [("ti2v", st, si) for si in c.grid_s_image for st in c.grid_s_text]
            settings += [s for s in grid if s != ("ti2v", c.s_text, c.s_image)]
        # The figure shows each model's main setting, the first: text for T2V, text + image at the main scales otherwise.
        self.figure_setting = settings[0]
        for mode, s_text, s_image in tqdm(settings, desc=model, disable=not self.progress):
            self.run_setting(model, module, mode, s_text, s_image)
        if module.branch is not None:
            self.run_chained(model, module)

    def ground_truth_rows(self, clips: list[tuple[np.ndarray, str, str]]) -> None:
        """Rows for real held-out clips (frames, photo, motion): the motion estimator's own accuracy."""
        for frames, photo, motion in clips:
            self.rows.append(
                dict(
                    model="ground truth",
                    mode="real",
                    photo=photo,
                    motion=motion,
                    seed=0,
                    predicted=estimate_motion(frames).label,
                )
            )


__all__ = ["ClaimsConfig", "ClaimsRun", "MOVES", "first_frame_scores"]
