"""``hms scan RECORDING...``: scan files one after the other with a progress bar, one output folder each.

A file that cannot be scanned (truncated EDF, implausible sampling rate, no EEG channels, length 0, shorter than
one window) is reported with its name and the reason and the others carry on; the command then exits with 2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hms_core.config import PlatformConfig
from hms_core.eeg_io import RecordError

__all__ = ["BAD_FILE_EXIT", "scan_files"]

#: Exit code when at least one recording could not be scanned (bad file).
BAD_FILE_EXIT = 2


def _output_dir(out: Path, path: Path, taken: set[str]) -> Path:
    """``out/<stem>``, or ``out/<stem>_<suffix>`` when two inputs share a stem."""
    name = path.stem if path.stem not in taken else f"{path.stem}_{path.suffix.lstrip('.')}"
    taken.add(name)
    return out / name


def scan_files(
    paths: Sequence[str | os.PathLike[str]],
    cfg: PlatformConfig,
    *,
    package: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    engine: str | None = None,
    distill: bool = False,
    console: Any = None,
) -> tuple[int, list[Any]]:
    """Scan ``paths`` with the package (or ``cfg``'s workspace) and write each one's outputs into
    ``out_dir/<stem>/`` (default ``<root>/<scan.out_dir>``). Returns (exit code, ScanResults)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hms_core.scanning.engine import load_scanner, scan_recording

    console = console or Console()
    scan = cfg.scan if engine is None else cfg.scan.model_copy(update={"engine": engine})
    out = Path(out_dir) if out_dir is not None else cfg.root / scan.out_dir
    scanner = load_scanner(package, scan, cfg)
    if distill:
        from hms_core.scanning.distill import distill as run_distill

        res = run_distill(cfg, package, log=console.print)
        console.print(f"distilled scanning model: held-out KL vs the ensemble {res.metrics['kl_heldout']:.4f} "
                      f"({res.metrics['heldout_windows']} windows) -> {res.folder}")  # fmt: skip
        scanner = load_scanner(package, scan, cfg)
    results, failed, taken = [], [], set()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        for p in paths:
            path = Path(p)
            task = bar.add_task(f"scan {path.name}", total=None)

            def progress(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done, total=total)

            try:
                res = scan_recording(path, None, scan, _output_dir(out, path, taken), platform=cfg, scanner=scanner,
                                     progress=progress)  # fmt: skip
            except RecordError as e:
                bar.update(task, description=f"[red]FAILED[/red] {path.name}")
                console.print(f"[red]error[/red]: {e}")
                failed.append(path)
                continue
            results.append(res)
            s = res.outputs.summary
            console.print(
                f"{path.name}: {res.duration_s / 3600:.2f} h, {res.n_evaluated}/{res.n_windows} windows evaluated, "
                f"{len(res.outputs.events)} events, engine {res.engine}"
                + (f" (ensemble on {res.n_ensemble} windows)" if res.engine == "cascade" else "")
                + f", {res.seconds:.1f} s "
                f"(real-time factor {res.realtime_factor:.0f}x), not evaluated {s['not_evaluated_s']:.0f} s -> "
                f"{res.outputs.paths['summary'].parent}"
            )
    if failed:
        console.print(f"[red]{len(failed)} of {len(paths)} recording(s) could not be scanned[/red]: "
                      f"{', '.join(str(f) for f in failed)}")  # fmt: skip
        return BAD_FILE_EXIT, results
    return 0, results
