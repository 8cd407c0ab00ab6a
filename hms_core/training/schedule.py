"""Learning-rate schedule (linear warm-up then cosine decay) and exponential moving average of weights."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class WarmupCosine:
    """lr = base * factor(t), t in epochs (fractional): linear warm-up over ``warmup`` epochs, cosine to ``min_factor``.

    The schedule is a pure function of ``t``; its state (the last ``t``) is checkpointed for completeness.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_epochs: float, warmup_epochs: float = 1.0,
                 min_factor: float = 0.01) -> None:  # fmt: skip
        self.optimizer = optimizer
        self.total = max(float(total_epochs), 1e-9)
        self.warmup = min(float(warmup_epochs), self.total)
        self.min_factor = min_factor
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.t = 0.0
        self.set(0.0)

    def factor(self, t: float) -> float:
        if self.warmup > 0 and t < self.warmup:
            return max(t / self.warmup, 1e-3)
        span = max(self.total - self.warmup, 1e-9)
        progress = min(max((t - self.warmup) / span, 0.0), 1.0)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def set(self, t: float) -> float:
        self.t = float(t)
        f = self.factor(self.t)
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * f
        return self.base_lrs[0] * f

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "base_lrs": self.base_lrs, "total": self.total, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.set(state["t"])


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), with the usual decay warm-up."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        msd = model.state_dict()
        for k, v in self.module.state_dict().items():
            src = msd[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src.to(v.dtype), alpha=1 - d)
            else:
                v.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
