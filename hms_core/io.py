"""File I/O: atomic writes and readers for the HMS parquet layout.

Every artifact the platform writes goes through :func:`atomic_path`: the data is written to a temporary file in
the destination folder and renamed over the target only after it was closed without error, so an interrupted or
failed write never leaves a half-written file where a complete one is expected, and never clobbers the previous
good version. The renamed file gets the mode an ordinary ``open(..., "w")`` would give it (``0o666`` less the
process umask), not the private ``0o600`` of a temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; done once, at import, before threads start
    os.umask(mask)
    return mask


#: Mode of every file written through :func:`atomic_path`.
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target`` (atomic on POSIX)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix or f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(target, text.encode())


def write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str))


def save_npy(target: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Save an array as ``.npy`` atomically (readable later with ``np.load(..., mmap_mode='r')``)."""
    with atomic_path(target, suffix=".tmp.npy") as tmp:
        np.save(tmp, array, allow_pickle=False)
    return Path(target)


def write_parquet(target: str | os.PathLike[str], df: Any) -> Path:
    """Write a pandas or polars frame to parquet atomically."""
    with atomic_path(target, suffix=".tmp.parquet") as tmp:
        if hasattr(df, "write_parquet"):  # polars
            df.write_parquet(tmp)
        else:
            df.to_parquet(tmp, index=False)
    return Path(target)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
