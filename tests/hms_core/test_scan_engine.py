"""The scanning engine: continuous preprocessing against the per-window path, window grid, windows that cannot be
judged, bounded reads, and a scan end to end on a short EDF written with pyEDFlib (clinical channel names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hms_core.config import load_config
from hms_core.constants import CLASSES, SFREQ

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Clinical (TUH-style) labels of the 19 EEG channels and the EKG, as a hospital EDF names them.
LABELS = [f"EEG {c}-REF" for c in ("Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz", "Pz", "Fp2", "F4",
                                    "C4", "P4", "F8", "T4", "T6", "O2")] + ["EKG1"]  # fmt: skip
DURATION_S = 240
FLAT = (100, 130)  # every channel held at 0 (a disconnected headbox)
DISCONNECTED = (170, 190)  # every channel saturated with electrode noise


def write_edf(path: Path, duration_s: int = DURATION_S, seed: int = 0) -> Path:
    """A 19-channel + EKG EDF+ at 200 Hz: 9-11 Hz rhythm, slow drift and noise; when long enough, every channel flat
    over FLAT and saturated with electrode noise over DISCONNECTED."""
    import pyedflib

    rng = np.random.default_rng(seed)
    n = duration_s * SFREQ
    t = np.arange(n) / SFREQ
    slow = np.cumsum(rng.normal(0, 1, n))
    slow -= np.convolve(slow, np.ones(400) / 400, "same")
    sigs = []
    for i in range(len(LABELS)):
        x = 20 * np.sin(2 * np.pi * (9 + i % 3) * t + i) + 0.8 * slow + rng.normal(0, 8, n)
        if duration_s >= FLAT[1]:
            x[FLAT[0] * SFREQ : FLAT[1] * SFREQ] = 0.0
        if duration_s >= DISCONNECTED[1]:
            a, b = DISCONNECTED[0] * SFREQ, DISCONNECTED[1] * SFREQ
            x[a:b] = rng.normal(0, 2000, b - a)
        sigs.append(np.clip(x, -3200, 3200))
    w = pyedflib.EdfWriter(str(path), len(LABELS), file_type=pyedflib.FILETYPE_EDFPLUS)
    w.setSignalHeaders([{"label": lab, "dimension": "uV", "sample_frequency": SFREQ, "physical_max": 3200,
                         "physical_min": -3200, "digital_max": 32767, "digital_min": -32768} for lab in LABELS])  # fmt: skip
    w.writeSamples(sigs)
    w.close()
    return path


@pytest.fixture(scope="module")
def edf(tmp_path_factory) -> Path:
    return write_edf(tmp_path_factory.mktemp("scan") / "icu_recording.edf")


@pytest.fixture(scope="module")
def signal(edf) -> np.ndarray:
    from hms_core.recording import open_recording

    with open_recording(edf) as rec:
        return rec.read(0, rec.duration_s)


def test_continuous_front_end_matches_process_windows_in_the_window_interior(signal):
    from hms_core.preprocess import process_windows
    from hms_core.scanning.frontend import context_start, prepare_chunk, window_batch, window_quality

    pp = load_config("tiny").preprocessing
    seg = np.array([36]) * SFREQ  # a clean window; its start (7200 samples) is off the 128-sample STFT hop grid
    ctx = context_start(seg, pp)
    chunk = prepare_chunk(signal, 0, pp)  # one filter pass over the whole recording
    cont = window_batch(chunk, ctx, window_quality(chunk, ctx, pp), pp)
    ref = process_windows(np.stack([signal[c : c + 10000] for c in ctx]), pp)
    sl = pp.eeg.segment_slice
    # scaled model input: the per-window path's quantiles include its own 50-s edge transients, hence 5 %
    iqr_units = np.abs(cont.bipolar[:, :, sl] - ref.bipolar[:, :, sl])
    assert iqr_units.max() < 0.05, iqr_units.max()
    for name, s in ref.spectrograms.items():
        assert np.abs(cont.spectrograms[name] - s).max() < 0.02, name
    fa, fb = cont.features.to_numpy(), ref.features.to_numpy()
    assert np.allclose(fa, fb, rtol=0.01, atol=1e-3)
    assert cont.quality.all() and ref.quality.all()
    # the filtered microvolts themselves agree to far below the EEG noise in the interior
    raw_pp = pp.model_copy(deep=True)
    raw_pp.eeg.scaling = "none"
    raw_pp.spectrogram.types = ["stft"]
    a = window_batch(prepare_chunk(signal, 0, raw_pp), ctx, window_quality(chunk, ctx, raw_pp), raw_pp, False)
    b = process_windows(np.stack([signal[c : c + 10000] for c in ctx]), raw_pp, compute_features=False)
    interior = slice(5 * SFREQ, 45 * SFREQ)
    assert np.abs(a.bipolar[..., interior] - b.bipolar[..., interior]).max() < 0.01 * b.bipolar.std()


def test_flat_disconnected_and_edge_windows_are_not_evaluated(signal):
    from hms_core.scanning.engine import _reasons
    from hms_core.scanning.frontend import context_start, prepare_chunk, window_quality, window_span

    pp = load_config("tiny").preprocessing
    stride = 2 * SFREQ
    seg = np.arange(0, (DURATION_S - 10) * SFREQ + 1, stride)
    before, after = window_span(pp)
    edge = (seg - before < 0) | (seg + after > DURATION_S * SFREQ)
    chunk = prepare_chunk(signal, 0, pp)
    ok, why = _reasons(window_quality(chunk, context_start(seg, pp), pp), edge, 4)
    start = seg / SFREQ
    inside = lambda span: (start >= span[0]) & (start + 10 <= span[1])
    assert (edge == ((start < 20) | (start > DURATION_S - 30))).all() and set(why[edge]) == {"edge"}
    assert set(why[inside(FLAT)]) == {"flat"}
    assert set(why[inside(DISCONNECTED)]) == {"disconnected"}
    clean = ~edge & ((start + 10 <= FLAT[0] - 2) | (start >= DISCONNECTED[1] + 2)) & ~inside(DISCONNECTED)
    clean &= (start >= FLAT[1] + 2) | (start + 10 <= FLAT[0] - 2)
    assert clean.sum() > 20 and ok[clean].all()


def test_stride_must_fit_the_block_and_hop_grid():
    from hms_core.scanning.config import ScanConfig

    assert ScanConfig(stride_s=1.0).stride_samples == 200
    with pytest.raises(ValueError, match="multiple of 0.25 s"):
        ScanConfig(stride_s=0.3)
    with pytest.raises(ValueError, match="distill.hop"):
        ScanConfig(stride_s=0.75, distill={"hop": 100})


def test_scan_grid_outputs_and_bounded_reads(trained_workspace, deployment_package, edf, tmp_path, monkeypatch):
    import hms_core.recording
    from hms_core.scanning.engine import scan_recording
    from hms_core.scanning.events import validate_timeline

    reads = []
    opened = hms_core.recording.open_recording

    def counting_open(*args, **kwargs):
        rec = opened(*args, **kwargs)
        read = rec.read
        rec.read = lambda a, b: reads.append(b - a) or read(a, b)
        return rec

    monkeypatch.setattr(hms_core.recording, "open_recording", counting_open)
    cfg = trained_workspace.cfg
    scan = cfg.scan.model_copy(update={"engine": "ensemble", "stride_s": 10.0, "chunk_s": 60.0})
    res = scan_recording(edf, deployment_package, scan, tmp_path / "out", platform=cfg)
    assert res.package_version in str(deployment_package)  # the package's engines classified the windows
    tl = validate_timeline(res.timeline)
    n = int((DURATION_S - 10) // 10) + 1
    assert len(tl) == n and np.allclose(tl["start_s"], 10.0 * np.arange(n))
    assert np.allclose(tl["end_s"] - tl["start_s"], 10)
    ev = tl["evaluated"].to_numpy()
    probs = tl[list(CLASSES)].to_numpy()
    assert np.isnan(probs[~ev]).all() and np.allclose(probs[ev].sum(1), 1.0) and ev.sum() >= 10
    assert (tl.loc[~ev, "reason"] != "").all() and (tl.loc[ev, "reason"] == "").all()
    assert {"edge", "flat", "disconnected"} <= set(tl["reason"])
    assert np.isfinite(tl.loc[ev, "disagreement"]).all() and res.engine == "ensemble" and res.realtime_factor > 0
    for name in ("timeline_csv", "timeline_parquet", "events", "annotations", "summary", "plot"):
        assert res.outputs.paths[name].is_file(), name
    # memory stays bounded: every read is one chunk of windows plus the 50-s context and the filter margin
    assert len(reads) >= 3 and max(reads) <= scan.chunk_s + 50 + 2 * scan.filter_pad_s + 1


def test_chunk_edges_do_not_show(signal):
    """A window prepared from a chunk that starts just a filter margin before its context equals the same window
    prepared from the whole recording."""
    from hms_core.scanning.frontend import context_start, prepare_chunk, window_batch, window_quality

    pp = load_config("tiny").preprocessing
    pp.spectrogram.types = ["stft"]
    ctx = context_start(np.array([60 * SFREQ]), pp)
    whole = prepare_chunk(signal, 0, pp)
    lo = int(ctx[0]) - 20 * SFREQ
    part = prepare_chunk(signal[lo : int(ctx[0]) + 10000 + 20 * SFREQ], lo, pp)
    a = window_batch(whole, ctx, window_quality(whole, ctx, pp), pp, False)
    b = window_batch(part, ctx, window_quality(part, ctx, pp), pp, False)
    assert (
        np.abs(a.bipolar - b.bipolar).max() < 1e-3
        and np.abs(a.spectrograms["stft"] - b.spectrograms["stft"]).max() < 0.01
    )


def test_workspace_ensemble_equals_the_package_on_scanner_windows(trained_workspace, deployment_package, signal):
    """Before a package exists the scanner runs the workspace's trained ensemble in torch; on the same windows it
    gives the package's ONNX blend."""
    from hms_core.export import load_package
    from hms_core.scanning.frontend import context_start, prepare_chunk, window_batch, window_quality
    from hms_core.scanning.predictors import PackageEnsemble, WorkspaceEnsemble

    cfg = trained_workspace.cfg
    pp = cfg.preprocessing
    ctx = context_start(np.array([40, 60]) * SFREQ, pp)
    chunk = prepare_chunk(signal[: 120 * SFREQ], 0, pp)
    out = window_batch(chunk, ctx, window_quality(chunk, ctx, pp), pp)
    torch_blend = WorkspaceEnsemble(cfg).predict(out)
    onnx_blend = PackageEnsemble(load_package(deployment_package)).predict(out)
    assert np.abs(torch_blend.probs - onnx_blend.probs).max() < 1e-4
    assert np.allclose(torch_blend.probs.sum(1), 1) and np.isfinite(torch_blend.disagreement).all()


