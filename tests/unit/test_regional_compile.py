"""Regional compilation (backbone.compile_regions: layers): each repeated diffusers layer compiled in place."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from dv.bench.compile import compiled_graphs, graph_breaks
from dv.errors import ConfigError
from dv.models.speed import REGION_CLASSES, apply_compile, compile_regions
from tests.tiny import tiny_dreamvideo
from tests.unit.test_models import make_batch


def test_regions_are_the_repeated_layers_outermost_first():
    module = tiny_dreamvideo()
    regions = compile_regions(module.backbone.unet)
    assert regions and all(type(r).__name__ in REGION_CLASSES for r in regions)
    inner = {id(m) for r in regions for m in list(r.modules())[1:]}
    assert not any(id(r) in inner for r in regions), "no region inside another"
    with pytest.raises(ConfigError, match="compile_regions"):
        apply_compile(module.backbone.unet, None, None, "blocks")


def test_compile_backend_is_checked():
    module = tiny_dreamvideo()
    with pytest.raises(ConfigError, match="compile_backend"):
        apply_compile(module.backbone.unet, None, None, "layers", "fastest")
    with pytest.raises(ConfigError, match="inductor's"):
        apply_compile(module.backbone.unet, None, "reduce-overhead", "layers", "aot_eager")


def _loss_and_grads(module, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training loss (seeded draws and dropout) and the gradients of the trained weights."""
    torch.manual_seed(step)
    per_sample, _ = module.diffusion_loss(make_batch(2, 4, 16, seed=step), torch.Generator().manual_seed(step), True)
    loss = per_sample.mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.trainable_parameters()}
    module.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.slow
def test_a_step_compiled_per_layer_gives_eager_loss_and_gradients_and_settles():
    """compile_regions: layers traces forward and backward (aot_eager) with no graph break on the first step, compiles
    nothing on later steps, and computes what the eager model computes."""
    torch.manual_seed(0)
    module = tiny_dreamvideo()
    eager = [_loss_and_grads(module, step) for step in range(3)]
    torch._dynamo.reset()
    counters.clear()
    assert apply_compile(module.backbone.unet, module.branch, None, "layers", "aot_eager") > 0
    graphs = []
    for step, (eager_loss, eager_grads) in enumerate(eager):
        loss, grads = _loss_and_grads(module, step)
        graphs.append(compiled_graphs())
        torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
        for name, grad in eager_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert graphs[0] > 0 and graphs[1:] == [graphs[0]] * 2, f"graphs compiled after each step: {graphs}"
    assert graph_breaks() == {}
