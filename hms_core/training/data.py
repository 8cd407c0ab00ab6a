"""Reading processed partitions and turning rows into model inputs.

A partition folder (``<processed>/windows/fold_k`` or ``.../test``) holds ``index.parquet`` and arrays whose first
axis is the index row: ``bipolar.npy (N, 16|18, 10000)``, ``spec_<type>.npy (N, 4, F, T)``, ``features.parquet``.
Arrays are opened memory-mapped, so worker processes share the page cache instead of copying the data.

Training samples are addressed as ``epoch * n_rows + row``: the dataset derives the augmentation random stream
from ``(seed, epoch, row)``, so results do not depend on worker count, worker order or where a run was resumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hms_core.constants import CHAIN_FLIP, CHAIN_NAMES, LABEL_START_SAMPLE, LABEL_WINDOW_SAMPLES, SFREQ, VOTE_COLUMNS
from hms_core.constants import EEG_WINDOW_S, bipolar_flip_index

SPEC_TYPES = ("stft", "mel", "multitaper", "wavelet", "kaggle")
_CHAIN_FLIP = np.asarray([CHAIN_NAMES.index(CHAIN_FLIP[c]) for c in CHAIN_NAMES])


class PartitionError(ValueError):
    """A processed partition folder is missing a file or its arrays do not match its index."""


@dataclass
class Partition:
    """One processed partition folder: the row index plus lazily memory-mapped arrays (row i <-> index row i)."""

    path: Path
    index: pd.DataFrame
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _features: pd.DataFrame | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.index)

    def has(self, name: str) -> bool:
        return (self.path / f"{name}.npy").exists()

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            f = self.path / f"{name}.npy"
            if not f.exists():
                have = sorted(p.stem for p in self.path.glob("*.npy"))
                raise PartitionError(f"{f} does not exist; this partition has arrays {have}")
            arr = np.load(f, mmap_mode="r")
            if arr.shape[0] != len(self.index):
                raise PartitionError(
                    f"{f}: first axis has {arr.shape[0]} rows but {self.path / 'index.parquet'} has {len(self.index)}"
                )
            self._arrays[name] = arr
        return self._arrays[name]

    def __getstate__(self) -> dict[str, Any]:  # memmaps are re-opened in worker processes
        return {"path": self.path, "index": self.index, "_arrays": {}, "_features": self._features}

    @property
    def has_targets(self) -> bool:
        """Vote columns present and voted (the test set carries the columns with zero votes)."""
        return all(c in self.index.columns for c in VOTE_COLUMNS) and bool((self.votes.sum(axis=1) > 0).all())

    @property
    def votes(self) -> np.ndarray:
        return self.index[list(VOTE_COLUMNS)].to_numpy(dtype=np.float64)

    @property
    def total_votes(self) -> np.ndarray:
        if "total_votes" in self.index.columns:
            return self.index["total_votes"].to_numpy(dtype=np.float64)
        return self.votes.sum(axis=1)

    @property
    def targets(self) -> np.ndarray:
        """Vote fractions (N, 6) float32; rows without votes raise."""
        if not self.has_targets:
            raise PartitionError(f"{self.path / 'index.parquet'} has no vote columns {list(VOTE_COLUMNS)}")
        v = self.votes
        s = v.sum(axis=1, keepdims=True)
        if np.any(s <= 0):
            row = int(np.flatnonzero(s[:, 0] <= 0)[0])
            raise PartitionError(f"{self.path / 'index.parquet'}: row {row} has no votes")
        return (v / s).astype(np.float32)

    def features(self) -> pd.DataFrame:
        if self._features is None:
            f = self.path / "features.parquet"
            if not f.exists():
                raise PartitionError(f"{f} does not exist (the lightgbm model needs the features table)")
            df = pd.read_parquet(f)
            if len(df) != len(self.index):
                raise PartitionError(f"{f} has {len(df)} rows but {self.path / 'index.parquet'} has {len(self.index)}")
            if "eeg_id" in df.columns and "eeg_id" in self.index.columns:
                bad = np.flatnonzero(df["eeg_id"].to_numpy() != self.index["eeg_id"].to_numpy())
                if bad.size:
                    raise PartitionError(f"{f}: row {int(bad[0])} has eeg_id {df['eeg_id'].iloc[bad[0]]} but the "
                                         f"index has {self.index['eeg_id'].iloc[bad[0]]}")  # fmt: skip
            self._features = df
        return self._features


def load_partition(path: str | Path) -> Partition:
    """Open a processed partition folder (see module docstring)."""
    path = Path(path)
    f = path / "index.parquet"
    if not f.exists():
        raise PartitionError(f"{f} does not exist; expected a processed partition folder with index.parquet")
    return Partition(path, pd.read_parquet(f))


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Numeric feature columns of a features table (ids excluded)."""
    skip = {"eeg_id", "label_id", "eeg_sub_id", "spectrogram_id", "spectrogram_sub_id", "patient_id", "fold", "row"}
    return [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]


