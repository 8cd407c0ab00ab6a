"""Resumable download of the HMS competition data from Kaggle.

Steps (each safe to interrupt and re-run):

1. the competition zip is downloaded into ``dest/.download/`` by the ``kaggle`` client, which resumes a partial
   file itself (it keeps a ``<zip>.kaggle-partial`` sidecar while the transfer is incomplete);
2. the zip is verified: it opens, every member's CRC matches (``ZipFile.testzip``) and the expected members
   (``train.csv``, ``test.csv``, ``sample_submission.csv``, the four parquet folders) are present;
3. it is extracted into a temporary folder beside ``dest`` and the entries are moved into ``dest``;
4. ``dest/.hms_complete.json`` (file count, sizes) is written last. :func:`raw_dir_complete` trusts a directory
   only when that marker exists and every file it lists is present with its recorded size, so a partial download
   or extraction is never mistaken for a complete one.

The ``kaggle`` package is imported lazily: importing it authenticates immediately and prints or raises without
credentials, so :func:`kaggle_credentials_available` is checked first and :class:`KaggleCredentialsError` explains
what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hms_core.io import write_json

DEFAULT_COMPETITION = "hms-harmful-brain-activity-classification"
COMPLETE_MARKER = ".hms_complete.json"
DOWNLOAD_DIR = ".download"
#: Members (files, or folder prefixes ending in ``/``) a competition zip must contain.
REQUIRED_MEMBERS: tuple[str, ...] = (
    "train.csv",
    "test.csv",
    "sample_submission.csv",
    "train_eegs/",
    "train_spectrograms/",
    "test_eegs/",
    "test_spectrograms/",
)
#: ``progress(stage, done, total)``; stages: "download", "verify", "extract", "done".
ProgressFn = Callable[[str, int, int], None]


class KaggleCredentialsError(RuntimeError):
    """No Kaggle API credentials were found; the message says exactly how to provide them."""

    def __init__(self, competition: str = DEFAULT_COMPETITION, raw_data_path: str | os.PathLike[str] = "data/raw"):
        self.competition = competition
        self.raw_data_path = str(raw_data_path)
        super().__init__(
            "No Kaggle API credentials found (checked KAGGLE_USERNAME/KAGGLE_KEY, "
            f"{_config_file_hint()}). To download the '{competition}' data, do one of:\n"
            "  1. Create an API token at https://www.kaggle.com -> Settings -> API -> 'Create New Token', save "
            "the "
            "downloaded kaggle.json as ~/.kaggle/kaggle.json (or in $KAGGLE_CONFIG_DIR) and run "
            "'chmod 600 ~/.kaggle/kaggle.json';\n"
            "  2. or set the environment variables KAGGLE_USERNAME and KAGGLE_KEY;\n"
            f"  and accept the competition rules at https://www.kaggle.com/competitions/{competition}/rules "
            "(downloads fail with 403 Forbidden until you do);\n"
            f"  3. or download and unzip the competition files yourself into '{self.raw_data_path}' "
            "(train.csv, test.csv, sample_submission.csv, train_eegs/, train_spectrograms/, test_eegs/, "
            "test_spectrograms/)."
        )


class CorruptDownloadError(RuntimeError):
    """The downloaded zip is truncated, fails its CRC check or lacks expected members."""


def _config_dir(env: Mapping[str, str]) -> Path:
    return Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else Path.home() / ".kaggle"


def _config_file_hint() -> str:
    return f"'{_config_dir(os.environ) / 'kaggle.json'}'"


def kaggle_credentials_available(env: Mapping[str, str] | None = None) -> bool:
    """True when ``KAGGLE_USERNAME`` and ``KAGGLE_KEY`` are set, or a readable ``kaggle.json`` with ``username``
    and ``key`` exists in ``$KAGGLE_CONFIG_DIR`` (if set) or ``~/.kaggle``. Never imports ``kaggle``."""
    env = os.environ if env is None else env
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return True
    path = _config_dir(env) / "kaggle.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("username")) and bool(data.get("key"))


def verify_zip(zip_path: str | os.PathLike[str], required: tuple[str, ...] = REQUIRED_MEMBERS) -> list[str]:
    """Open ``zip_path``, CRC-check every member and check the required ones; returns the member names.

    Raises :class:`CorruptDownloadError` naming the file and the first bad or missing member.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as e:
        raise CorruptDownloadError(f"'{zip_path}' is not a complete zip archive ({type(e).__name__}: {e})") from e
    if bad is not None:
        raise CorruptDownloadError(f"'{zip_path}': member '{bad}' fails its CRC check")

    def present(member: str) -> bool:
        return any(n.startswith(member) for n in names) if member.endswith("/") else member in names

    missing = [m for m in required if not present(m)]
    if missing:
        raise CorruptDownloadError(
            f"'{zip_path}': expected members {missing} are missing (has {len(names)} members)"
        )
    return names


