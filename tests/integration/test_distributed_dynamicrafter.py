"""DynamiCrafter-style training under FSDP: its checkpoint names survive the wrapping (the DreamVideo counterparts are
in test_distributed.py)."""

from __future__ import annotations

import torch

from dv.strategies import DVFSDPStrategy
from tests.tiny import tiny_dynamicrafter


def test_dynamicrafter_checkpoint_names_survive_fsdp_wrapping():
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        module = tiny_dynamicrafter(ema_decay=0.9)
        names = [n for n, _ in module.trainable_parameters()]
        assert any(n.startswith("branch.projection.") for n in names) and any("conv_in.reference" in n for n in names)
        DVFSDPStrategy(parallel_devices=[torch.device("cpu")])._setup_model(module)
        assert any("_fsdp_wrapped_module." in n for n, _ in module.backbone.unet.named_parameters()), "units nest it"
        wrapped = [n for n, _ in module.trainable_parameters()]
        assert wrapped == names, "plain names (as the checkpoint keeps them) under FSDP units"
        assert module.ema.names == names
    finally:
        torch.distributed.destroy_process_group()
