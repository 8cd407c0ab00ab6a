"""``hms ui``: ``dagster dev`` (webserver + daemon + code server) on the project's instance, stopped cleanly.

``dagster dev`` runs in its own process group with SIGINT restored to the default (a shell that starts a
command in the background sets SIGINT to ignored, which ``dagster dev``'s children inherit and then never stop).
Ctrl-C (SIGINT) or SIGTERM to ``hms ui`` is passed on as one SIGTERM to ``dagster dev``, which stops the
webserver, the daemon and the code server; whatever of its process group is still alive after ``grace_s`` is
killed, so no process outlives the command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from hms_core.config import PlatformConfig


def dagster_dev_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "dagster", "dev", "-m", "hms_dagster.definitions", "-h", host, "-p", str(port)]


def _group_alive(pgid: int) -> bool:
    """Is a live (not zombie) process left in process group ``pgid``? Zombies count as gone: an init that does
    not reap orphans (some containers) keeps them, and they hold no resources."""
    proc = "/proc"
    if not os.path.isdir(proc):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for pid in os.listdir(proc):
        if pid.isdigit():
            try:
                with open(f"{proc}/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def serve(cfg: PlatformConfig, host: str = "127.0.0.1", port: int = 3000, grace_s: float = 20.0,
          echo: Callable[[str], None] = print) -> int:  # fmt: skip
    """Run the UI until it exits or this process gets SIGINT / SIGTERM; the exit code (0 after a requested stop)."""
    from hms_dagster.instance import DAGSTER_HOME_ENV_VAR, child_env

    env = child_env(cfg)  # the same DAGSTER_HOME and HMS_CONFIG as the CLI
    echo(
        f"Dagster UI on http://{host}:{port}  (DAGSTER_HOME={env[DAGSTER_HOME_ENV_VAR]}, config={cfg.source_path})"
    )
    proc = subprocess.Popen(
        dagster_dev_command(host, port),
        env=env,
        start_new_session=True,  # its own process group: the whole tree can be stopped, Ctrl-C reaches us only
        preexec_fn=_restore_sigint,  # noqa: PLW1509 (the CLI has started no threads)
    )
    stop_at: list[float] = []

    def on_signal(signum, _frame) -> None:
        if not stop_at:
            stop_at.append(time.monotonic())
            echo(f"{signal.Signals(signum).name}: stopping the Dagster UI (webserver, daemon, code server)")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stop_at and time.monotonic() - stop_at[0] > grace_s:
                    echo(f"dagster dev did not stop within {grace_s:.0f} s: killing its process group")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
        # children that outlived dagster dev (a code server, a run worker) get SIGTERM, then SIGKILL
        deadline = time.monotonic() + min(grace_s, 10.0)
        if _group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 0 if stop_at else rc
