"""Resolve the raw HMS dataset: a local folder, a Kaggle download, or the generated synthetic data set."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hms_core.config import PlatformConfig

RAW_SUBDIRS = ("train_eegs", "test_eegs", "train_spectrograms", "test_spectrograms")
RAW_FILES = ("train.csv", "test.csv", "sample_submission.csv")


class RawDataUnavailableError(RuntimeError):
    """No data at the configured path, no Kaggle credentials, and synthetic data not allowed."""


@dataclass(frozen=True)
class RawDataset:
    path: Path
    source: str  # "local" | "kaggle" | "synthetic"
    fingerprint: str
    generated: dict | None = None  # the generator's summary when the data was made now


def has_raw_data(path: Path) -> bool:
    return (path / "train.csv").is_file() and (path / "train_eegs").is_dir()


def fingerprint(path: Path) -> str:
    """Content hash of the CSVs plus (name, size) of every parquet file: changes when the data changes."""
    h = hashlib.sha256()
    for name in RAW_FILES:
        f = path / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    for sub in RAW_SUBDIRS:
        d = path / sub
        if d.is_dir():
            # hidden names are never data: a killed run's atomic-write temporary (".1.parquet.x1.tmp.parquet")
            entries = sorted((e.name, e.stat().st_size) for e in os.scandir(d)
                             if e.name.endswith(".parquet") and not e.name.startswith("."))  # fmt: skip
            h.update(f"{sub}:{entries}".encode())
    return h.hexdigest()[:16]


SYNTHETIC_MANIFEST = "synthetic_manifest.json"


class RefusedToDeleteError(RuntimeError):
    """A folder was about to be deleted as a generated data set but does not look like one; nothing was deleted."""


def _synthetic_key(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "workers"}  # workers never change the files


def _read_manifest(raw: Path) -> dict | None:
    """The synthetic manifest of ``raw`` as a dict, or None when there is none or it is not one of ours."""
    import json

    try:
        made = json.loads((raw / SYNTHETIC_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return made if isinstance(made, dict) and isinstance(made.get("config"), dict) else None


def _stale_synthetic(raw: Path, cfg: PlatformConfig) -> bool:
    """True when ``raw`` holds data this platform generated with another synthetic config or generator version."""
    from hms_core.synthetic.generator import GENERATOR_VERSION

    made = _read_manifest(raw)
    if made is None:
        return False
    return made.get("generator_version") != GENERATOR_VERSION or _synthetic_key(made["config"]) != _synthetic_key(
        cfg.dataset.synthetic.model_dump(mode="json")
    )


def _incomplete_synthetic(raw: Path) -> bool:
    """True when ``raw`` holds a generation that was interrupted (its manifest says ``complete: false``; manifests
    of generators before that flag were written last, so they count as complete)."""
    made = _read_manifest(raw)
    return made is not None and made.get("complete") is False


def _temp_leftover(name: str) -> bool:
    """A temporary file of :func:`hms_core.io.atomic_path` (``.train.csv.k3j2.tmp.csv``) left by a killed run."""
    return name.startswith(".") and ".tmp" in name


def _remove_temp_leftovers(raw: Path) -> None:
    """Delete the atomic-write temporaries (:func:`_temp_leftover`) a killed generation left in ``raw``."""
    for d in (raw, *(raw / sub for sub in RAW_SUBDIRS)):
        if d.is_dir():
            for e in os.scandir(d):
                if e.is_file() and _temp_leftover(e.name):
                    Path(e.path).unlink(missing_ok=True)


def _check_generated(raw: Path) -> None:
    """Raise :class:`RefusedToDeleteError` unless ``raw`` holds only what the generator writes."""
    why = None
    if _read_manifest(raw) is None:
        why = f"it has no readable '{SYNTHETIC_MANIFEST}' written by the synthetic generator"
    elif (raw / ".download").exists() or (raw / ".hms_complete.json").exists():
        why = "it also holds a Kaggle download (.download/ or .hms_complete.json)"
    else:
        known = {*RAW_FILES, *RAW_SUBDIRS, SYNTHETIC_MANIFEST}
        foreign = sorted(e.name for e in os.scandir(raw) if e.name not in known and not _temp_leftover(e.name))
        if not foreign:
            for sub in RAW_SUBDIRS:
                d = raw / sub
                if d.is_dir():
                    foreign += [f"{sub}/{e.name}" for e in os.scandir(d) if not e.name.endswith(".parquet")][:5]
        if foreign:
            why = f"it holds files the generator does not write: {foreign[:5]}"
    if why is not None:
        raise RefusedToDeleteError(
            f"Refusing to delete '{raw}' as a stale synthetic data set: {why}. Nothing was deleted. Move the "
            f"folder away or point dataset.raw_data_path elsewhere, then run again."
        )


def _remove_synthetic(raw: Path) -> None:
    """Delete a generated data set (identified by its manifest) so it can be generated anew. Never user data:
    a folder with anything the generator does not write raises :class:`RefusedToDeleteError` first."""
    import shutil

    _check_generated(raw)
    # train.csv first (the folder stops counting as a data set), the manifest last (an interrupted removal is
    # finished by the next call, which still sees a generated folder with a stale config).
    for name in RAW_FILES:
        (raw / name).unlink(missing_ok=True)
    for sub in RAW_SUBDIRS:
        shutil.rmtree(raw / sub, ignore_errors=True)
    (raw / SYNTHETIC_MANIFEST).unlink()


def ensure_raw_dataset(cfg: PlatformConfig, progress: Callable[[int, int], None] | None = None) -> RawDataset:
    """Return the raw dataset described by ``cfg.dataset``, downloading or generating it when needed."""
    from hms_core import kaggle

    ds = cfg.dataset
    raw = cfg.raw_dir
    source = ds.source
    if source in ("auto", "synthetic") and _stale_synthetic(raw, cfg):
        _remove_synthetic(raw)
    if source == "local" and _incomplete_synthetic(raw):
        raise RawDataUnavailableError(
            f"dataset.source is 'local' but '{raw}' holds an interrupted synthetic generation ('{SYNTHETIC_MANIFEST}'"
            f" says complete: false). Run with dataset.source 'synthetic' (or 'auto') to finish it, or put the "
            f"competition files in another folder."
        )
    if (
        source in ("auto", "local")
        and has_raw_data(raw)
        and not _incomplete_synthetic(raw)  # a killed generation is finished below, not taken as data
        and (source == "local" or not (raw / ".download").exists() or kaggle.raw_dir_complete(raw))
    ):
        kind = "synthetic" if (raw / SYNTHETIC_MANIFEST).exists() else "local"
        return RawDataset(raw, kind, fingerprint(raw))
    if source == "local":
        raise RawDataUnavailableError(
            f"dataset.source is 'local' but '{raw}' has no train.csv and train_eegs/. Put the unzipped "
            f"competition files there, or set dataset.source to 'auto', 'kaggle' or 'synthetic'."
        )
    # an interrupted generation is finished (source auto), never mixed with a download
    if source == "kaggle" or (
        source == "auto" and not _incomplete_synthetic(raw) and kaggle.kaggle_credentials_available()
    ):
        kaggle.download_competition(
            ds.kaggle_competition, raw, progress=None if progress is None else (lambda _step, d, t: progress(d, t))
        )
        return RawDataset(raw, "kaggle", fingerprint(raw))
    if source == "synthetic" or (source == "auto" and ds.allow_synthetic):
        from hms_core.synthetic import generate_dataset

        _remove_temp_leftovers(raw)  # what a killed generation left half-written (the finished files are kept)
        summary = generate_dataset(raw, ds.synthetic, progress=progress)
        return RawDataset(raw, "synthetic", fingerprint(raw), generated=summary)
    raise RawDataUnavailableError(
        f"No HMS data in '{raw}' and no Kaggle credentials. Either\n"
        f"  1. create an API token on kaggle.com (Settings -> API -> Create New Token), save it as "
        f"~/.kaggle/kaggle.json (chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY, and accept the rules of the "
        f"'{ds.kaggle_competition}' competition; or\n"
        f"  2. unzip the competition files into '{raw}' (train.csv, train_eegs/, ...); or\n"
        f"  3. use the synthetic demo data: --config demo (profile '{cfg.profile}' has allow_synthetic: false)."
    )
