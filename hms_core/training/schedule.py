"""Learning-rate schedule, its length on small folds, early stopping, and an exponential moving average of weights.

A schedule written in epochs (``epochs``, ``warmup_epochs``, ``early_stopping_patience``) suits a large fold, but a
fold of a few hundred rows makes only a handful of optimizer steps per epoch: 8 epochs of 160 rows at batch 32 are
40 steps, and the models are still far from trained when the cosine reaches its floor. :func:`plan_schedule`
stretches every epoch-defined length by one factor so that a fold makes at least ``min_steps`` steps (large folds
are unchanged). :class:`EarlyStopping` decides on a running mean of the validation score, so one noisy evaluation
of a small validation fold neither ends training nor resets the patience, and :func:`monitor_mask` monitors every
validation row when the fold has too few high-vote rows for their KL to pick an epoch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hms_core.checks import check_range


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


@dataclass(frozen=True)
class SchedulePlan:
    """Epoch-defined lengths after :func:`plan_schedule`: ``factor`` (>= 1) scaled them all."""

    stage_epochs: tuple[int, ...]
    warmup_epochs: float
    patience: int
    factor: float
    steps: int  # optimizer steps over all stages

    @property
    def total_epochs(self) -> int:
        return sum(self.stage_epochs)

    def stage_starts(self) -> list[int]:
        """First epoch of each stage."""
        return [sum(self.stage_epochs[:i]) for i in range(len(self.stage_epochs))]


def plan_schedule(stage_epochs: Sequence[int], steps_per_epoch: Sequence[int], warmup_epochs: float,
                  patience: int, min_steps: int = 0) -> SchedulePlan:  # fmt: skip
    """Stretch a schedule written in epochs so that it makes at least ``min_steps`` optimizer steps.

    ``stage_epochs[i]`` epochs of ``steps_per_epoch[i]`` steps each; when they add up to fewer than ``min_steps``
    steps, every stage, the warm-up and the early-stopping patience are scaled by the same factor, so the shape of
    the schedule (warm-up fraction, cosine, patience relative to the run) is the one configured for large folds.
    """
    if len(stage_epochs) != len(steps_per_epoch) or not stage_epochs:
        raise ValueError(f"plan_schedule: stage_epochs {list(stage_epochs)} and steps_per_epoch "
                         f"{list(steps_per_epoch)} must be non-empty and of the same length")  # fmt: skip
    for name, v in (("min_steps", min_steps), ("patience", patience), ("warmup_epochs", warmup_epochs)):
        check_range(name, v, 0)
    for e, s in zip(stage_epochs, steps_per_epoch):
        check_range("stage_epochs", e, 1)
        check_range("steps_per_epoch", s, 0)
    steps = sum(e * s for e, s in zip(stage_epochs, steps_per_epoch))
    factor = max(1.0, min_steps / steps) if steps > 0 else 1.0
    if factor == 1.0:
        return SchedulePlan(tuple(int(e) for e in stage_epochs), float(warmup_epochs), int(patience), 1.0, steps)
    epochs = tuple(math.ceil(e * factor - 1e-9) for e in stage_epochs)
    return SchedulePlan(epochs, float(warmup_epochs) * factor, math.ceil(patience * factor - 1e-9), factor,
                        sum(e * s for e, s in zip(epochs, steps_per_epoch)))  # fmt: skip


#: Fewest high-vote validation rows whose KL early stopping monitors. The KL of a smaller subset is too noisy to pick
#: an epoch (its standard error shrinks as 1/sqrt(n): 17 high-vote rows of a 40-row validation fold chose epochs
#: whose KL on all rows was above the prior's); below it every validation row is monitored.
MIN_MONITOR_ROWS = 50


def monitor_mask(high_votes: np.ndarray, min_rows: int = MIN_MONITOR_ROWS) -> np.ndarray:
    """Validation rows whose KL early stopping monitors: the high-vote rows if at least ``min_rows``, else all."""
    high = np.asarray(high_votes, dtype=bool)
    return high if int(high.sum()) >= min_rows else np.ones(len(high), dtype=bool)


def steps_per_epoch(n_rows: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps of one epoch of the training loader (each rank's share, incomplete last batch dropped)."""
    per_rank = -(-int(n_rows) // int(world_size))
    return per_rank // batch_size if per_rank > batch_size else (1 if per_rank else 0)


@dataclass
class EarlyStopping:
    """Best-score tracking and a patience counter on a smoothed score (lower is better).

    ``update(score)`` returns True when ``score`` is the best raw score so far (save the checkpoint then). Patience
    counts evaluations since the running mean of the last ``smoothing`` scores last improved; ``should_stop`` is
    True once it reaches ``patience``. ``smoothing=1`` is plain early stopping on the raw score.
    """

    patience: int
    smoothing: int = 3
    min_delta: float = 1e-6
    best: float = math.inf
    best_step: int = -1
    best_smoothed: float = math.inf
    bad: int = 0
    scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_range("patience", self.patience, 1)
        check_range("smoothing", self.smoothing, 1)

    def update(self, score: float) -> bool:
        score = float(score)
        self.scores.append(score)
        smoothed = sum(self.scores[-self.smoothing :]) / len(self.scores[-self.smoothing :])
        if smoothed < self.best_smoothed - self.min_delta:
            self.best_smoothed, self.bad = smoothed, 0
        else:
            self.bad += 1
        if score < self.best - self.min_delta:
            self.best, self.best_step = score, len(self.scores) - 1
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad >= self.patience

    def reset_patience(self) -> None:
        """A new training stage starts: count patience afresh from its first evaluation."""
        self.bad, self.best_smoothed, self.scores = 0, math.inf, []

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "best_smoothed": self.best_smoothed,
                "bad": self.bad, "scores": list(self.scores)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = float(state["best"]), int(state["best_step"])
        self.best_smoothed, self.bad = float(state["best_smoothed"]), int(state["bad"])
        self.scores = [float(x) for x in state["scores"]]


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
