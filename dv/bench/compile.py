"""`dv bench --what compile`: what torch.compile costs on a recipe's first training steps, and whether it settles.

Each step is one training loss and its backward pass (the optimizer is not run): first on the eager model, then on
the same model compiled in place as the recipe's backbone says (or the flags). Per step it records wall-clock and
CPU seconds and the graphs dynamo has compiled so far. A setting that settles compiles everything on the first step:
later steps add no graph (no recompiles) and no step breaks a graph. CPU seconds count this process and the compiler
processes it waited for; with TORCHINDUCTOR_COMPILE_THREADS=1 that is all of the compile work, so the figure holds
on a shared machine.
"""

from __future__ import annotations

import resource
import time

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from dv.bench.device import synchronize
from dv.bench.workload import Workload
from dv.models.speed import apply_compile


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of the child processes it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process since its last reset (one per frame and guard set)."""
    return int(counters["stats"]["unique_graphs"])


def graph_breaks() -> dict[str, int]:
    """Graph breaks since dynamo's last reset, by reason."""
    return dict(counters["graph_break"])


def _step(work: Workload, generator: torch.Generator) -> dict:
    """One training loss and its backward pass: wall and CPU seconds, and the graphs compiled so far."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    with work.autocast():
        per_sample, _ = work.module.diffusion_loss(work.train_batch, generator, drop=True)
    per_sample.mean().backward()
    work.module.zero_grad(set_to_none=True)
    synchronize(work.device)
    return dict(wall_s=time.perf_counter() - wall, cpu_s=cpu_seconds() - cpu, graphs=compiled_graphs())


def compile_steps(work: Workload, steps: int, eager_steps: int = 2) -> dict:
    """Time `eager_steps` training losses with backward on the work's eager module (the first warms up), then
    compile it in place as its backbone config says and run `steps` more from a fresh dynamo state.

    Returns the eager seconds per step (the last eager step's), each compiled step's wall and CPU seconds and graphs
    compiled so far, the graph breaks by reason, and the graphs compiled after the first step (recompiles: 0 when
    the setting settles)."""
    module, cfg = work.module, work.module.backbone_config
    module.train()
    generator = torch.Generator(work.device).manual_seed(0)
    eager = [_step(work, generator) for _ in range(eager_steps)]
    torch._dynamo.reset()
    counters.clear()
    apply_compile(module.backbone.unet, module.branch, cfg.compile_mode, cfg.compile_regions, cfg.compile_backend)
    rows = [_step(work, generator) for _ in range(steps)]
    return dict(
        eager_s=eager[-1]["wall_s"] if eager else None,
        steps=rows,
        graph_breaks=graph_breaks(),
        graphs_after_first_step=rows[-1]["graphs"] - rows[0]["graphs"],
    )


def compile_lines(work: Workload, result: dict) -> list[str]:
    """The report's lines: the setting, each step, and the verdict."""
    cfg = work.module.backbone_config
    lines = [
        f"{work.describe()}, regions {cfg.compile_regions}, backend {cfg.compile_backend}",
        f"eager s/step {result['eager_s']:.2f} (the last of the eager steps)" if result["eager_s"] else "eager not run",
        f"{'compiled step':<14}{'wall s':>10}{'CPU s':>10}{'graphs':>8}",
    ]
    for i, row in enumerate(result["steps"]):
        lines.append(f"{i + 1:<14}{row['wall_s']:>10.1f}{row['cpu_s']:>10.1f}{row['graphs']:>8}")
    breaks = sum(result["graph_breaks"].values())
    lines.append(
        f"graph breaks {breaks}" + (f" ({result['graph_breaks']})" if breaks else "") + ", graphs compiled after "
        f"the first step {result['graphs_after_first_step']}"
    )
    return lines
