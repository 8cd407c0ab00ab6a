"""Inference: flip-TTA probabilities for a partition, prediction tables, and ``load_trained`` for saved models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hms_core.constants import VOTE_COLUMNS
from hms_core.partition import Partition, load_partition
from hms_core.training.data import RowDataset, all_rows, make_loader
from hms_core.training.inputs import InputSpec, feature_matrix

#: Probability columns of every prediction table (the submission layout); targets are ``target_<column>``.
PRED_COLUMNS: tuple[str, ...] = VOTE_COLUMNS
TARGET_COLUMNS: tuple[str, ...] = tuple(f"target_{c}" for c in VOTE_COLUMNS)
ID_COLUMNS: tuple[str, ...] = ("eeg_id", "eeg_sub_id", "label_id", "spectrogram_id", "patient_id", "total_votes")


@torch.no_grad()
def predict_torch(model: torch.nn.Module, ds: RowDataset, batch_size: int = 64, device: torch.device | str = "cpu",
                  tta: bool = True, num_workers: int = 0, amp: bool = False) -> np.ndarray:  # fmt: skip
    """Softmax probabilities (N, 6) in dataset order; with ``tta`` averaged with the left/right-flipped input."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = make_loader(ds, batch_size, epoch=0, seed=0, shuffle=False, num_workers=num_workers,
                         pin_memory=device.type == "cuda")  # fmt: skip
    out = []
    for x, _, _ in loader:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            p = torch.softmax(model(x).float(), dim=1)
            if tta:
                p = 0.5 * (p + torch.softmax(model(model.flip_input(x)).float(), dim=1))
        out.append(p.cpu().numpy().astype(np.float64))
    model.train(was_training)
    probs = np.concatenate(out) if out else np.zeros((0, 6))
    return probs / probs.sum(axis=1, keepdims=True)


def prediction_table(part: Partition, probs: np.ndarray) -> pd.DataFrame:
    """Index id columns + six probability columns (+ targets when the partition has votes)."""
    df = part.index[[c for c in ID_COLUMNS if c in part.index.columns]].reset_index(drop=True).copy()
    for k, c in enumerate(PRED_COLUMNS):
        df[c] = probs[:, k]
    if part.has_targets:
        t = part.targets
        for k, c in enumerate(TARGET_COLUMNS):
            df[c] = t[:, k]
    return df


@dataclass
class TrainedModel:
    """A trained (model, fold) loaded from ``out_dir/final``: ``predict(partition) -> (N, 6)`` probabilities."""

    name: str
    config: dict[str, Any]
    model: Any
    input_spec: InputSpec | None
    device: torch.device

    @property
    def input_kind(self) -> str:
        return self.config["input_kind"]

    def predict(self, partition: str | Path | Partition, batch_size: int = 64, tta: bool | None = None,
                num_workers: int = 0) -> np.ndarray:  # fmt: skip
        """Probabilities for every row of ``partition`` (a folder or an opened :class:`Partition`), built with the
        input spec the model was trained with (a partition whose layout does not fit raises)."""
        part = partition if isinstance(partition, Partition) else load_partition(partition)
        if self.input_kind == "features":
            return self.model.predict_proba(feature_matrix(part, self.config["feature_names"]))
        tta = self.config["training"].get("flip_tta", True) if tta is None else tta
        ds = RowDataset([part], all_rows(part), self.input_spec, with_targets=False)
        return predict_torch(self.model, ds, batch_size, self.device, tta, num_workers)


def load_trained(out_dir: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Load ``out_dir/final`` (weights + resolved config written by ``train_fold``)."""
    from hms_core.models.registry import model_from_config

    final = Path(out_dir) / "final"
    cfg_path = final / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} does not exist; train the model first (train_fold writes it)")
    config = json.loads(cfg_path.read_text())
    model = model_from_config(config["model"])
    device = torch.device(device)
    if config["input_kind"] == "features":
        model.load(final / config["weights_file"])
        return TrainedModel(config["model"]["name"], config, model, None, device)
    state = torch.load(final / config["weights_file"], map_location=device, weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    return TrainedModel(config["model"]["name"], config, model, InputSpec.from_dict(config["input_spec"]), device)