def _list_files(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


def raw_dir_complete(dest: str | os.PathLike[str]) -> bool:
    """True only if ``dest`` has a completion marker and every file it records exists with the recorded size."""
    dest = Path(dest)
    try:
        marker = json.loads((dest / COMPLETE_MARKER).read_text())
        files: dict[str, int] = marker["files"]
        if len(files) != marker["n_files"]:
            return False
        for rel, size in files.items():
            if (dest / rel).stat().st_size != size:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def extract_zip(
    zip_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    progress: ProgressFn | None = None,
    competition: str = DEFAULT_COMPETITION,
) -> Path:
    """Extract a verified zip into a temporary folder beside ``dest``, move the entries into ``dest`` and write
    the completion marker last. An interrupted extraction leaves no marker (and a stale temp folder that the next
    run removes)."""
    zip_path, dest = Path(zip_path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / COMPLETE_MARKER).unlink(missing_ok=True)
    tmp = dest.parent / f".{dest.name}.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as zf:
        members = zf.infolist()
        for k, info in enumerate(members, 1):
            zf.extract(info, tmp)
            if progress is not None and (k == len(members) or k % 500 == 0):
                progress("extract", k, len(members))
    for entry in sorted(tmp.iterdir()):
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)
    tmp.rmdir()
    files = _list_files(dest)
    write_json(
        dest / COMPLETE_MARKER,
        {
            "competition": competition,
            "source_zip": zip_path.name,
            "zip_bytes": zip_path.stat().st_size,
            "n_files": len(files),
            "total_bytes": sum(files.values()),
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
        },
    )
    return dest


def _kaggle_download(competition: str, download_dir: Path, quiet: bool = False) -> Path:
    """Download the competition zip with the kaggle client (resumes partial files); returns the zip path."""
    from kaggle.api.kaggle_api_extended import KaggleApi  # lazy: the package authenticates on import

    api = KaggleApi()
    api.authenticate()
    api.competition_download_files(competition, path=str(download_dir), quiet=quiet)
    return download_dir / f"{competition}.zip"


def download_competition(
    competition: str = DEFAULT_COMPETITION,
    dest: str | os.PathLike[str] = "data/raw",
    progress: ProgressFn | None = None,
    *,
    force: bool = False,
    keep_zip: bool = False,
    required: tuple[str, ...] = REQUIRED_MEMBERS,
    retries: int = 1,
) -> Path:
    """Download, verify and extract the competition data into ``dest``; return ``dest``.

    Returns immediately when ``dest`` is already complete (see :func:`raw_dir_complete`) unless ``force``.
    A verified zip left in ``dest/.download/`` by an interrupted run is reused; a corrupt one is deleted and
    downloaded again (up to ``retries`` times). The zip is removed after a successful extraction unless
    ``keep_zip``. Raises :class:`KaggleCredentialsError` without credentials.
    """
    dest = Path(dest)
    if not force and raw_dir_complete(dest):
        if progress is not None:
            progress("done", 1, 1)
        return dest
    download_dir = dest / DOWNLOAD_DIR
    zip_path = download_dir / f"{competition}.zip"
    partial = Path(str(zip_path) + ".kaggle-partial")
    attempt = 0
    while True:
        if force or not zip_path.is_file() or partial.exists():
            if not kaggle_credentials_available():
                raise KaggleCredentialsError(competition, dest)
            download_dir.mkdir(parents=True, exist_ok=True)
            if progress is not None:
                progress("download", 0, 1)
            zip_path = _kaggle_download(competition, download_dir)
            if progress is not None:
                progress("download", 1, 1)
        if progress is not None:
            progress("verify", 0, 1)
        try:
            verify_zip(zip_path, required)
            break
        except CorruptDownloadError:
            zip_path.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
            attempt += 1
            if attempt > retries:
                raise
            force = False
    if progress is not None:
        progress("verify", 1, 1)
    extract_zip(zip_path, dest, progress, competition)
    if not keep_zip:
        shutil.rmtree(download_dir, ignore_errors=True)
    if progress is not None:
        progress("done", 1, 1)
    return dest


def completion_info(dest: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker contents without the per-file list (for asset metadata), or None when incomplete."""
    if not raw_dir_complete(dest):
        return None
    marker = json.loads((Path(dest) / COMPLETE_MARKER).read_text())
    marker.pop("files", None)
    return marker
