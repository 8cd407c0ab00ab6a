"""Datasets and samplers: rows of processed partitions as ``(input, target, weight)`` batches.

Partitions are opened through :mod:`hms_core.partition` (memory-mapped, so DataLoader workers share the page cache
instead of copying the data); inputs are built by :mod:`hms_core.training.inputs` from each partition's layout.

Training samples are addressed as ``epoch * n_rows + row``: the dataset derives the augmentation random stream
from ``(seed, epoch, row)``, so results do not depend on worker count, worker order or where a run was resumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hms_core.constants import CHAIN_NAMES, bipolar_flip_index
from hms_core.partition import Partition
from hms_core.training.inputs import CHAIN_FLIP_ORDER, InputSpec, build_spectrogram_image, check_layout, raw_input

_CHAIN_FLIP = np.asarray(CHAIN_FLIP_ORDER)


def all_rows(part: Partition) -> np.ndarray:
    """Every row of one partition as (partition 0, row) pairs, for a :class:`RowDataset` over ``[part]``."""
    return np.stack([np.zeros(len(part), np.int64), np.arange(len(part), dtype=np.int64)], axis=1)


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
    from a generator seeded with ``(seed, epoch, row)``. Every partition is checked against ``spec`` first
    (:func:`~hms_core.training.inputs.check_layout`): a raw model reads its partition's ``layout.segment``.
    """

    def __init__(self, parts: Sequence[Partition], rows: np.ndarray, spec: InputSpec,
                 weights: np.ndarray | None = None, augment: AugmentParams | None = None, seed: int = 0,
                 with_targets: bool = True) -> None:  # fmt: skip
        self.parts = list(parts)
        for p in self.parts:
            check_layout(p, spec)
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
        a = self.augment
        shift = 0
        if rng is not None and a.time_shift_s > 0:
            s = round(a.time_shift_s * part.layout.sfreq)
            shift = int(rng.integers(-s, s + 1))
        x = raw_input(part.array("bipolar")[r], part.layout, self.spec, shift)
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
        a = self.augment
        flip = rng is not None and a.flip > 0 and rng.random() < a.flip
        u_shift = float(rng.uniform(-1, 1)) if (rng is not None and a.time_shift_s > 0) else 0.0
        arrays = {}
        for t in self.spec.spectrograms:
            x = np.asarray(part.array(f"spec_{t}")[r], dtype=np.float32)
            if flip:
                x = x[_CHAIN_FLIP]
            if u_shift:
                frames = round(u_shift * a.time_shift_s * self.spec.spec_frames_per_s.get(t, 0.0))
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
        order = (
            np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
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
