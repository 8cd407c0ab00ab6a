"""1D ResNet with squeeze-and-excitation blocks and a bidirectional GRU head, on bipolar EEG windows.

Input ``(batch, n_chans, n_times)`` (double-banana bipolar channels, robust-scaled); output logits ``(batch, 6)``.
A strided stem reduces the time axis by ``downsample``; each stage after the first halves it again; the GRU reads
the resulting feature sequence and its outputs are mean- and max-pooled over time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hms_core.models.base import EEGClassifier
from hms_core.models.registry import register_model


class SqueezeExcitation1d(nn.Module):
    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv1d(channels, hidden, 1)
        self.fc2 = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=-1, keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class BasicBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, kernel_size: int, dropout: float, se: bool) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.se = SqueezeExcitation1d(c_out) if se else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        out = self.se(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


@register_model("resnet1d_gru")
class ResNet1DGRU(EEGClassifier):
    name = "resnet1d_gru"
    input_kind = "raw"

    def __init__(
        self,
        initial_filters: int = 64,
        num_blocks: list[int] | tuple[int, ...] = (2, 2, 2, 2),
        dropout: float = 0.3,
        se_block: bool = True,
        gru_hidden: int = 128,
        kernel_size: int = 7,
        downsample: int = 4,
        use_context: bool = False,
        n_chans: int | None = None,
        n_times: int | None = None,
        sfreq: float | None = None,
    ) -> None:
        hp = dict(initial_filters=initial_filters, num_blocks=list(num_blocks), dropout=dropout, se_block=se_block,
                  gru_hidden=gru_hidden, kernel_size=kernel_size, downsample=downsample, use_context=use_context)  # fmt: skip
        super().__init__(hp, {"n_chans": n_chans, "n_times": n_times, "sfreq": sfreq})
        n_chans = self.require(self.signal, "n_chans", self.name)
        if not num_blocks:
            raise ValueError("Invalid value for the 'num_blocks' parameter: expected at least one stage, got [].")
        f = initial_filters
        self.stem = nn.Sequential(
            nn.Conv1d(n_chans, f, kernel_size, stride=downsample, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(f),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        c_in = f
        for stage, n in enumerate(num_blocks):
            c_out = f * 2**stage
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                blocks.append(BasicBlock1d(c_in, c_out, stride, kernel_size, dropout, se_block))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.gru = nn.GRU(c_in, gru_hidden, batch_first=True, bidirectional=True)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(4 * gru_hidden, self.n_outputs)
        self._grad_ckpt = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self._grad_ckpt = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for blk in self.blocks:
            h = checkpoint(blk, h, use_reentrant=False) if (self._grad_ckpt and self.training) else blk(h)
        seq, _ = self.gru(h.transpose(1, 2))
        pooled = torch.cat([seq.mean(dim=1), seq.amax(dim=1)], dim=1)
        return self.head(self.head_drop(pooled))
