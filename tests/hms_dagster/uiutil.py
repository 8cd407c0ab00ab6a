"""Start ``hms ui`` for a test, wait until its code location answers, stop it with SIGTERM and check the tree."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ASSET_KEYS_QUERY = "{ assetNodes { assetKey { path } } }"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_sigint() -> None:
    """``preexec_fn`` of a background child: SIGINT back to the default (a background shell ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_ui(config_path: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("DAGSTER_HOME", None)
    return subprocess.Popen(
        [sys.executable, "-m", "hms_dagster.cli", "ui", "--config", str(config_path), "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        preexec_fn=default_sigint,  # noqa: PLW1509 (no threads here)
    )


def wait_ready(proc: subprocess.Popen, base: str, log: Path, timeout_s: float = 180) -> list[dict]:
    """Wait for ``/server_info`` and then for the code location's asset nodes; returns them."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hms ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/server_info", timeout=2).status_code == 200:
                r = httpx.post(f"{base}/graphql", json={"query": ASSET_KEYS_QUERY}, timeout=30)
                nodes = (r.json().get("data") or {}).get("assetNodes")
                if nodes:
                    return nodes
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"the UI did not load its code location within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of ``pid`` from /proc, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    parents = {}
    for p in os.listdir("/proc"):
        if p.isdigit() and (st := _stat(int(p))) is not None and st[1] != "Z":
            parents[int(p)] = st[0]
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, parent in parents.items() if parent in frontier} - out
        out |= frontier
    return out


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if (st := _stat(p)) is not None and st[1] != "Z"}


def stop_with_sigterm(proc: subprocess.Popen, within_s: float) -> tuple[float, set[int]]:
    """SIGTERM to the ``hms ui`` process only (as a service manager does); the seconds until it and every process it
    started are gone (zombies count as gone), and the processes still alive after ``within_s`` (then killed)."""
    tree = descendants(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while time.monotonic() - t0 < within_s and (proc.poll() is None or alive(tree)):
        time.sleep(0.2)
    left = alive(tree) | ({proc.pid} if proc.poll() is None else set())
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.wait(timeout=10)
    return time.monotonic() - t0, left


class UIServer:
    """One ``hms ui`` on a workspace, shared by the UI tests of a session (a start-up is a code server, a daemon
    and a webserver: tens of seconds on a loaded machine). :meth:`ensure` starts it again when a test stopped it."""

    def __init__(self, ws, folder: Path):
        """``ws``: a ``tests.conftest.Workspace`` the server may modify (a copy of the shared one)."""
        self.ws, self.config_path, self.folder = ws, Path(ws.config_path), Path(folder)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def ensure(self) -> UIServer:
        if self.proc is None or self.proc.poll() is not None:
            self.starts += 1
            self.port, self.log = free_port(), self.folder / f"ui-{self.starts}.log"
            self.base = f"http://127.0.0.1:{self.port}"
            self.proc = start_ui(self.config_path, self.port, self.log)
            try:
                self.nodes = wait_ready(self.proc, self.base, self.log)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_with_sigterm(self.proc, within_s=30)