def test_scan_logs_every_log_stride_window_with_the_features_drift_reads(
    trained_workspace, deployment_package, edf, tmp_path
):
    """The prediction log gets one evaluated window every scan.log_stride_s, with the window-quality flags and the
    monitored preprocessing features (what hms_core.monitoring.drift compares with the training reference); the
    features equal the per-window path's (window_batch) for the same windows."""
    import datetime as dt

    from hms_core.monitoring.log import QUALITY_FLAG_COLUMNS, monitored_feature_columns, read_predictions
    from hms_core.scanning.engine import scan_recording
    from hms_core.scanning.frontend import context_start, prepare_chunk, window_batch, window_quality

    base = trained_workspace.cfg
    cfg = base.model_copy(
        update={"monitoring": base.monitoring.model_copy(update={"root": str(tmp_path / "mon")})}
    )
    scan = cfg.scan.model_copy(update={"engine": "ensemble", "stride_s": 2.0, "log_stride_s": 10.0,
                                       "log_predictions": True})  # fmt: skip
    res = scan_recording(edf, deployment_package, scan, None, platform=cfg)
    rows = read_predictions(tmp_path / "mon" / "predictions", dt.datetime.now(dt.UTC).date())
    tl = res.timeline
    logged = tl[tl["evaluated"] & (tl["window"] % 5 == 0)]
    assert len(rows) == len(logged) > 5 and (rows["source"] == "scan").all()
    assert np.allclose(np.sort(rows["window_start_s"]), logged["start_s"])
    feats = [c for c in monitored_feature_columns() if c in rows.columns]
    assert len(feats) > 40 and np.isfinite(rows[feats].to_numpy()).all()
    assert {"n_flagged_channels", "nan_fraction", "bad_window"} <= set(rows.columns) & set(QUALITY_FLAG_COLUMNS)
    # the same numbers as the per-window path of the ensemble's inputs for one of these windows
    pp = cfg.preprocessing
    row = rows.sort_values("window_start_s").iloc[2]
    ctx = context_start(np.array([round(row["window_start_s"] * SFREQ)]), pp)
    chunk = prepare_chunk(signal_of(edf), 0, pp)
    ref = window_batch(chunk, ctx, window_quality(chunk, ctx, pp), pp, True, []).features
    assert np.allclose(row[feats].to_numpy(float), ref.select(feats).to_numpy()[0], rtol=1e-4, atol=1e-6)


