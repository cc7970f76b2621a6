"""Identities of frozen networks: a SHA-256 over what decides their outputs (config and weights).

Latent shards record the identity of the VAE (and text encoder) that made them; a training run
compares it with its own and refuses a cache made by another network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import torch
from torch import nn


def weights_identity(config: dict[str, Any], module: nn.Module) -> str:
    """SHA-256 (hex) over a config (canonical JSON) and every state-dict tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\n{name}:{t.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy())
    return digest.hexdigest()


def module_identity(module: nn.Module, config: dict[str, Any]) -> str:
    """weights_identity of a frozen module, computed once and kept on the module (its weights never change)."""
    cached = getattr(module, "_dv_identity", None)
    if cached is None:
        cached = weights_identity(config, module)
        module._dv_identity = cached  # a plain attribute: not a parameter, not in state dicts
    return cached


def text_encoder_identity(text: nn.Module) -> str:
    """Identity of a dv TextEncoder: its config (less the weights path; the weights are hashed) and weights."""
    config = {k: v for k, v in asdict(text.config).items() if k != "checkpoint"}
    return module_identity(text, {"text_encoder": config})
