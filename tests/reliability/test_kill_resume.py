"""``kill -9`` at a seeded random point of each stage, then the resumed run: it completes, finished partitions are
not redone, and what it wrote matches the uninterrupted run of the shared ``trained_workspace``.

Each case copies the trained workspace (``copy_workspace``), removes what the stage under test would have to
rebuild (so the kill lands in real work, not in a skip), runs the stage in a child process (:mod:`faults`: what
``hms run`` runs) and kills its process group at ``u * T``, ``T`` the stage's duration in the uninterrupted run
(from its Dagster run record), ``u`` drawn from the seed (``$HMS_FAULT_SEED``). Then ``run_pipeline(...,
resume=True)`` (``hms run --resume``) or ``hms scan`` again, and the comparison:

- deterministic stages (data, ensemble, a scan): SHA-256 of every file, less fields that record wall time;
- training (a classifier fold, foundation pretraining): out-of-fold and test probabilities within
  :data:`PROB_TOL` and metrics within :data:`METRIC_TOL` of the uninterrupted run (the trainers resume from
  their last checkpoint with RNG states; measured differences are 0 on this machine, the tolerance allows for
  another BLAS).

One point per stage always runs; ``pytest -m fuzz`` adds :data:`FUZZ_POINTS` more points per stage and the slow
stages (foundation pretraining, export). The preprocessing stage's kill + resume is
``tests/hms_dagster/test_resume_kill.py`` (the real ``hms`` CLI killed; completed folds skipped).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import copy_workspace
from tests.reliability import faults, tally

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Largest allowed |difference| of a probability written by a resumed training (out-of-fold, test).
PROB_TOL = 1e-5
#: Largest allowed |difference| of a metric (KL, loss) of a resumed training.
METRIC_TOL = 1e-5
#: Extra kill points per stage under ``-m fuzz``.
FUZZ_POINTS = 4


def _copy(trained, dest: Path):
    """:func:`copy_workspace` with W&B off in the copy (``logging.wandb_mode`` changes no result, so nothing goes
    stale; its offline run per training is seconds of start-up that the kill cases do not test)."""
    import yaml

    from tests.conftest import _load

    ws = copy_workspace(trained, dest)
    data = yaml.safe_load(ws.config_path.read_text())
    data["logging"] = {**data.get("logging", {}), "wandb_mode": "disabled"}
    ws.config_path.write_text(yaml.safe_dump(data))
    return _load(ws.config_path)


def _points(always: int = 1, fuzz: int = FUZZ_POINTS) -> list:
    return [*range(always), *(pytest.param(i, marks=pytest.mark.fuzz) for i in range(always, always + fuzz))]


#: Kill delays tried, as factors of ``u * T``, when the child finished first (a machine faster than the reference
#: run, e.g. the reference trained under load); 0: at the start of its run.
ATTEMPTS = (1.0, 1 / 3, 1 / 9, 0.0)


def _kill(case: str, point: int, ws, stage: str, job: str, seconds: float, fold: int | None = None,
          reset=None) -> faults.Kill:  # fmt: skip
    """Start ``stage`` of ``ws`` in a child and kill it at the drawn point ``u * T`` of its run. When the child
    finished first, ``reset()`` (what the case removed before its first attempt) and again at the next factor of
    :data:`ATTEMPTS`."""
    u = faults.kill_fraction(case, point)
    for factor in ATTEMPTS:
        if reset is not None:
            reset()
        proc = faults.start_stage(ws.config_path, stage, fold)
        started = faults.run_started(ws.cfg.dagster_home, job, proc.pid)
        kill = faults.kill_after(proc, u * seconds * factor, started)
        if kill.killed:
            tally.add(case, faults_injected=1)
            return kill
    raise AssertionError(f"{case}: the child finished before every kill point (u={u:.3f}, T={seconds:.1f} s)")


def _compare(case: str, mismatched: list[str], compared: int) -> None:
    tally.add(case, artifacts_compared=compared, artifacts_mismatched=len(mismatched))
    assert not mismatched, f"{case} (seed {faults.seed()}): differs from the uninterrupted run: {mismatched}"


def _manifest_without_times(path: Path) -> dict:
    made = json.loads(path.read_text())
    for k in ("seconds", "synthesis_cpu_seconds", "sessions_written", "sessions_skipped"):
        made.pop(k, None)
    return made


@pytest.mark.parametrize("point", _points())
def test_data_stage_killed_then_resumed(trained_workspace, tmp_path, point):
    from hms_core.raw import fingerprint
    from hms_dagster.runner import run_pipeline

    case = f"data[{point}]"
    ref = trained_workspace.cfg
    ws = _copy(trained_workspace, tmp_path)
    cfg = ws.cfg
    processed = ("labels.parquet", "test_rows.parquet", "folds.parquet")

    def reset() -> None:
        shutil.rmtree(cfg.raw_dir, ignore_errors=True)  # the synthetic data set is generated again ...
        for name in processed:  # ... and labelled and folded again
            (cfg.processed_dir / name).unlink(missing_ok=True)

    _kill(case, point, ws, "data", "data_job", faults.run_seconds(ref.dagster_home, "data_job"), reset=reset)
    spectrograms_at_kill = len(list(cfg.raw_dir.glob("*_spectrograms/*.parquet")))

    report = run_pipeline(cfg, "data", resume=True)
    assert report.ok, report.failed
    assert [pr.job.name for pr, *_ in report.done] == ["data_job"] and report.reaped, report

    manifest = "synthetic_manifest.json"
    made = json.loads((cfg.raw_dir / manifest).read_text())
    assert made["sessions_written"] + made["sessions_skipped"] == made["n_spectrograms"] + made["n_test"]
    assert made["sessions_skipped"] >= spectrograms_at_kill - 1, (made, spectrograms_at_kill)  # not redone
    bad = faults.compare_hashes(
        faults.tree_hashes(ref.raw_dir, skip=lambda p: p.name == manifest),
        faults.tree_hashes(cfg.raw_dir, skip=lambda p: p.name == manifest),
    )
    if _manifest_without_times(ref.raw_dir / manifest) != _manifest_without_times(cfg.raw_dir / manifest):
        bad.append(manifest)
    bad += [n for n in processed if faults.sha256(ref.processed_dir / n) != faults.sha256(cfg.processed_dir / n)]
    if fingerprint(cfg.raw_dir) != fingerprint(ref.raw_dir):  # raw_dataset's data version: downstream not stale
        bad.append("raw_dataset data version")
    _compare(case, bad, len(faults.tree_hashes(ref.raw_dir)) + len(processed))
    tally.add(case, faults_survived=1)


@pytest.mark.parametrize("point", _points())
def test_a_classifier_fold_killed_then_resumed(trained_workspace, tmp_path, point):
    from hms_dagster.runner import run_pipeline
    from hms_dagster.stages import model_asset_key

    case = f"models_fold_1[{point}]"
    ref = trained_workspace.cfg
    ws = _copy(trained_workspace, tmp_path)
    cfg = ws.cfg
    models = cfg.enabled_models()

    def reset() -> None:  # fold_1 of every classifier trains again; fold_0 and fold_2 stay as trained
        for m in models:
            shutil.rmtree(cfg.models_dir / m / "fold_1", ignore_errors=True)

    seconds = faults.run_seconds(ref.dagster_home, "models_job", "fold_1")
    _kill(case, point, ws, "models", "models_job", seconds, 1, reset)
    home = cfg.dagster_home
    before = {f: faults.materializations(home, model_asset_key(models[0]), f) for f in cfg.fold_names}

    report = run_pipeline(cfg, "models", resume=True)
    assert report.ok, report.failed
    assert [pr.partition for pr, *_ in report.done] == ["fold_1"], report
    assert sorted(pr.partition for pr in report.skipped) == ["fold_0", "fold_2"]  # finished folds not redone
    after = {f: faults.materializations(home, model_asset_key(models[0]), f) for f in cfg.fold_names}
    assert after == {**before, "fold_1": before["fold_1"] + 1}

    bad, compared = [], 0
    for m in models:
        a, b = ref.models_dir / m / "fold_1", cfg.models_dir / m / "fold_1"
        for name in ("oof.parquet", "test_pred.parquet"):
            compared += 1
            diff = faults.frame_diff(a / name, b / name)
            if diff > PROB_TOL:
                bad.append(f"{m}/{name}: max |diff| {diff:.2e}")
        ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
        compared += 1
        if abs(ma["val_kl"] - mb["val_kl"]) > METRIC_TOL:
            bad.append(f"{m}/metrics.json: val_kl {ma['val_kl']} vs {mb['val_kl']}")
    _compare(case, bad, compared)
    tally.add(case, faults_survived=1)


@pytest.mark.parametrize("point", _points())
def test_ensemble_stage_killed_then_resumed(trained_workspace, tmp_path, point):
    from hms_dagster.runner import run_pipeline

    case = f"ensemble[{point}]"
    ref = trained_workspace.cfg
    ws = _copy(trained_workspace, tmp_path)
    cfg = ws.cfg
    _kill(case, point, ws, "ensemble", "ensemble_job", faults.run_seconds(ref.dagster_home, "ensemble_job"),
          reset=lambda: shutil.rmtree(cfg.ensemble_dir, ignore_errors=True))  # fmt: skip

    report = run_pipeline(cfg, "ensemble", resume=True)
    assert report.ok, report.failed
    assert [pr.job.name for pr, *_ in report.done] == ["ensemble_job"], report
    volatile = {"report"}  # the HTML report embeds its creation time
    skip = lambda p: p.parts[0] in volatile
    want = faults.tree_hashes(ref.ensemble_dir, skip, ref.root.parent)
    got = faults.tree_hashes(cfg.ensemble_dir, skip, cfg.root.parent)
    _compare(case, faults.compare_hashes(want, got), len(want))
    tally.add(case, faults_survived=1)


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory) -> Path:
    """A 30-min clinical EDF+ (19 EEG channels + EKG, flat and disconnected stretches) for the scan cases."""
    from tests.hms_core.test_scan_engine import write_edf

    return write_edf(tmp_path_factory.mktemp("long") / "icu_long.edf", duration_s=1800, seed=4)


def _scan_cfg(cfg):
    # every package engine on a 10-s grid, in 5-min chunks; nothing appended to the shared workspace's log
    update = {"engine": "ensemble", "stride_s": 10.0, "chunk_s": 300.0, "log_predictions": False}
    return cfg.model_copy(update={"scan": cfg.scan.model_copy(update=update)})


@pytest.mark.parametrize("point", _points())
def test_a_scan_of_a_long_recording_killed_then_scanned_again(
    trained_workspace, deployment_package, long_recording, tmp_path, point
):
    import os
    import time

    from rich.console import Console

    from hms_core.scanning.batch import scan_files

    case = f"scan[{point}]"
    cfg = _scan_cfg(trained_workspace.cfg)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    t0 = time.perf_counter()
    code, _ = scan_files(
        [long_recording], cfg, package=deployment_package, out_dir=tmp_path / "ref", console=quiet
    )
    seconds = time.perf_counter() - t0
    assert code == 0
    u = faults.kill_fraction(case, point)
    out = tmp_path / "out"
    for attempt in range(2):
        kill = faults.kill_after(faults.start_scan([long_recording], cfg, deployment_package, out),
                                 u * seconds / (1 + 2 * attempt))  # fmt: skip
        if kill.killed:
            break
    assert kill.killed, f"{case}: the scan finished before the kill point twice (u={u:.3f}, T={seconds:.1f} s)"
    tally.add(case, faults_injected=1)
    folder = out / long_recording.stem
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    # summary.json is written after the timeline, events and annotations: present, it describes complete files
    assert "summary.json" not in left or {"timeline.parquet", "events.tsv", "events.edf"} <= set(left), left

    code, _ = scan_files([long_recording], cfg, package=deployment_package, out_dir=out, console=quiet)  # again
    assert code == 0
    # A kill inside an atomic write leaves its hidden temporary (".timeline.csv.<random>.tmp.csv"): never read
    # as an output (no output name starts with "."), compared below only by the names that are outputs.
    hidden = lambda p: p.name == "summary.json" or p.name.startswith(".")
    ref_folder = tmp_path / "ref" / long_recording.stem
    bad = faults.compare_hashes(faults.tree_hashes(ref_folder, hidden), faults.tree_hashes(folder, hidden))

    def summary(p: Path) -> dict:
        s = json.loads(p.read_text())
        for k in ("scan_seconds", "realtime_factor"):  # wall time of the scan
            s["meta"].pop(k)
        return s

    if summary(ref_folder / "summary.json") != summary(folder / "summary.json"):
        bad.append("summary.json")
    _compare(case, bad, len(list(ref_folder.iterdir())))
    tally.add(case, faults_survived=1)


@pytest.mark.fuzz
@pytest.mark.parametrize("point", range(1 + FUZZ_POINTS))
def test_foundation_pretraining_killed_then_resumed(trained_workspace, tmp_path, point):
    """Slow (the corpus and the pretraining again, ~30 s per point on the tiny profile): ``-m fuzz`` only. The
    always-on kill of pretraining itself is tests/hms_core/test_foundation.py (exact resume after SIGKILL)."""
    import torch

    from hms_dagster.runner import run_pipeline

    case = f"foundation[{point}]"
    ref = trained_workspace.cfg
    ws = _copy(trained_workspace, tmp_path)
    cfg = ws.cfg
    folder = cfg.root / "foundation"
    _kill(case, point, ws, "foundation", "foundation_job", faults.run_seconds(ref.dagster_home, "foundation_job"),
          reset=lambda: shutil.rmtree(folder, ignore_errors=True))  # fmt: skip

    report = run_pipeline(cfg, "foundation", resume=True)
    assert report.ok, report.failed
    assert [pr.job.name for pr, *_ in report.done] == ["foundation_job"], report
    a = torch.load(ref.root / "foundation/encoder/weights.pt", weights_only=True)
    b = torch.load(folder / "encoder/weights.pt", weights_only=True)
    bad = [k for k in a if k not in b or (a[k] - b[k]).abs().max().item() > PROB_TOL]
    ma, mb = (json.loads((r / "foundation/metrics.json").read_text()) for r in (ref.root, cfg.root))
    bad += [k for k in ("eval_loss", "loss", "eval_recon", "eval_contrastive") if abs(ma[k] - mb[k]) > METRIC_TOL]
    _compare(case, bad, len(a) + 4)
    tally.add(case, faults_survived=1)


@pytest.mark.fuzz
@pytest.mark.parametrize("point", range(1 + FUZZ_POINTS))
def test_export_stage_killed_then_resumed(trained_workspace, deployment_package, tmp_path, point):
    """Slow (every fold model exported and parity-checked again, ~60 s per point): ``-m fuzz`` only."""
    from hms_core.export import latest_package
    from hms_core.export.runtime import load_package, package_files
    from hms_dagster.runner import run_pipeline

    case = f"export[{point}]"
    ref = trained_workspace.cfg
    ws = _copy(trained_workspace, tmp_path)
    cfg = ws.cfg
    deployments = cfg.models_dir / "deployments"
    attempt = iter(range(len(ATTEMPTS)))

    def reset() -> (
        None
    ):  # an attempt that finished first left a new package and its runs: start from the copy again
        if next(attempt):
            shutil.rmtree(cfg.root)
            _copy(trained_workspace, tmp_path)

    _kill(case, point, ws, "export", "export_job", faults.run_seconds(ref.dagster_home, "export_job"), reset=reset)
    assert latest_package(deployments).name == deployment_package.name  # latest.json still names a whole package

    report = run_pipeline(cfg, "export", resume=True)
    assert report.ok, report.failed
    new = latest_package(deployments)
    assert new.name != deployment_package.name
    load_package(new)  # every file verified against the manifest
    assert not list(deployments.glob(".tmp-*")), "an interrupted package folder was left behind"
    old_files, new_files = package_files(deployment_package), package_files(new)
    bad = sorted(set(old_files) ^ set(new_files))
    volatile = {"package.json", "manifest.json", "model_card.md", "config.yaml"}  # version, creation time, paths
    for rel in set(old_files) & set(new_files):
        if rel in volatile:
            continue
        a, b = deployment_package / rel, new / rel
        if faults.sha256(a) == faults.sha256(b):
            continue
        # not byte-identical: the same numbers (an ONNX file records its export's names and doc strings)
        suffix = Path(rel).suffix
        if suffix == ".parquet":
            diff = faults.frame_diff(a, b)
        elif suffix == ".onnx":
            diff = faults.onnx_diff(a, b)
        elif suffix == ".json":  # the workspace paths and creation time it records aside
            diff = faults.json_diff(a, b, (ref.root.parent, cfg.root.parent))
        else:
            diff = float("inf")
        if diff > PROB_TOL:
            bad.append(f"{rel}: max |diff| {diff:.2e}")
    _compare(case, bad, len(old_files))
    tally.add(case, faults_survived=1)