def signal_of(path: Path) -> np.ndarray:
    from hms_core.recording import open_recording

    with open_recording(path) as rec:
        return rec.read(0, rec.duration_s)


class _ScriptedDistilled:
    """A distilled model whose Seizure probability is high on chosen windows (it is handed the evaluated windows
    in order, as the scanner classifies them) and low elsewhere: what the cascade then sends to the ensemble is
    known exactly."""

    kind = "distilled"

    def __init__(self, evaluated_windows: np.ndarray, seizure_windows: set[int]) -> None:
        from hms_core.scanning.config import DistillConfig

        self.dcfg = DistillConfig()
        self.order = iter(evaluated_windows.tolist())
        self.seizure_windows = seizure_windows

    def predict_inputs(self, spec: np.ndarray, scalars: np.ndarray):
        from hms_core.scanning.predictors import Prediction

        idx = [next(self.order) for _ in range(len(spec))]
        p = np.full((len(idx), len(CLASSES)), 0.96 / (len(CLASSES) - 1))
        p[:, CLASSES.index("Seizure")] = 0.04
        hot = np.isin(idx, list(self.seizure_windows))
        p[hot] = 0.08
        p[hot, CLASSES.index("Seizure")] = 0.6
        return Prediction(p, np.full(len(p), np.nan))


