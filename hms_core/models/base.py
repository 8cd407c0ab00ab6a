"""Shared base of the torch classifiers: signal metadata, config round trip, input kind, flip permutation."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from hms_core.constants import N_CLASSES, SFREQ, bipolar_flip_index


class EEGClassifier(nn.Module):
    """Base of every torch model in the registry: ``forward(x) -> logits (batch, 6)``.

    Subclasses set ``name`` and ``input_kind`` and store their resolved hyper-parameters in ``self.hparams``;
    ``get_config()`` returns them with the signal metadata so ``model_from_config`` rebuilds the same network.
    """

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "raw"
    n_outputs: int = N_CLASSES

    def __init__(self, hparams: dict[str, Any], signal: dict[str, Any]) -> None:
        super().__init__()
        self.hparams = dict(hparams)
        self.signal = dict(signal)

    @staticmethod
    def require(signal: dict[str, Any], key: str, model: str) -> Any:
        if signal.get(key) is None:
            raise ValueError(
                f"Model '{model}' needs the '{key}' parameter (signal metadata); pass it to create_model, "
                f"e.g. create_model('{model}', {key}=...)."
            )
        return signal[key]

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.hparams, **{k: v for k, v in self.signal.items() if v is not None}}

    def set_grad_checkpointing(self, enable: bool = True) -> None:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    def flip_input(self, x: torch.Tensor) -> torch.Tensor:
        """Left/right hemisphere mirror of a batch of inputs (label preserving)."""
        idx = torch.as_tensor(bipolar_flip_index(self.signal.get("n_chans", 16) > 16), device=x.device)
        return x.index_select(1, idx)

    @property
    def sfreq(self) -> float:
        return float(self.signal.get("sfreq") or SFREQ)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
