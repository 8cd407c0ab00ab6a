"""Pretraining objectives: masked patch reconstruction (raw patch and its log-amplitude spectrum, loss on masked
patches only) and InfoNCE between two augmented views of the same window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hms_core.foundation.model import EEGEncoder, patchify, pool_tokens

__all__ = ["FoundationPretrainer", "info_nce", "log_amplitude_spectrum", "masked_mse"]


def log_amplitude_spectrum(patches: torch.Tensor) -> torch.Tensor:
    """``log1p(|rfft(patch)|)`` of patches ``(..., S)`` -> ``(..., S // 2 + 1)`` (amplitude per 1-Hz bin)."""
    return torch.log1p(torch.fft.rfft(patches.float(), dim=-1, norm="ortho").abs())


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked patches only: ``pred``/``target`` (B, C, P, F), ``mask`` (B, C, P)."""
    m = mask.to(pred.dtype)[..., None]
    return ((pred.float() - target.float()) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP / BIOT style): row ``i`` of ``z1`` and of ``z2`` are the positives, every other
    window of the batch a negative; cosine similarity over ``temperature``."""
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    logits = z1 @ z2.T / temperature
    target = torch.arange(z1.shape[0], device=z1.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class FoundationPretrainer(nn.Module):
    """The encoder with its pretraining heads: patch reconstruction, spectrum reconstruction, projection."""

    def __init__(self, encoder: EEGEncoder, spectrum_target: bool = True, proj_dim: int = 64) -> None:
        super().__init__()
        d, s = encoder.d_model, encoder.patch_samples
        self.encoder = encoder
        self.recon_head = nn.Linear(d, s)
        self.spectrum_head = nn.Linear(d, s // 2 + 1) if spectrum_target else None
        self.proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, proj_dim))

    def forward(self, x: torch.Tensor, usable: torch.Tensor, channels: torch.Tensor,
                patch_mask: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """Losses of one masked view: ``recon`` and ``spectrum`` (masked patches only) and its projection ``z``."""
        h = self.encoder(x, usable, channels, patch_mask)
        target = patchify(x, self.encoder.patch_samples)
        out = {"recon": masked_mse(self.recon_head(h), target, patch_mask)}
        if self.spectrum_head is not None:
            out["spectrum"] = masked_mse(self.spectrum_head(h), log_amplitude_spectrum(target), patch_mask)
        out["z"] = self.proj(pool_tokens(h, usable))
        return out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, usable: torch.Tensor, channels: torch.Tensor,
                    patch_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The reconstructed patches ``(B, C, P, S)`` of a masked view (for plots)."""
        return self.recon_head(self.encoder(x, usable, channels, patch_mask))