def test_cascade_judges_the_distilled_candidates_and_their_neighbours_with_the_ensemble(
    trained_workspace, deployment_package, edf, tmp_path
):
    """engine cascade: the windows the distilled model sends (a cascade class >= threshold, dilated by dilate_s,
    evaluated ones only) carry the ensemble's probabilities, exactly those of an ensemble scan; every other
    evaluated window keeps the distilled model's; the timeline's engine column says which."""
    from hms_core.export import load_package
    from hms_core.recording import open_recording
    from hms_core.scanning.config import CascadeConfig
    from hms_core.scanning.engine import scan_reader
    from hms_core.scanning.predictors import Cascade, PackageEnsemble

    cfg = trained_workspace.cfg
    scan = cfg.scan.model_copy(update={"stride_s": 4.0, "chunk_s": 60.0})  # chunks of 15 windows: edges crossed
    teacher = PackageEnsemble(load_package(deployment_package))
    with open_recording(edf) as rec:
        ens, _ = scan_reader(rec, teacher, scan, 4)
        ev = ens["evaluated"].to_numpy()
        hot = {int(np.flatnonzero(ev)[3]), int(np.flatnonzero(ev)[-2])}  # one early, one late
        student = _ScriptedDistilled(np.flatnonzero(ev), hot)
        casc = Cascade(student, teacher, CascadeConfig(classes=["Seizure"], threshold=0.5, dilate_s=8.0), 4.0)
        tl, _ = scan_reader(rec, casc, scan, 4)
    assert (tl["evaluated"] == ens["evaluated"]).all() and (tl.loc[~ev, "engine"] == "").all()
    near = np.zeros(len(tl), bool)
    for w in hot:
        near[max(w - 2, 0) : w + 3] = True  # 8 s at a 4-s stride: two windows either side
    judged = near & ev
    assert (tl.loc[judged, "engine"] == "ensemble").all() and (tl.loc[ev & ~judged, "engine"] == "distilled").all()
    probs, ens_probs = tl[list(CLASSES)].to_numpy(), ens[list(CLASSES)].to_numpy()
    assert np.allclose(probs[judged], ens_probs[judged], atol=1e-6)
    assert np.allclose(probs[ev & ~judged, CLASSES.index("Seizure")], 0.04, atol=1e-6)
    assert np.isfinite(tl.loc[judged, "disagreement"]).all() and tl.loc[ev & ~judged, "disagreement"].isna().all()
    # cascade.stride_s 8 (every other window at 4 s): the stretch's first, every other and its last window are the
    # ensemble's; the ones between are interpolated between them
    with open_recording(edf) as rec:
        student = _ScriptedDistilled(np.flatnonzero(ev), hot)
        every2 = CascadeConfig(classes=["Seizure"], threshold=0.5, dilate_s=8.0, stride_s=8.0)
        sparse, _ = scan_reader(rec, Cascade(student, teacher, every2, 4.0), scan, 4)
    by = sparse["engine"].to_numpy()
    assert set(by[judged]) == {"ensemble", "interpolated"} and (by[ev & ~judged] == "distilled").all()
    ens_rows = by == "ensemble"
    assert np.allclose(sparse[list(CLASSES)].to_numpy()[ens_rows], ens_probs[ens_rows], atol=1e-6)
    for i in np.flatnonzero(by == "interpolated"):
        assert by[i - 1] == by[i + 1] == "ensemble"  # every other window: both neighbours judged
        mid = 0.5 * (ens_probs[i - 1] + ens_probs[i + 1])
        assert np.allclose(sparse.loc[i, list(CLASSES)].to_numpy(float), mid / mid.sum(), atol=1e-5)
    # a cascade scan's events come from scan.cascade.events where set (its own thresholds), scan.events otherwise
    import json

    from hms_core.scanning.engine import Scanner, scan_recording

    own = scan.events.model_copy(update={"on_threshold": 0.55, "off_threshold": 0.45, "class_thresholds": {}})
    cascade_scan = scan.model_copy(update={"engine": "cascade", "log_predictions": False, "cascade": every2.model_copy(
        update={"events": own})})  # fmt: skip
    for engine, expected in (("cascade", own), ("ensemble", scan.events)):
        student = _ScriptedDistilled(np.flatnonzero(ev), hot)
        scanner = Scanner(teacher.preprocessing, "v", 4, lambda: teacher, student, Path(deployment_package))
        res = scan_recording(edf, None, cascade_scan.model_copy(update={"engine": engine}), tmp_path / engine,
                             scanner=scanner)  # fmt: skip
        summary = json.loads(res.outputs.paths["summary"].read_text())
        assert summary["events_config"] == json.loads(json.dumps(expected.model_dump()))


