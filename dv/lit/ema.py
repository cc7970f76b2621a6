"""Exponential moving average of the trainable parameters only (not the frozen billions)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from dv.errors import ConfigError, WeightsError
from dv.models.trainable import ema_entry


class TrainableEMA:
    """EMA shadows of a fixed list of named parameters.

    The decay warms up as diffusers' `EMAModel` does by default: update n uses min(decay, (1 + n) / (10 + n)), so the
    shadows are not held back by the random initial weights (a constant 0.99 lags a 300-step run by a third of it).
    """

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), not {decay}")
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        """The decay of the next update: the configured one, warmed up over the first updates."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move every shadow towards its parameter by (1 - the current decay)."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.current_decay())
        self.updates += 1

    @contextmanager
    def swapped(self):
        """Inside the block the parameters hold the EMA weights; outside, the trained ones."""
        with torch.no_grad():
            backup = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        """Shadows by parameter name, and the update count."""
        return ema_entry(self.decay, self.updates, self.names, self.shadow)

    def load_state_dict(self, state: dict) -> None:
        """Restore shadows saved by state_dict (names must match)."""
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise WeightsError(f"the checkpoint's EMA lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, s in zip(self.names, self.shadow):
                s.copy_(state["shadow"][name])
        self.updates = int(state["updates"])

    def to(self, device) -> None:
        """Move the shadows (they follow the module's device)."""
        self.shadow = [s.to(device) for s in self.shadow]
