"""Per-(asset, partition) locks: two runs never materialize the same asset partition at once.

``hms run`` takes an exclusive, non-blocking ``fcntl.flock`` on ``<root>/.locks/<asset>@<partition>.lock`` for
every asset of a planned run before it starts the run, and holds it until the run ends (the kernel drops it when the
process dies, ``kill -9`` included: no stale lock is ever left behind). The holder writes who it is (pid, host, start
time, command) into the file, so the run that loses is told exactly which process holds the partition. Runs launched
from the Dagster UI are checked too (:func:`held_by_other`, called by the workspace resource when a step starts).

The lock files stay in place (removing a lock file that another process may be about to lock is a race); they are
empty of meaning once no process holds them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Folder of the lock files, under the workspace root.
LOCK_DIR = ".locks"


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in its file (fields may be unknown while the holder is writing them)."""

    pid: int | None
    host: str | None
    started: str | None
    command: str | None
    label: str | None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        if self.host:
            who += f" on {self.host}"
        if self.started:
            who += f", started {self.started}"
        if self.label:
            who += f" ({self.label})"
        if self.command:
            who += f": `{self.command}`"
        return who


class PartitionBusyError(RuntimeError):
    """An asset partition is being materialized by another run; nothing was run or written."""

    def __init__(self, asset: str, partition: str | None, holder: Holder, path: Path):
        self.asset, self.partition, self.holder, self.path = asset, partition, holder, path
        what = f"{asset} {partition}" if partition else asset
        super().__init__(
            f"{what} is being materialized by another run: {holder.describe()} (lock {path}). Nothing was run or "
            "written for it. Wait for that run to finish (`hms status` shows it as running), then continue with "
            "`hms run --resume`."
        )


def lock_path(root: Path, asset: str, partition: str | None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{asset}@{partition or 'all'}")
    return Path(root) / LOCK_DIR / f"{safe}.lock"


def _read_holder(path: Path) -> Holder:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    pid = info.get("pid")
    return Holder(int(pid) if isinstance(pid, int) else None, info.get("host"), info.get("started"),
                  info.get("command"), info.get("label"))  # fmt: skip


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another open file holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def partition_locks(root: Path, assets: Iterable[str], partition: str | None, label: str = "") -> Iterator[None]:
    """Hold the lock of every ``(asset, partition)`` for the block, or raise :class:`PartitionBusyError` naming
    the holder of the first one that is taken (the locks already taken are released)."""
    held: list[int] = []
    record = json.dumps({
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else None,
        "label": label,
    })  # fmt: skip
    try:
        for asset in sorted(set(assets)):  # one order for everyone: two runs never wait on each other in a cycle
            path = lock_path(root, asset, partition)
            fd = _try_lock(path)
            if fd is None:
                raise PartitionBusyError(asset, partition, _read_holder(path), path)
            held.append(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        yield
    finally:
        for fd in held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no holder any more (the unlock below makes it free)
            os.close(fd)  # closing the last fd of the open file drops the flock


def held_by_other(root: Path, asset: str, partition: str | None) -> Holder | None:
    """The holder of ``(asset, partition)``'s lock when another process holds it, else None (the lock is free, or
    this process holds it). Takes and drops the lock to find out; used where a run cannot hold it for its whole
    duration (a UI run's step processes)."""
    path = lock_path(root, asset, partition)
    if not path.exists():
        return None
    holder = _read_holder(path)
    if holder.pid == os.getpid():
        return None
    fd = _try_lock(path)
    if fd is None:
        return holder
    os.close(fd)
    return None


def check_not_held(cfg, run) -> None:
    """Raise :class:`PartitionBusyError` when a process (``hms run``) holds the lock of one of ``run``'s
    (asset, partition) pairs: a run launched from the UI or by a sensor while the CLI materializes the same
    partition stops at its first step instead of writing beside it. ``cfg`` is the run's PlatformConfig."""
    from hms_dagster.stages import all_stage_jobs

    partition = run.tags.get("dagster/partition")
    if run.asset_selection:
        assets = [k.to_user_string() for k in run.asset_selection]
    else:
        assets = [a for j in all_stage_jobs(cfg) if j.name == run.job_name for a in j.asset_keys]
    for asset in sorted(assets):
        holder = held_by_other(cfg.root, asset, partition)
        if holder is not None:
            raise PartitionBusyError(asset, partition, holder, lock_path(cfg.root, asset, partition))
