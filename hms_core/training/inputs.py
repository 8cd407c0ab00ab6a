"""Model inputs: how one row of a processed partition becomes what a model reads.

Training, inference (:mod:`hms_core.training.predict`), export and serving all build inputs here, from the
partition's :class:`~hms_core.partition.Layout` (never from constants), so a model sees the same tensors wherever it
runs:

- ``raw``: the bipolar derivations of the labelled segment, ``layout.segment`` of the stored context (or the whole
  context with ``use_context``), float32 ``(n_chans, n_times)``;
- ``spectrogram``: an image ``(n_types, 4 * H, W)``: per type the four chains (LL, RL, LP, RP; each ``(F, T)``)
  resized to one tile and stacked vertically, the types as image channels;
- ``features``: the numeric columns of ``features.parquet``.

:class:`InputSpec` records the choice (saved in every model's ``final/config.json``), so inference rebuilds inputs
identically and refuses a partition whose layout does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hms_core.checks import check_option
from hms_core.constants import CHAIN_FLIP, CHAIN_NAMES, LABEL_WINDOW_SAMPLES
from hms_core.models.specs import InputKind
from hms_core.partition import FEATURES_FILE, Layout, Partition, PartitionError

__all__ = [
    "CHAIN_FLIP_ORDER",
    "INPUT_KINDS",
    "N_CHAINS",
    "InputSpec",
    "build_spectrogram_image",
    "check_layout",
    "feature_columns",
    "feature_matrix",
    "image_tile_size",
    "infer_input_spec",
    "raw_input",
]

N_CHAINS = len(CHAIN_NAMES)
#: Chain permutation of a left/right flip (LL<->RL, LP<->RP) for arrays with the chain on one axis.
CHAIN_FLIP_ORDER: tuple[int, ...] = tuple(CHAIN_NAMES.index(CHAIN_FLIP[c]) for c in CHAIN_NAMES)
#: The input kinds of :data:`hms_core.models.specs.InputKind` that take tensors (``features`` takes a table).
INPUT_KINDS: tuple[str, ...] = tuple(k for k in get_args(InputKind) if k != "features")
#: Columns of a features table that identify a row rather than describe it.
ID_COLUMNS: frozenset[str] = frozenset(
    {"eeg_id", "label_id", "eeg_sub_id", "spectrogram_id", "spectrogram_sub_id", "patient_id", "fold", "row"}
)


@dataclass
class InputSpec:
    """How rows become model inputs; saved with the resolved config so inference rebuilds inputs identically.

    ``n_times`` is the number of samples a raw model reads: the partition's segment length, or its context length
    with ``use_context``.
    """

    kind: str  # raw | spectrogram
    n_chans: int = 16
    n_times: int = LABEL_WINDOW_SAMPLES
    use_context: bool = False
    spectrograms: list[str] = field(default_factory=list)
    tile: tuple[int, int] | None = None
    spec_frames_per_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_chans": self.n_chans, "n_times": self.n_times, "use_context": self.use_context,
                "spectrograms": list(self.spectrograms), "tile": list(self.tile) if self.tile else None,
                "spec_frames_per_s": dict(self.spec_frames_per_s)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        d = dict(d)
        d["tile"] = tuple(d["tile"]) if d.get("tile") else None
        return cls(**d)


def infer_input_spec(kind: str, part: Partition, model_cfg: Mapping[str, Any]) -> InputSpec:
    """The input spec of a model of input ``kind`` with config ``model_cfg`` trained on partitions like ``part``."""
    check_option("kind", kind, INPUT_KINDS)
    layout = part.layout
    if kind == "raw":
        n_chans = int(part.array("bipolar").shape[1])
        use_context = bool(model_cfg.get("use_context", False))
        n_times = layout.context_length if use_context else layout.segment_length
        return InputSpec("raw", n_chans=n_chans, n_times=int(n_times), use_context=use_context)
    types = list(model_cfg.get("spectrograms") or ["stft"])
    shapes = {}
    for t in types:
        check_option("spectrograms", t, layout.spectrogram_types)
        shapes[t] = tuple(int(s) for s in part.array(f"spec_{t}").shape[-2:])
    tile = image_tile_size(shapes, types, model_cfg.get("image_size"))
    fps = {t: float(layout.frames_per_second(t)) for t in types}
    return InputSpec("spectrogram", n_chans=len(types), spectrograms=types, tile=tile, spec_frames_per_s=fps)


def check_layout(part: Partition, spec: InputSpec) -> None:
    """Raise :class:`PartitionError` when ``part`` cannot give the inputs ``spec`` describes."""
    layout = part.layout
    if spec.kind == "raw":
        have = layout.context_length if spec.use_context else layout.segment_length
        what = "context_length" if spec.use_context else "segment_length"
        if have != spec.n_times or len(layout.bipolar) != spec.n_chans:
            raise PartitionError(
                f"{part.path}: the model reads {spec.n_chans} bipolar channels x {spec.n_times} samples but the "
                f"partition's layout has {len(layout.bipolar)} channels and {what}={have} "
                f"(preprocessing.eeg.{what}); preprocess with the parameters the model was trained with."
            )
    elif spec.kind == "spectrogram":
        missing = [t for t in spec.spectrograms if t not in layout.spectrogram_types]
        if missing:
            raise PartitionError(f"{part.path}: the model reads spectrograms {spec.spectrograms} but the partition "
                                 f"has {list(layout.spectrogram_types)} (missing {missing})")  # fmt: skip


def raw_input(x: np.ndarray, layout: Layout, spec: InputSpec, shift: int = 0) -> np.ndarray:
    """One row's raw model input, float32 ``(n_chans, spec.n_times)``, from its stored context ``x`` (C, context).

    Takes ``layout.segment`` (moved by ``shift`` samples, kept inside the context), or the whole context rolled by
    ``shift`` with ``use_context``. Only the needed samples are read from a memory-mapped ``x``; NaN becomes 0.
    """
    if spec.use_context:
        out = np.asarray(x, dtype=np.float32)
        if shift:
            out = np.roll(out, shift, axis=-1)
    else:
        n = spec.n_times
        start = int(np.clip(layout.segment.start + shift, 0, x.shape[-1] - n))
        out = np.asarray(x[:, start : start + n], dtype=np.float32)
    return np.nan_to_num(out)


def image_tile_size(shapes: Mapping[str, tuple[int, int]], types: Sequence[str],
                    image_size: Sequence[int] | None) -> tuple[int, int]:  # fmt: skip
    """(H_tile, W) of one chain tile: from ``image_size`` (H, W) or the first type's native (F, T)."""
    if image_size is not None:
        return int(image_size[0]) // N_CHAINS, int(image_size[1])
    f, t = shapes[types[0]]
    return int(f), int(t)