def test_cascade_candidates_and_config() -> None:
    from pydantic import ValidationError

    from hms_core.scanning.config import CascadeConfig
    from hms_core.scanning.engine import Scanner
    from hms_core.scanning.predictors import Cascade, interpolate_between

    p = np.full((10, len(CLASSES)), 0.1)
    p[4, CLASSES.index("LPD")] = 0.3
    p[7] = np.nan  # not evaluated: never a candidate, even beside one
    ev = ~np.isnan(p[:, 0])
    casc = Cascade(None, None, CascadeConfig(classes=["Seizure", "LPD"], threshold=0.25, dilate_s=6.0), 2.0)
    assert np.flatnonzero(casc.candidates(p, ev)).tolist() == [1, 2, 3, 4, 5, 6]
    assert not Cascade(None, None, CascadeConfig(threshold=0.25), 2.0).candidates(p, ev).any()  # Seizure only
    with pytest.raises(ValidationError, match="not among"):
        CascadeConfig(classes=["Seizures"])
    # judged windows at cascade.stride_s 6 s over a 2-s stride: each stretch's first, every third, and its last
    cand = np.zeros(20, bool)
    cand[2:13] = cand[15:17] = True
    every3 = Cascade(None, None, CascadeConfig(stride_s=6.0), 2.0)
    assert np.flatnonzero(every3.judged(cand)).tolist() == [2, 5, 8, 11, 12, 15, 16]
    assert (Cascade(None, None, CascadeConfig(), 2.0).judged(cand) == cand).all()  # null: every candidate
    q = np.zeros((20, 2))
    q[2], q[5] = [1.0, 0.0], [0.4, 0.6]
    out = interpolate_between(q, np.isin(np.arange(20), [2, 5]), np.isin(np.arange(20), [3, 4]))
    assert np.allclose(out, [[0.8, 0.2], [0.6, 0.4]])
    from hms_core.scanning.config import ScanConfig

    with pytest.raises(ValidationError, match="cascade.stride_s"):
        ScanConfig(stride_s=2.0, cascade={"stride_s": 5.0})
    pp = load_config("tiny").preprocessing
    scanner = Scanner(pp, "v", 4, None, None, Path("pkg"))
    with pytest.raises(FileNotFoundError, match="which engine cascade needs"):
        scanner.choose("cascade")
    # auto: the cascade with a distilled model and ensemble engines, the distilled model alone, else the ensemble
    student, teacher = _ScriptedDistilled(np.zeros(0, int), set()), object()
    auto = Scanner(pp, "v", 4, lambda: teacher, student, Path("pkg")).choose("auto", ScanConfig())
    assert isinstance(auto, Cascade) and auto.distilled is student and auto.teacher is teacher
    assert Scanner(pp, "v", 4, None, student, Path("pkg")).choose("auto") is student
    assert Scanner(pp, "v", 4, lambda: teacher, None, Path("pkg")).choose("auto") is teacher
    own = ScanConfig().events.model_copy(update={"on_threshold": 0.6})
    with_own = ScanConfig(cascade={"events": own.model_dump()})
    assert with_own.events_for("cascade") == own and with_own.events_for("distilled") == with_own.events
    assert ScanConfig().events_for("cascade") == ScanConfig().events  # null: scan.events


def test_chunks_prepared_ahead_by_several_threads_give_the_same_timeline(deployment_package, edf):
    """scan.prepare_ahead worker threads share one reader (under a lock) and may finish out of order; the timeline
    is the one a single worker gives, row for row."""
    from hms_core.export import load_package
    from hms_core.recording import open_recording
    from hms_core.scanning.config import ScanConfig
    from hms_core.scanning.engine import scan_reader
    from hms_core.scanning.predictors import PackageEnsemble

    teacher = PackageEnsemble(load_package(deployment_package))
    tls = []
    for ahead in (1, 3):
        scan = ScanConfig(stride_s=10.0, chunk_s=60.0, prepare_ahead=ahead)  # 4 chunks
        with open_recording(edf) as rec:
            tls.append(scan_reader(rec, teacher, scan, 4)[0])
    one, three = tls
    assert len(one) == len(three) > 15 and one["evaluated"].sum() >= 10
    assert one.drop(columns=list(CLASSES)).equals(three.drop(columns=list(CLASSES)))
    assert np.allclose(one[list(CLASSES)], three[list(CLASSES)], atol=1e-7, equal_nan=True)
