"""Fault injection for the reliability suite: a stage (or a scan) run in a child process killed with SIGKILL at a
seeded random point, and comparisons of what the resumed run wrote with what an uninterrupted run wrote.

The child is forked from a ``forkserver`` that imported the platform once (``hms_dagster.runner``, the scanner),
so a case pays for its stage, not for an interpreter start-up; it runs :func:`hms_dagster.runner.run_pipeline`
(what ``hms run`` calls) or :func:`hms_core.scanning.batch.scan_files` (what ``hms scan`` calls) in its own session,
and the whole process group is killed. Kill points are ``uniform(lo, hi)`` fractions of the stage's duration in the
uninterrupted run, drawn from ``random.Random(f"{seed}:{case}:{i}")`` with ``seed = $HMS_FAULT_SEED`` (default 13):
the same seed gives the same points, and a failing case prints its seed and point.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED_ENV = "HMS_FAULT_SEED"
PRELOAD = ["hms_dagster.runner", "hms_core.scanning.batch", "hms_core.scanning.engine"]
_CTX: list = []


def seed() -> int:
    return int(os.environ.get(SEED_ENV, "13"))


def kill_fraction(case: str, i: int = 0, lo: float = 0.1, hi: float = 0.7) -> float:
    return random.Random(f"{seed()}:{case}:{i}").uniform(lo, hi)


def _context():
    if not _CTX:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)  # takes effect when the server starts (first child)
        _CTX.append(ctx)
    return _CTX[0]


# --- children -------------------------------------------------------------------------------------------------
def _stage_child(config_path: str, stage: str, fold: int | None) -> None:
    os.setsid()  # its own process group: the kill takes any process it starts with it
    os.environ.pop("DAGSTER_HOME", None)
    from hms_core.config import load_config
    from hms_dagster.runner import run_pipeline

    report = run_pipeline(load_config(config_path), stage, fold=fold)
    os._exit(0 if report.ok else 1)


def _scan_child(paths: list[str], cfg, package: str, out_dir: str) -> None:
    os.setsid()
    from rich.console import Console

    from hms_core.scanning.batch import scan_files

    with open(os.devnull, "w") as null:
        code, _ = scan_files(paths, cfg, package=package, out_dir=out_dir, console=Console(file=null))
    os._exit(code)


def start_stage(config_path: Path, stage: str, fold: int | None = None):
    proc = _context().Process(target=_stage_child, args=(str(config_path), stage, fold), daemon=True)
    proc.start()
    return proc


def start_scan(paths: Iterable[Path], cfg, package: Path, out_dir: Path):
    args = ([str(p) for p in paths], cfg, str(package), str(out_dir))
    proc = _context().Process(target=_scan_child, args=args, daemon=True)
    proc.start()
    return proc


@dataclass
class Kill:
    delay_s: float  # after the start signal
    killed: bool  # False: the child had finished before the kill point
    exitcode: int | None


def kill_after(proc, delay_s: float, started: Callable[[], bool] | None = None, timeout_s: float = 300.0) -> Kill:
    """Wait until ``started()`` (polled every 0.1 s; default: at once), sleep ``delay_s``, then SIGKILL the
    child's process group unless it has already exited."""
    deadline = time.monotonic() + timeout_s
    while started is not None and not started():
        if not proc.is_alive():
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"the child did not start its run within {timeout_s} s")
        time.sleep(0.1)
    end = time.monotonic() + delay_s
    while proc.is_alive() and time.monotonic() < end:
        time.sleep(0.02)
    killed = proc.is_alive()
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.join(60)
    return Kill(delay_s, killed, proc.exitcode)


# --- the Dagster instance ---------------------------------------------------------------------------------------
def run_started(home: Path, job: str, pid: int) -> Callable[[], bool]:
    """A poll: has the process ``pid`` started a run of ``job`` on the instance in ``home``?"""
    import dagster as dg

    inst = dg.DagsterInstance.from_config(str(home))

    def poll() -> bool:
        return bool(inst.get_run_records(dg.RunsFilter(job_name=job, tags={"hms/pid": str(pid)}), limit=1))

    return poll


