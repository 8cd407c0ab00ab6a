"""``eeg_foundation``: the foundation encoder (:mod:`hms_core.foundation`) fine-tuned as a classifier.

The encoder reads the bipolar derivations of the labelled segment as 1-s patches (derivations that are identically
zero, i.e. missing or dropped by augmentation, are left out of attention); its token embeddings are mean-pooled
over usable derivations and patches, then a LayerNorm + dropout + linear head gives the 6 logits.

- ``pretrained: true`` loads the encoder saved by the foundation stage (``encoder_path``, default
  ``<workspace.root>/foundation/encoder``; filled in by the training job) with ``torch.load(weights_only=True)``;
  ``false`` starts from a random encoder of ``model_size``.
- ``linear_probe: true`` freezes the encoder (kept in eval mode: no dropout) and trains only the head.
- ``layer_decay`` < 1: layer-wise learning-rate decay (BEiT / LaBraM): the head gets the base rate, block ``i`` of
  ``depth`` gets ``layer_decay ** (depth + 1 - i)`` times it, the embeddings ``layer_decay ** (depth + 1)``;
  :meth:`param_groups` gives the optimiser these groups (the torch trainer uses them when a model has it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hms_core.constants import bipolar_names
from hms_core.foundation.model import MODEL_SIZES, EEGEncoder, channel_index, pool_tokens
from hms_core.models.base import EEGClassifier
from hms_core.models.registry import register_model


@register_model("eeg_foundation")
class EEGFoundationClassifier(EEGClassifier):
    name = "eeg_foundation"
    input_kind = "raw"

    def __init__(
        self,
        model_size: str = "tiny",
        pretrained: bool = False,
        encoder_path: str | None = None,
        linear_probe: bool = False,
        layer_decay: float = 0.75,
        head_dropout: float = 0.2,
        dropout: float = 0.1,
        n_chans: int | None = None,
        n_times: int | None = None,
        sfreq: float | None = None,
    ) -> None:
        hp = {"model_size": model_size, "pretrained": pretrained, "encoder_path": encoder_path,
              "linear_probe": linear_probe, "layer_decay": layer_decay, "head_dropout": head_dropout,
              "dropout": dropout}  # fmt: skip
        super().__init__(hp, {"n_chans": n_chans, "n_times": n_times, "sfreq": sfreq})
        n_chans = self.require(self.signal, "n_chans", self.name)
        self.require(self.signal, "n_times", self.name)
        if pretrained:
            self.encoder = self._pretrained(model_size, encoder_path, dropout)
        else:
            self.encoder = EEGEncoder.from_size(model_size, dropout=dropout)
        self.register_buffer(
            "channels", channel_index(list(bipolar_names(n_chans > 16))[:n_chans]), persistent=False
        )
        d = self.encoder.d_model
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Dropout(head_dropout), nn.Linear(d, self.n_outputs))
        self.linear_probe = bool(linear_probe)
        if self.linear_probe:
            self.encoder.requires_grad_(False)

    def _pretrained(self, size: str, path: str | None, dropout: float) -> EEGEncoder:
        from hms_core.foundation.pretrain import load_encoder

        if path is None:
            raise ValueError(
                "models.eeg_foundation.pretrained is true but no encoder_path was given; the training job fills it "
                "in with <workspace.root>/foundation/encoder (or set pretrained: false)."
            )
        enc, _ = load_encoder(path)
        want = {k: MODEL_SIZES[size][k] for k in ("d_model", "depth", "heads", "ff")}
        have = {k: enc.arch[k] for k in want}
        if have != want:
            raise ValueError(
                f"models.eeg_foundation.model_size is '{size}' ({want}) but the encoder in '{path}' was pretrained "
                f"with {have}; set foundation.model_size and models.eeg_foundation.model_size alike."
            )
        for m in enc.modules():
            if isinstance(m, nn.Dropout):
                m.p = dropout
        return enc

    def train(self, mode: bool = True) -> EEGFoundationClassifier:
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()  # a frozen feature extractor: no dropout
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.grad_checkpointing = enable

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser groups: layer-wise decayed rates; no weight decay on norms, biases, embeddings, mask token."""
        depth = self.encoder.depth
        decay = float(self.hparams["layer_decay"])
        groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            layer = (
                self.encoder.layer_id(name.removeprefix("encoder.")) if name.startswith("encoder.") else depth + 1
            )
            wd = p.ndim >= 2 and not name.endswith(("channel_embed.weight", "time_embed.weight"))
            groups.setdefault((layer, wd), []).append(p)
        return [{"params": ps, "lr": lr * decay ** (depth + 1 - layer), "weight_decay": weight_decay if wd else 0.0,
                 "layer": layer} for (layer, wd), ps in sorted(groups.items())]  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        usable = EEGEncoder.default_channel_mask(x)
        h = self.encoder(x, usable, self.channels)
        return self.head(pool_tokens(h, usable))