# --- input specification --------------------------------------------------------------------------------------
@dataclass
class InputSpec:
    """How rows become model inputs; saved with the resolved config so inference rebuilds inputs identically."""

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
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        d = dict(d)
        d["tile"] = tuple(d["tile"]) if d.get("tile") else None
        return cls(**d)


def infer_input_spec(kind: str, part: Partition, model_cfg: dict[str, Any]) -> InputSpec:
    if kind == "raw":
        arr = part.array("bipolar")
        use_context = bool(model_cfg.get("use_context", False))
        n_times = arr.shape[-1] if use_context else LABEL_WINDOW_SAMPLES
        return InputSpec("raw", n_chans=int(arr.shape[1]), n_times=int(n_times), use_context=use_context)
    if kind == "spectrogram":
        from hms_core.models.efficientnet import image_tile_size

        types = list(model_cfg.get("spectrograms") or ["stft"])
        shapes = {}
        for t in types:
            if t not in SPEC_TYPES:
                raise ValueError(f"Invalid value for the 'spectrograms' parameter. Allowed values are "
                                 f"{list(SPEC_TYPES)}, but got '{t}' instead.")  # fmt: skip
            shapes[t] = tuple(part.array(f"spec_{t}").shape[-2:])
        tile = image_tile_size(shapes, types, model_cfg.get("image_size"))
        fps = {t: _frames_per_s(part, t, shapes[t][1]) for t in types}
        return InputSpec("spectrogram", n_chans=len(types), spectrograms=types, tile=tile, spec_frames_per_s=fps)
    raise ValueError(f"Invalid value for the 'kind' parameter. Allowed values are 'raw', 'spectrogram', but got "
                     f"'{kind}' instead.")  # fmt: skip


def _frames_per_s(part: Partition, spec_type: str, n_frames: int) -> float:
    """Spectrogram frames per second: from the partition manifest's time axis, else the window length."""
    f = part.path / "manifest.json"
    if f.exists():
        import json

        axis = json.loads(f.read_text()).get("time_axes", {}).get(spec_type)
        if isinstance(axis, list) and len(axis) > 1 and axis[-1] > axis[0]:
            return (len(axis) - 1) / (float(axis[-1]) - float(axis[0]))
    return n_frames / (600.0 if spec_type == "kaggle" else float(EEG_WINDOW_S))


# --- datasets --------------------------------------------------------------------------------------------------
@dataclass
class AugmentParams:
    flip: float = 0.0
    time_shift_s: float = 0.0
    channel_dropout: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any | None) -> AugmentParams:
        if cfg is None:
            return cls()
        return cls(flip=cfg.flip, time_shift_s=cfg.time_shift_s, channel_dropout=cfg.channel_dropout)


