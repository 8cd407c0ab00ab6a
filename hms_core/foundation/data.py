"""The pretraining corpus: every available EEG recording (train and test), whole, never a label.

:func:`list_recordings` reads only the ``eeg_id`` column of ``train.csv`` / ``test.csv`` (the vote columns are
never opened) and lists each recording's parquet file. :func:`build_corpus` cuts every recording into 50-s blocks
(the preprocessing window; a recording's uncovered tail gets one more block aligned to its end when it is at least
one pretraining window long) and runs them through :func:`hms_core.preprocess.process_windows` with the
platform's ``preprocessing.eeg`` parameters (the same NaN repair, band-pass + notch, artefact flags, montage,
clipping and robust scaling as the training partitions), keeping the 18 bipolar derivations (the central chain
included) and their quality flags. Blocks are written as shards, each a partition of :mod:`hms_core.partition`
(``index.parquet`` with eeg_id / split / block start, ``bipolar.npy``, ``quality.npy``, ``manifest.json``), and
the corpus ``manifest.json`` is written last, so an interrupted build resumes at its first missing shard.

:class:`WindowSampler` draws the training windows (``window_s`` long, every ``stride_s`` inside each block) for
step ``s`` from ``(seed, s)`` alone, so a resumed pretraining sees exactly the batches it would have seen.
A few recordings (every ``HOLDOUT_EVERY``-th) are held out for the evaluation loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.config import PreprocessingConfig
from hms_core.constants import EEG_WINDOW_SAMPLES, SFREQ
from hms_core.io import write_json
from hms_core.partition import MANIFEST_FILE, Layout, Partition, PartitionError, load_partition, write_partition

__all__ = ["HOLDOUT_EVERY", "Corpus", "Recording", "WindowSampler", "build_corpus", "corpus_config",
           "list_recordings"]  # fmt: skip

#: The only column read from train.csv / test.csv: the pretraining never sees a label.
ID_COLUMN = "eeg_id"
#: Every HOLDOUT_EVERY-th recording (in sorted order) is held out for the evaluation loss.
HOLDOUT_EVERY = 25
BLOCK = EEG_WINDOW_SAMPLES
CORPUS_VERSION = 1


@dataclass(frozen=True)
class Recording:
    eeg_id: int
    split: str  # train | test
    path: Path
    n_samples: int


def list_recordings(raw_dir: str | os.PathLike[str], include_test: bool = True) -> list[Recording]:
    """Every EEG recording of a raw HMS folder, sorted by (split, eeg_id); reads only the ``eeg_id`` columns."""
    import pyarrow.parquet as pq

    raw = Path(raw_dir)
    out: list[Recording] = []
    for split in ("train", "test") if include_test else ("train",):
        table = raw / f"{split}.csv"
        if not table.exists():
            if split == "train":
                raise FileNotFoundError(
                    f"{table} does not exist; run the data stage first (hms run --stage data)."
                )
            continue
        ids = sorted(set(pd.read_csv(table, usecols=[ID_COLUMN])[ID_COLUMN].astype(np.int64).tolist()))
        for i in ids:
            path = raw / f"{split}_eegs" / f"{i}.parquet"
            if not path.exists():
                raise FileNotFoundError(f"{table} lists eeg_id {i} but {path} does not exist.")
            out.append(Recording(int(i), split, path, int(pq.read_metadata(path).num_rows)))
    return out


def select_recordings(recs: Sequence[Recording], max_recordings: int | None, max_hours: float | None,
                      seed: int) -> list[Recording]:  # fmt: skip
    """All recordings, or a seeded random subset within ``max_recordings`` / ``max_hours`` (sorted again)."""
    if max_recordings is None and max_hours is None:
        return list(recs)
    order = np.random.default_rng([seed, 5]).permutation(len(recs))
    keep, hours = [], 0.0
    for i in order:
        h = recs[i].n_samples / SFREQ / 3600
        if (max_recordings is not None and len(keep) >= max_recordings) or (
            max_hours is not None and keep and hours + h > max_hours
        ):
            break
        keep.append(recs[i])
        hours += h
    return sorted(keep, key=lambda r: (r.split, r.eeg_id))


def block_starts(n_samples: int, window: int) -> list[int]:
    """Starts of the 50-s blocks of a recording: every 50 s, plus one aligned to the end when the uncovered tail
    is at least ``window`` samples. Recordings shorter than one block give none."""
    if n_samples < BLOCK:
        return []
    starts = list(range(0, n_samples - BLOCK + 1, BLOCK))
    if n_samples - (starts[-1] + BLOCK) >= window:
        starts.append(n_samples - BLOCK)
    return starts


def corpus_config(pre: PreprocessingConfig) -> PreprocessingConfig:
    """The preprocessing parameters of the corpus: the platform's, with the 50-s block as context, the central
    chain kept, no spectrograms or features, and all-NaN blocks flagged (then skipped) rather than fatal."""
    eeg = pre.eeg.model_copy(update={"context_length": BLOCK, "segment_length": min(pre.eeg.segment_length, BLOCK),
                                     "include_central_chain": True, "all_nan_windows": "flag"})  # fmt: skip
    spec = pre.spectrogram.model_copy(update={"types": []})
    feats = pre.features.model_copy(update={"enabled": False})
    return pre.model_copy(update={"eeg": eeg, "spectrogram": spec, "features": feats})


def _key(*objs: Any) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Corpus:
    """The shards of a built corpus and its summary (``manifest``)."""

    path: Path
    shards: list[Partition]
    manifest: dict[str, Any]

    @property
    def index(self) -> pd.DataFrame:
        return pd.concat([s.index.assign(shard=k, row=np.arange(len(s))) for k, s in enumerate(self.shards)],
                         ignore_index=True)  # fmt: skip

    @property
    def channels(self) -> tuple[str, ...]:
        return self.shards[0].layout.bipolar


def load_corpus(path: str | os.PathLike[str]) -> Corpus:
    path = Path(path)
    mpath = path / MANIFEST_FILE
    if not mpath.exists():
        raise PartitionError(f"Pretraining corpus '{path}' is incomplete: no {MANIFEST_FILE} (written last).")
    manifest = json.loads(mpath.read_text())
    return Corpus(path, [load_partition(path / s) for s in manifest["shards"]], manifest)


def build_corpus(recordings: Sequence[Recording], pre: PreprocessingConfig, out_dir: str | os.PathLike[str],
                 window: int, shard_blocks: int = 256, batch_size: int = 32,
                 progress: Callable[[int, int], None] | None = None) -> Corpus:  # fmt: skip
    """Preprocess every block of ``recordings`` into ``out_dir`` (see the module docstring); reuses a complete
    corpus built from the same recordings and parameters, and the complete shards of an interrupted build."""
    from hms_core.eeg_io import read_hms_eeg
    from hms_core.preprocess import process_windows

    out = Path(out_dir)
    ccfg = corpus_config(pre)
    key = _key(CORPUS_VERSION, ccfg.eeg.model_dump(mode="json"), [(r.split, r.eeg_id, r.n_samples) for r in recordings],
               window, shard_blocks)  # fmt: skip
    if (out / MANIFEST_FILE).exists():
        corpus = load_corpus(out)
        if corpus.manifest.get("key") == key:
            return corpus
        (out / MANIFEST_FILE).unlink()
    t0 = time.perf_counter()
    blocks = [(r, s) for r in recordings for s in block_starts(r.n_samples, window)]
    skipped = [r.eeg_id for r in recordings if not block_starts(r.n_samples, window)]
    layout = Layout.from_config(ccfg, with_kaggle=False)
    shards, n_kept, n_empty = [], 0, 0
    for k, b0 in enumerate(range(0, len(blocks), shard_blocks)):
        name = f"shard_{k:05d}"
        shards.append(name)
        sdir = out / name
        mf = sdir / MANIFEST_FILE
        if mf.exists() and json.loads(mf.read_text()).get("config_hash") == key:
            n_kept += int(json.loads(mf.read_text())["n_rows"])
            if progress:
                progress(min(b0 + shard_blocks, len(blocks)), len(blocks))
            continue
        chunk = blocks[b0 : b0 + shard_blocks]
        bip, qual, rows = [], [], []
        cache: dict[int, np.ndarray] = {}
        for i in range(0, len(chunk), batch_size):
            part = chunk[i : i + batch_size]
            wins = []
            for r, s in part:
                if r.eeg_id not in cache:
                    cache = {r.eeg_id: read_hms_eeg(r.path, missing_channels="flag")}
                wins.append(cache[r.eeg_id][s : s + BLOCK])
            res = process_windows(np.stack(wins), ccfg, [f"{r.split}_eegs/{r.eeg_id}" for r, _ in part],
                                  compute_features=False)  # fmt: skip
            for j, (r, s) in enumerate(part):
                if not res.quality[j].any():  # nothing usable (all NaN / every derivation flagged)
                    n_empty += 1
                    continue
                bip.append(res.bipolar[j].astype(ccfg.eeg.dtype))
                qual.append(res.quality[j])
                rows.append({"eeg_id": r.eeg_id, "split": r.split, "block_start_s": s / SFREQ,
                             "n_usable": int(res.quality[j].sum())})  # fmt: skip
        index = pd.DataFrame(rows, columns=["eeg_id", "split", "block_start_s", "n_usable"])
        c = len(layout.bipolar)
        arrays = {"bipolar": np.stack(bip) if bip else np.zeros((0, c, BLOCK), ccfg.eeg.dtype),
                  "quality": np.stack(qual) if qual else np.zeros((0, c), bool)}  # fmt: skip
        write_partition(sdir, index, arrays, layout, config_hash=key, config=ccfg.model_dump(mode="json"))
        n_kept += len(index)
        if progress:
            progress(min(b0 + shard_blocks, len(blocks)), len(blocks))
    hours = sum(r.n_samples for r in recordings) / SFREQ / 3600
    manifest = {"key": key, "shards": shards, "n_recordings": len(recordings),
                "n_train_recordings": sum(r.split == "train" for r in recordings),
                "n_test_recordings": sum(r.split == "test" for r in recordings),
                "recording_hours": round(hours, 3), "n_blocks": n_kept, "n_empty_blocks": n_empty,
                "block_hours": round(n_kept * BLOCK / SFREQ / 3600, 3), "skipped_short_recordings": skipped,
                "recordings": [[r.split, r.eeg_id] for r in recordings], "labels_read": False,
                "columns_read": {"train.csv": [ID_COLUMN], "test.csv": [ID_COLUMN]},
                "preprocessing": ccfg.model_dump(mode="json"), "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    write_json(out / MANIFEST_FILE, manifest)
    return load_corpus(out)


class WindowSampler:
    """Training and evaluation windows of a corpus.

    A window is (shard, row, start sample); starts run every ``stride`` samples over each 50-s block. Blocks of
    every ``HOLDOUT_EVERY``-th recording form the evaluation set. ``batch(step)`` draws ``batch_size`` training
    windows with replacement from ``(seed, step)``; ``get(windows)`` returns ``(x float32 (B, C, window),
    usable bool (B, C))``.
    """

    def __init__(self, corpus: Corpus, window: int, stride: int, seed: int) -> None:
        if window > BLOCK:
            raise ValueError(f"foundation.window_s ({window / SFREQ:g} s) must be at most {BLOCK / SFREQ:g} s.")
        self.corpus, self.window, self.stride, self.seed = corpus, window, stride, seed
        idx = corpus.index
        rec_order = {e: i for i, e in enumerate(sorted(set(zip(idx["split"], idx["eeg_id"]))))}
        held = np.array([rec_order[(s, e)] % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
                         for s, e in zip(idx["split"], idx["eeg_id"])], dtype=bool)  # fmt: skip
        if held.all():
            held[:] = False
        starts = np.arange(0, BLOCK - window + 1, stride, dtype=np.int64)
        sr = idx[["shard", "row"]].to_numpy(np.int64)

        def grid(sel: np.ndarray) -> np.ndarray:
            b = sr[sel]
            return np.concatenate([np.repeat(b, len(starts), axis=0),
                                   np.tile(starts, len(b))[:, None]], axis=1) if len(b) else np.zeros((0, 3), np.int64)  # fmt: skip

        self.train_windows = grid(~held)
        self.eval_windows = grid(held)
        if not len(self.train_windows):
            raise ValueError(f"Pretraining corpus {corpus.path} has no usable 50-s block; nothing to pretrain on.")
        self.n_train_recordings = len({(s, e) for s, e, h in zip(idx["split"], idx["eeg_id"], held) if not h})
        self.n_eval_recordings = len({(s, e) for s, e, h in zip(idx["split"], idx["eeg_id"], held) if h})

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
        pick = np.random.default_rng([self.seed, step, 11]).integers(len(self.train_windows), size=batch_size)
        return self.train_windows[pick[rank::world]]

    def eval_batch(self, n: int) -> np.ndarray:
        src = self.eval_windows if len(self.eval_windows) else self.train_windows
        pick = np.random.default_rng([self.seed, 13]).permutation(len(src))[:n]
        return src[np.sort(pick)]

    def get(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((len(windows), len(self.corpus.channels), self.window), np.float32)
        q = np.empty((len(windows), len(self.corpus.channels)), bool)
        for i, (s, r, a) in enumerate(windows):
            shard = self.corpus.shards[s]
            x[i] = shard.array("bipolar")[r, :, a : a + self.window]
            q[i] = shard.array("quality")[r]
        return np.nan_to_num(x, copy=False), q
