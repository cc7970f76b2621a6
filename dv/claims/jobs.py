"""The claims experiment's sampling, split over processes (`dv claims --jobs N`).

The worker function lives here, in an importable module: a spawned process unpickles it by module name.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from dv.checkpoint import load_trained
from dv.claims.captions import probe as caption_probe
from dv.claims.experiment import ClaimsConfig, ClaimsRun


def sample_share(
    models: list[tuple[str, str, str]],
    config: ClaimsConfig,
    share: tuple[int, int],
    threads: int,
    real: list[tuple[np.ndarray, str, str]],
) -> dict:
    """One process's part of the experiment: its share of every setting's videos, and the caption probe of every
    n-th model. Runs in a worker process when --jobs > 1 (its own `threads` CPU threads)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)  # anything left to the global generator draws the same in every process
    run = ClaimsRun(config, progress=share[0] == 0, share=share)
    probed = {name for name, _, _ in run.mine(models)}
    probes = {}
    for name, recipe, ckpt in models:
        module = load_trained(recipe, ckpt)
        if name in probed:
            probes[name] = caption_probe(module, real)
        run.run_model(name, module)
    return dict(rows=run.rows, batches=run.batches, videos=run.videos, probes=probes)


def sample_all(
    models: list[tuple[str, str, str]], config: ClaimsConfig, jobs: int, real: list[tuple[np.ndarray, str, str]]
) -> tuple[ClaimsRun, dict[str, list[dict]]]:
    """Every model's videos and caption probe, split over `jobs` processes that share the CPU threads.

    Every video has its own seed, so the split does not change which videos are made. On a CPU, small kernels
    scale poorly across threads: two one-thread processes sample more videos per second than one with two.
    """
    run = ClaimsRun(config)
    run.ground_truth_rows(real)
    threads = torch.get_num_threads()
    if jobs == 1:
        parts = [sample_share(models, config, (0, 1), threads, real)]
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(sample_share, models, config, (k, jobs), max(1, threads // jobs), real) for k in range(jobs)
            ]
            parts = [f.result() for f in futures]
    probes = {}
    for part in parts:
        run.rows += part["rows"]
        run.videos.update(part["videos"])
        probes.update(part["probes"])
        for key, frames in part["batches"].items():
            run.batches[key] = np.concatenate([run.batches[key], frames]) if key in run.batches else frames
    return run, {name: probes[name] for name, _, _ in models}