def build_spectrogram_image(arrays: Mapping[str, np.ndarray | torch.Tensor], types: Sequence[str],
                            tile: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """Per-sample ``{type: (4, F, T)}`` (or batched ``(B, 4, F, T)``) -> image ``([B,] n_types, 4*H, W)`` float32."""
    chans = []
    batched = False
    for t in types:
        a = arrays[t] if torch.is_tensor(arrays[t]) else torch.from_numpy(np.array(arrays[t], dtype=np.float32))
        batched = a.ndim == 4
        a = a if batched else a.unsqueeze(0)
        if a.shape[1] != N_CHAINS:
            raise ValueError(
                f"spectrogram '{t}': expected {N_CHAINS} chains on axis 1, got shape {tuple(a.shape)}"
            )
        a = a.float()
        if tuple(a.shape[-2:]) != tuple(tile):
            a = F.interpolate(a, size=tile, mode="bilinear", align_corners=False)
        chans.append(torch.nan_to_num(a).reshape(a.shape[0], N_CHAINS * tile[0], tile[1]))
    img = torch.stack(chans, dim=1)
    return img if batched else img[0]


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Numeric feature columns of a features table (ids excluded)."""
    return [c for c in df.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(df[c])]


def feature_matrix(part: Partition, columns: Sequence[str]) -> np.ndarray:
    """The partition's features as float32 ``(N, len(columns))``; missing columns raise naming the file."""
    feats = part.features()
    missing = [c for c in columns if c not in feats.columns]
    if missing:
        raise PartitionError(f"{part.path / FEATURES_FILE} lacks feature columns {missing[:5]} "
                             f"({len(missing)} in all) the model reads")  # fmt: skip
    return feats[list(columns)].to_numpy(np.float32)
