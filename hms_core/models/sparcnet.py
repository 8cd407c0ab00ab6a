"""SPaRCNet (Jing et al., Neurology 2023), the published clinical baseline, from braindecode, on bipolar windows.

The network is braindecode's ``SPARCNet`` unchanged (dense blocks with transition layers). ``input_downsample``
average-pools the input in time before it (1 = the published 200 Hz input); the demo profile uses it to fit the
CPU budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint_sequential

from hms_core.models.base import EEGClassifier
from hms_core.models.registry import register_model


@register_model("sparcnet")
class SPaRCNet(EEGClassifier):
    name = "sparcnet"
    input_kind = "raw"

    def __init__(
        self,
        block_layers: int = 4,
        growth_rate: int = 16,
        bn_size: int = 16,
        drop_prob: float = 0.5,
        input_downsample: int = 1,
        n_chans: int | None = None,
        n_times: int | None = None,
        sfreq: float | None = None,
    ) -> None:
        hp = dict(block_layers=block_layers, growth_rate=growth_rate, bn_size=bn_size, drop_prob=drop_prob,
                  input_downsample=input_downsample)  # fmt: skip
        super().__init__(hp, {"n_chans": n_chans, "n_times": n_times, "sfreq": sfreq})
        n_chans = self.require(self.signal, "n_chans", self.name)
        n_times = self.require(self.signal, "n_times", self.name)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from braindecode.models import SPARCNet

        self.input_downsample = int(input_downsample)
        self.net = SPARCNet(
            n_chans=n_chans,
            n_times=n_times // self.input_downsample,
            n_outputs=self.n_outputs,
            block_layers=block_layers,
            growth_rate=growth_rate,
            bottleneck_size=bn_size,
            drop_prob=drop_prob,
        )
        self._grad_ckpt = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self._grad_ckpt = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_downsample > 1:
            x = F.avg_pool1d(x, self.input_downsample)
        if self._grad_ckpt and self.training:
            enc = self.net.encoder
            h = checkpoint_sequential(enc, max(1, len(enc) // 2), x, use_reentrant=False)
            h = self.net.flatten_layer(self.net.activation_layer(self.net.adaptative_pool(h)))
            return self.net.final_layer(h)
        return self.net(x)
