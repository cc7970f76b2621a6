"""Metric states synced over two gloo processes equal the single-process values; mixed detectors are refused."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_metrics_stand_ins import TinyC3D, TinyI3D, save_script, videos

from dv.errors import DVError
from dv.metrics import FVD, VideoIS, load_c3d, load_i3d

SPLIT = 4  # rank 0 gets the first 4 videos, rank 1 the other 6: uneven on purpose
N = 10


def _data():
    return videos(N, seed=0, size=8), videos(N, seed=1, size=8, shift=25), videos(N, seed=2, size=8)


def _metrics(i3d_path, c3d_path):
    return FVD(load_i3d(i3d_path), num_features=8), VideoIS(load_c3d(c3d_path), num_splits=3)


def _worker(rank: int, init_file: str, i3d_paths: list[str], c3d_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # forked from a process whose OpenMP pool does not survive fork
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timeout)
    try:
        part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        real, fake, gen = _data()
        fvd, video_is = _metrics(i3d_paths[0], c3d_path)
        fvd.update(real[part], real=True)
        fvd.update(fake[part], real=False)
        video_is.update(gen[part])
        result = {"fvd": fvd.compute(), "is": video_is.compute(), "local_count": int(fvd.real_count)}
        # Rank 1 ran another I3D file: its features must not be summed with rank 0's.
        mixed = FVD(load_i3d(i3d_paths[rank]), num_features=8)
        mixed.update(real[part], real=True)
        mixed.update(fake[part], real=False)
        try:
            mixed.compute()
            result["mixed"] = "computed"
        except DVError as err:
            result["mixed"] = str(err)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_sync_equals_single_process(tmp_path):
    torch.manual_seed(0)
    i3d_a = save_script(TinyI3D(), tmp_path / "i3d_a.pt")
    i3d_b = save_script(TinyI3D(), tmp_path / "i3d_b.pt")  # other random weights: another file
    c3d = save_script(TinyC3D(), tmp_path / "c3d.pt")
    # fork, not spawn: the children need no fresh import of torch and torchmetrics (seconds each on CPU).
    args = (str(tmp_path / "init"), [str(i3d_a), str(i3d_b)], str(c3d), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=2, join=True, start_method="fork")

    real, fake, gen = _data()
    fvd, video_is = _metrics(i3d_a, c3d)
    for part in (slice(0, SPLIT), slice(SPLIT, None)):  # the order all_gather concatenates ranks in
        fvd.update(real[part], real=True)
        fvd.update(fake[part], real=False)
        video_is.update(gen[part])
    single_fvd, single_is = fvd.compute(), video_is.compute()
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["local_count"] == (SPLIT if rank == 0 else N - SPLIT)  # states unsynced again after compute
        assert torch.allclose(result["fvd"], single_fvd, rtol=1e-9, atol=1e-9)
        assert torch.allclose(torch.stack(result["is"]), torch.stack(single_is), rtol=1e-9, atol=1e-12)
        assert "cannot be mixed" in result["mixed"]