class RowDataset(torch.utils.data.Dataset):
    """Rows of one or more partitions as ``(x, target, weight)``; sample key ``epoch * n_rows + row``.

    ``rows`` are (partition, row) pairs. ``augment`` (training only) draws flip, time shift and channel dropout
    from a generator seeded with ``(seed, epoch, row)``.
    """

    def __init__(self, parts: Sequence[Partition], rows: np.ndarray, spec: InputSpec,
                 weights: np.ndarray | None = None, augment: AugmentParams | None = None, seed: int = 0,
                 with_targets: bool = True) -> None:  # fmt: skip
        self.parts = list(parts)
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        self.spec = spec
        self.weights = np.ones(len(self.rows), np.float32) if weights is None else np.asarray(weights, np.float32)
        self.augment = augment
        self.seed = seed
        self.with_targets = with_targets
        self._targets = [p.targets if with_targets else None for p in self.parts]
        self._flip_raw = bipolar_flip_index(spec.n_chans > 16)

    def __len__(self) -> int:
        return len(self.rows)

    def _rng(self, epoch: int, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, i])

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(key), len(self.rows))
        p, r = self.rows[i]
        part = self.parts[p]
        rng = self._rng(epoch, i) if self.augment is not None else None
        x = self._raw(part, r, rng) if self.spec.kind == "raw" else self._spec(part, r, rng)
        y = torch.from_numpy(self._targets[p][r]) if self.with_targets else torch.zeros(6)
        return x, y, torch.tensor(self.weights[i])

    def _raw(self, part: Partition, r: int, rng: np.random.Generator | None) -> torch.Tensor:
        arr = part.array("bipolar")
        a = self.augment
        shift = 0
        if rng is not None and a.time_shift_s > 0:
            s = int(round(a.time_shift_s * SFREQ))
            shift = int(rng.integers(-s, s + 1))
        if self.spec.use_context:
            x = np.asarray(arr[r], dtype=np.float32)
            if shift:
                x = np.roll(x, shift, axis=-1)
        else:
            n = self.spec.n_times
            start = int(np.clip(LABEL_START_SAMPLE + shift, 0, arr.shape[-1] - n))
            x = np.asarray(arr[r, :, start : start + n], dtype=np.float32)
        x = np.nan_to_num(x)
        if rng is not None:
            if a.flip > 0 and rng.random() < a.flip:
                x = x[self._flip_raw]
            if a.channel_dropout > 0:
                drop = rng.random(x.shape[0]) < a.channel_dropout
                if drop.all():
                    drop[rng.integers(x.shape[0])] = False
                x = x * (~drop)[:, None]
        return torch.from_numpy(np.ascontiguousarray(x))

    def _spec(self, part: Partition, r: int, rng: np.random.Generator | None) -> torch.Tensor:
        from hms_core.models.efficientnet import build_spectrogram_image

        a = self.augment
        flip = rng is not None and a.flip > 0 and rng.random() < a.flip
        u_shift = float(rng.uniform(-1, 1)) if (rng is not None and a.time_shift_s > 0) else 0.0
        arrays = {}
        for t in self.spec.spectrograms:
            x = np.asarray(part.array(f"spec_{t}")[r], dtype=np.float32)
            if flip:
                x = x[_CHAIN_FLIP]
            if u_shift:
                frames = int(round(u_shift * a.time_shift_s * self.spec.spec_frames_per_s.get(t, 0.0)))
                x = np.roll(x, frames, axis=-1) if frames else x
            arrays[t] = x
        img = build_spectrogram_image(arrays, self.spec.spectrograms, self.spec.tile)
        if rng is not None and a.channel_dropout > 0:  # drop whole chain tiles
            h = self.spec.tile[0]
            for c in np.flatnonzero(rng.random(len(CHAIN_NAMES)) < a.channel_dropout)[: len(CHAIN_NAMES) - 1]:
                img[:, c * h : (c + 1) * h] = 0
        return img


class EpochSampler(torch.utils.data.Sampler[int]):
    """Yields ``epoch * n + row`` for a seeded permutation of the rows (sharded by rank under DDP)."""

    def __init__(self, n: int, epoch: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        self.n, self.epoch, self.seed, self.shuffle, self.rank, self.world = n, epoch, seed, shuffle, rank, world

    def _order(self) -> np.ndarray:
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n) if self.shuffle else np.arange(
            self.n
        )
        if self.world > 1:
            per = -(-self.n // self.world)
            order = np.resize(order, per * self.world)[self.rank :: self.world]
        return order

    def __iter__(self):  # type: ignore[override]
        return iter((self.epoch * self.n + self._order()).tolist())

    def __len__(self) -> int:
        return len(self._order())


def make_loader(ds: RowDataset, batch_size: int, epoch: int, seed: int, shuffle: bool, num_workers: int,
                pin_memory: bool = False, drop_last: bool = False, rank: int = 0,
                world: int = 1) -> torch.utils.data.DataLoader:  # fmt: skip
    sampler = EpochSampler(len(ds), epoch, seed, shuffle, rank, world)
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw = {"prefetch_factor": 4, "persistent_workers": False,
              "worker_init_fn": _worker_init}  # fmt: skip
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        drop_last=drop_last and len(sampler) > batch_size, **kw,
    )  # fmt: skip


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