def run_seconds(home: Path, job: str, partition: str | None = None) -> float:
    """Duration of the latest successful run of ``job`` (``partition``) on the instance in ``home``."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as inst:
        tags = {"dagster/partition": partition} if partition else None
        recs = inst.get_run_records(
            dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.SUCCESS], tags=tags), limit=1
        )
        assert recs, f"no successful run of {job} {partition or ''} in {home}"
        return float(recs[0].end_time - recs[0].start_time)


def materializations(home: Path, asset: str, partition: str | None = None) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as inst:
        f = dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        )
        return len(inst.fetch_materializations(f, limit=1000).records)


# --- comparisons ------------------------------------------------------------------------------------------------
TEXT_SUFFIXES = (".json", ".csv", ".yaml", ".tsv", ".md")


def sha256(path: Path, workspace: Path | None = None) -> str:
    """SHA-256 of a file; with ``workspace`` (the folder holding a workspace and its config), of a text file with
    that folder written as ``<root>``: a copied workspace records its own absolute paths."""
    data = Path(path).read_bytes()
    if workspace is not None and Path(path).suffix in TEXT_SUFFIXES:
        data = data.replace(str(workspace).encode(), b"<root>")
    return hashlib.sha256(data).hexdigest()


def tree_hashes(root: Path, skip: Callable[[Path], bool] = lambda p: False, workspace: Path | None = None
                ) -> dict[str, str]:  # fmt: skip
    root = Path(root)
    return {str(p.relative_to(root)): sha256(p, workspace) for p in sorted(root.rglob("*"))
            if p.is_file() and not skip(p.relative_to(root))}  # fmt: skip


def compare_hashes(ref: dict[str, str], got: dict[str, str]) -> list[str]:
    """The names whose checksum differs or that one side lacks."""
    return sorted(k for k in ref.keys() | got.keys() if ref.get(k) != got.get(k))


def frame_diff(ref: Path, got: Path) -> float:
    """Largest absolute difference between the numeric columns of two parquet tables (inf: different shape,
    columns or non-numeric values)."""
    import pandas as pd

    a, b = pd.read_parquet(ref), pd.read_parquet(got)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return float("inf")
    num = a.select_dtypes("number").columns
    other = [c for c in a.columns if c not in num]
    if other and not a[other].equals(b[other]):
        return float("inf")
    x, y = a[num].to_numpy(float), b[num].to_numpy(float)
    if not np.array_equal(np.isnan(x), np.isnan(y)):
        return float("inf")
    return float(np.nanmax(np.abs(x - y))) if x.size else 0.0


def onnx_diff(ref: Path, got: Path, batch: int = 2) -> float:
    """Largest absolute difference between the outputs of two ONNX models on the same seeded random inputs
    (symbolic dimensions set to ``batch``); inf when their inputs or outputs differ in name or shape."""
    import onnxruntime as ort

    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (ref, got))
    sig = lambda s: [(i.name, i.type, tuple(d if isinstance(d, int) else None for d in i.shape))
                     for i in s.get_inputs()]  # fmt: skip
    if sig(a) != sig(b) or [o.name for o in a.get_outputs()] != [o.name for o in b.get_outputs()]:
        return float("inf")
    rng = np.random.default_rng(0)
    feed = {}
    for i in a.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        feed[i.name] = rng.standard_normal(shape).astype(np.float64 if "double" in i.type else np.float32)
    worst = 0.0
    for x, y in zip(a.run(None, feed), b.run(None, feed), strict=True):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.shape != y.shape:
            return float("inf")
        worst = max(worst, float(np.max(np.abs(x - y))) if x.size else 0.0)
    return worst


def json_diff(ref: Path, got: Path, roots: tuple[Path, Path] | None = None, ignore: tuple[str, ...] = ("created",)
              ) -> float:  # fmt: skip
    """Largest absolute difference between the numbers of two JSON documents of the same structure (inf when keys,
    lengths or other values differ). ``roots``: the two workspace folders, written as ``<root>`` in each; keys in
    ``ignore`` (a creation time) are left out."""
    import json

    def load(path: Path, root: Path | None):
        text = Path(path).read_text()
        return json.loads(text.replace(str(root), "<root>") if root is not None else text)

    def walk(x, y) -> float:
        if isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return float("inf")
            return max((walk(x[k], y[k]) for k in x if k not in ignore), default=0.0)
        if isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return float("inf")
            return max((walk(u, v) for u, v in zip(x, y, strict=True)), default=0.0)
        if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)):
            return 0.0 if x == y else float("inf")
        if not isinstance(y, (int, float)):
            return float("inf")
        return 0.0 if x == y else abs(float(x) - float(y))

    a, b = roots or (None, None)
    return walk(load(ref, a), load(got, b))
