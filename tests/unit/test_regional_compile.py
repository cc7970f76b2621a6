"""Regional compilation (backbone.compile_regions: layers): each repeated diffusers layer compiled in place."""

from __future__ import annotations

import pytest

from dv.errors import ConfigError
from dv.models.speed import REGION_CLASSES, apply_compile, compile_regions
from tests.tiny import tiny_dreamvideo


def test_regions_are_the_repeated_layers_outermost_first():
    module = tiny_dreamvideo()
    regions = compile_regions(module.backbone.unet)
    assert regions and all(type(r).__name__ in REGION_CLASSES for r in regions)
    inner = {id(m) for r in regions for m in list(r.modules())[1:]}
    assert not any(id(r) in inner for r in regions), "no region inside another"
    with pytest.raises(ConfigError, match="compile_regions"):
        apply_compile(module.backbone.unet, None, None, "blocks")
