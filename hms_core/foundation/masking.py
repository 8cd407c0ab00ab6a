"""Patch masking and the augmented views of the pretraining objectives (all seeded by explicit generators, so a
step's masks and views are a pure function of ``(seed, step)`` and a resumed run draws exactly the same ones)."""

from __future__ import annotations

import torch

from hms_core.checks import check_range

__all__ = ["augment_view", "random_patch_mask"]


def random_patch_mask(
    usable: torch.Tensor, n_patches: int, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """``(B, C, P)`` bool, True = masked: ``round(ratio * n)`` of the ``n`` patches of usable derivations of each
    window, drawn uniformly; patches of unusable derivations are never masked (they carry no target)."""
    check_range("mask_ratio", ratio, 0, 1, low_inclusive=False, high_inclusive=False)
    b, c = usable.shape
    tok_ok = usable[:, :, None].expand(b, c, n_patches).reshape(b, -1)
    scores = torch.rand(b, c * n_patches, generator=generator).to(usable.device)
    scores = scores.masked_fill(~tok_ok, 2.0)  # unusable tokens sort last and are never picked
    n_mask = (tok_ok.sum(dim=1).to(torch.float32) * ratio).round().long().clamp_min(1)
    rank = scores.argsort(dim=1).argsort(dim=1)
    mask = (rank < n_mask[:, None]) & tok_ok
    return mask.reshape(b, c, n_patches)


def augment_view(x: torch.Tensor, usable: torch.Tensor, generator: torch.Generator, gain: float = 0.2,
                 noise: float = 0.1, channel_drop: float = 0.2,
                 max_shift: int = 100) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One augmented view of windows ``x`` (B, C, T): a circular time shift of up to ``max_shift`` samples, a gain
    per derivation in ``[1 - gain, 1 + gain]``, Gaussian noise of ``noise`` times the (unit) scale, and each usable
    derivation dropped from attention with probability ``channel_drop`` (at least one kept). Returns
    ``(view, usable)``."""
    b, c, _ = x.shape
    dev = x.device
    shift = int(torch.randint(-max_shift, max_shift + 1, (1,), generator=generator)) if max_shift else 0
    g = 1 + gain * (2 * torch.rand(b, c, 1, generator=generator) - 1)
    n = noise * torch.randn(x.shape, generator=generator)
    v = torch.roll(x, shift, dims=-1) * g.to(dev) + n.to(dev)
    drop = (torch.rand(b, c, generator=generator) < channel_drop).to(dev)
    keep = usable & ~drop
    # keep a window's first usable derivation when the draw dropped all of them
    first = torch.zeros_like(usable)
    first[torch.arange(b, device=usable.device), usable.to(torch.int8).argmax(dim=1)] = True
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, usable & first)
    return v, keep
