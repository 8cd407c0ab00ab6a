"""Batch-level augmentation (mixup) and the soft-label KL loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mixup(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Mix each sample with a random partner: lam ~ Beta(alpha, alpha) per batch; targets mixed the same way."""
    if alpha <= 0 or x.shape[0] < 2:
        return x, y, w
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam * w + (1 - lam) * w[perm]


def _beta(alpha: float, g: torch.Generator) -> float:
    """Beta(alpha, alpha) from two seeded Gamma draws (torch's Beta sampler takes no generator)."""
    ga, gb = _gamma(alpha, g), _gamma(alpha, g)
    return ga / (ga + gb)


def _gamma(alpha: float, g: torch.Generator) -> float:
    """Marsaglia-Tsang Gamma(alpha, 1) sampler driven by a seeded torch generator."""
    boost = 1.0
    if alpha < 1:
        boost = float(torch.rand(1, generator=g)) ** (1.0 / alpha)
        alpha += 1
    d = alpha - 1 / 3
    c = 1 / (9 * d) ** 0.5
    while True:
        x = float(torch.randn(1, generator=g))
        v = (1 + c * x) ** 3
        if v <= 0:
            continue
        u = float(torch.rand(1, generator=g))
        if u < 1 - 0.0331 * x**4 or math.log(max(u, 1e-300)) < 0.5 * x * x + d * (1 - v + math.log(v)):
            return d * v * boost


def soft_kl_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean over rows of KL(target || softmax(logits)); equals KLDivLoss(batchmean) for unit weights."""
    logp = F.log_softmax(logits.float(), dim=1)
    t = target.float()
    kl = (torch.xlogy(t, t) - t * logp).sum(dim=1)
    if weight is None:
        return kl.mean()
    w = weight.float()
    return (kl * w).sum() / w.sum().clamp_min(1e-8)
