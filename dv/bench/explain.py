"""torch._dynamo.explain of the denoiser (U-Net with the branch's residuals) as a training step calls it."""

from __future__ import annotations

import torch
from einops import rearrange

from dv.bench.workload import Workload


def explain_denoiser(work: Workload):
    """The ExplainOutput (graph count, graph breaks and their reasons) of one denoiser call in training mode."""
    module = work.module.train()
    video = work.batch["video"].to(work.device)
    video = rearrange(video, "b t h w c -> b c t h w").float() / 127.5 - 1
    with torch.no_grad():
        latents = module.encode_video(video)
        text = module.backbone.encode_text(work.batch["caption"])
    features = module.branch.encode_image(video[:, :, 0]) if module.branch is not None else None
    t = torch.randint(0, module.noise_scheduler.config.num_train_timesteps, (video.shape[0],), device=work.device)
    torch._dynamo.reset()
    with work.autocast():
        return torch._dynamo.explain(module.denoiser)(latents, t, text, features)


def explain_lines(out) -> list[str]:
    """Graph count, graph-break count, ops per graph, and each break's reason and place."""
    lines = [
        f"graphs            {out.graph_count}",
        f"graph breaks      {out.graph_break_count}",
        f"ops per graph     {', '.join(str(len(ops)) for ops in out.ops_per_graph)}",
    ]
    for i, reason in enumerate(out.break_reasons, 1):
        where = reason.user_stack[-1] if reason.user_stack else None
        place = f" at {where.filename}:{where.lineno}" if where is not None else ""
        lines.append(f"break {i}           {reason.reason.splitlines()[0]}{place}")
    return lines
