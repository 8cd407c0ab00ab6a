"""Continuous-EEG review on long synthetic recordings with known events, scored with the SzCORE rules, and the
scanner's throughput on a 24-h recording.

Recordings come from :func:`hms_core.synthetic.long.write_long_recording` (cached under ``--cache``, default
``runs/bench_scan``, keyed by length, seed and the generator's source; generated in a child process). Three sets,
by seed, so that nothing is tuned on the recordings it is scored on:

- **test** (``--recordings`` x ``--hours``, seeds ``--seed`` ...): scanned with the platform config's event
  settings for the engine (``scan.events``; ``scan.cascade.events`` for the cascade when set) as they are and
  scored per class with ``timescoring`` (SzCORE: any overlap, 30 s before / 60 s after tolerance, events closer
  than 90 s merged, events over 5 min split), counts summed over the recordings:
  event sensitivity, precision, F1, false alarms per 24 h, and sample-based (1 Hz) sensitivity, precision, F1;
- **tuning** (``--tune``: ``--tune-recordings`` x ``--hours``, seeds ``--tune-seed`` ...): scanned once, then a
  grid over the event keys (``smoothing_windows``, ``merge_gap_s``, ``min_duration_s`` shared; ``on`` / ``off``
  per class) picks the settings with the best event F1 on these recordings alone; printed as the
  ``scan.events`` (``scan.cascade.events`` for ``--engine cascade``) YAML to put into the config. ``--tune``
  scores nothing on the test recordings;
- **speed** (``--speed-hours``, default 24, seed ``--speed-seed``): one recording scanned with every output
  written, once per engine of ``--speed-engines`` (distilled, cascade, ensemble), each in a fresh child process:
  wall seconds, CPU seconds (``getrusage``, every thread of the process), peak resident memory (``ru_maxrss``), the
  load average before and after. The distilled and cascade engines scan the whole recording; the ensemble engine
  its first ``--ensemble-hours`` (it is ~100 times slower), and its 24-h time is extrapolated from that (said so
  in the output).

    python -m benchmarks.scan --config demo [--package PATH] [--engine auto] [--hours 3] [--recordings 4]
    python -m benchmarks.scan --config demo --tune            # choose scan.events on the tuning seeds
    python -m benchmarks.scan --truth-only                    # score the truth and perturbed truth
    python -m benchmarks.scan --config demo --speed-only      # only the 24-h throughput

The last line is ``RESULT sz_f1=... sz_sens=... sz_prec=... sz_fa24h=... sz_sample_sens=... sz_sample_prec=...
sz_sample_f1=... <class>_f1/_sens/_prec/_fa24h=... distilled_wall_s=... distilled_cpu_s=... distilled_peak_mb=...
distilled_rtf=... cascade_... cascade_ensemble_share=... ensemble_... distilled_day_sz_f1=... cascade_day_sz_f1=...
distilled_kl_heldout=... distilled_kl_prior=... load=...`` (``<engine>_day_*``: the 24-h recording's seizure
events from that engine's whole run; ``<engine>_all_sz_*`` for the engine the test recordings were scored with:
both test sets together, their counts summed). Goals (issue 15): seizure event F1 >= 0.7; a 24-h recording in
under 60 s on 2 cores (rtf >= 1440) with peak memory under 2 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.scanning.events import EVENT_TYPES

DEFAULT_CACHE = Path("runs/bench_scan")
#: SzCORE event-scoring parameters (timescoring's defaults, spelled out so the benchmark states them).
SZCORE = {"toleranceStart": 30.0, "toleranceEnd": 60.0, "minOverlap": 0.0, "maxEventDuration": 300.0,
          "minDurationBetweenEvents": 90.0}  # fmt: skip
#: The tuning grid: shared keys, then (on, off) per class.
GRID_SHARED = {
    "smoothing_windows": [1, 5, 9, 15],
    "merge_gap_s": [10.0, 30.0],
    "min_duration_s": [10.0, 20.0, 30.0],
}
GRID_ON = [0.2, 0.25, 0.3, 0.4, 0.5, 0.6]
GRID_OFF_RATIO = [0.6, 0.8, 1.0]


# --- scoring --------------------------------------------------------------------------------------------------
def _annotation(events: pd.DataFrame, event_type: str, duration_s: float) -> Any:
    from timescoring.annotations import Annotation

    ev = events[events["eventType"] == event_type].sort_values("onset")  # timescoring's merge needs them sorted
    spans = [(float(o), float(min(o + d, duration_s))) for o, d in zip(ev["onset"], ev["duration"])]
    return Annotation(spans, 1, math.ceil(duration_s))


def score_recording(
    truth: pd.DataFrame, hyp: pd.DataFrame, duration_s: float, event_type: str
) -> dict[str, float]:
    """SzCORE event and sample counts of one class on one recording (tp, fp, ref, and the sample counts)."""
    from timescoring import scoring

    ref, h = _annotation(truth, event_type, duration_s), _annotation(hyp, event_type, duration_s)
    ev = scoring.EventScoring(ref, h, scoring.EventScoring.Parameters(**SZCORE))
    smp = scoring.SampleScoring(ref, h, fs=1)
    return {"tp": float(ev.tp), "fp": float(ev.fp), "ref": float(ev.refTrue), "s_tp": float(smp.tp),
            "s_fp": float(smp.fp), "s_ref": float(smp.refTrue), "hours": duration_s / 3600.0}  # fmt: skip


def aggregate(counts: list[dict[str, float]]) -> dict[str, float]:
    """Sensitivity, precision, F1, false alarms per 24 h (events) and sample sensitivity / precision / F1, over
    all recordings (counts summed first). NaN where undefined (no reference or no detection)."""
    s = {k: sum(c[k] for c in counts) for k in ("tp", "fp", "ref", "s_tp", "s_fp", "s_ref", "hours")}

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    sens, prec = ratio(s["tp"], s["ref"]), ratio(s["tp"], s["tp"] + s["fp"])
    s_sens, s_prec = ratio(s["s_tp"], s["s_ref"]), ratio(s["s_tp"], s["s_tp"] + s["s_fp"])
    return {
        "sens": sens, "prec": prec, "f1": ratio(2 * s["tp"], 2 * s["tp"] + s["fp"] + (s["ref"] - s["tp"])),
        "fa24h": ratio(s["fp"], s["hours"] / 24.0), "n_ref": s["ref"], "n_hyp": s["tp"] + s["fp"], "fp": s["fp"],
        "sample_sens": s_sens, "sample_prec": s_prec,
        "sample_f1": ratio(2 * s["s_tp"], 2 * s["s_tp"] + s["s_fp"] + (s["s_ref"] - s["s_tp"])),
    }  # fmt: skip


def score_all(pairs: list[tuple[pd.DataFrame, pd.DataFrame, float]]) -> dict[str, dict[str, float]]:
    """Per class (eventType), the aggregate over (truth, hypothesis, duration_s) pairs."""
    return {et: aggregate([score_recording(t, h, d, et) for t, h, d in pairs]) for et in EVENT_TYPES.values()}


def perturb(truth: pd.DataFrame, rng: np.random.Generator, shift_s: float = 20.0, drop: float = 0.0,
            add_per_h: float = 0.0, duration_s: float = 3600.0) -> pd.DataFrame:  # fmt: skip
    """Truth with onsets shifted by up to ``shift_s``, a share ``drop`` of events removed and ``add_per_h`` false
    60-s events per hour of every type added (where the truth has none of that type)."""
    t = truth.copy()
    t["onset"] = np.clip(t["onset"] + rng.uniform(-shift_s, shift_s, len(t)), 0.0, None)
    t = t[rng.random(len(t)) >= drop]
    extra = []
    for et in EVENT_TYPES.values():
        own = truth[truth["eventType"] == et]
        for _ in range(rng.poisson(add_per_h * duration_s / 3600.0)):
            o = float(rng.uniform(0, duration_s - 60))
            if ((own["onset"] - 200 < o) & (own["onset"] + own["duration"] + 200 > o)).any():
                continue
            extra.append({"onset": o, "duration": 60.0, "eventType": et})
    if not extra:
        return t.reset_index(drop=True)
    return pd.concat([t, pd.DataFrame(extra)], ignore_index=True)


# --- recordings -----------------------------------------------------------------------------------------------
def _generator_key(hours: float, seed: int) -> str:
    import hms_core.synthetic as syn

    src = "".join(p.read_text() for p in sorted(Path(syn.__file__).parent.glob("*.py")))
    return hashlib.sha256(json.dumps([hours, seed, src]).encode()).hexdigest()[:10]


def _generate(args: tuple[str, float, int]) -> None:
    from hms_core.synthetic.long import write_long_recording

    path, hours, seed = args
    write_long_recording(path, hours, seed)


def recordings(cache: Path, hours: float, seeds: list[int], prefix: str = "sub") -> list[Path]:
    """The benchmark's EDFs for ``seeds`` (generated in a child process when not cached)."""
    paths, todo = [], []
    for seed in seeds:
        p = cache / f"{prefix}-s{seed}-{hours:g}h_{_generator_key(hours, seed)}_eeg.edf"
        paths.append(p)
        if not (p.is_file() and p.with_name(p.name.replace("_eeg.edf", "_events.tsv")).is_file()):
            todo.append((str(p), hours, seed))
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(1) as pool:
            pool.map(_generate, todo)
        print(f"generated {len(todo)} x {hours:g} h in {time.perf_counter() - t0:.1f} s", flush=True)
    return paths


def read_truth(edf: Path) -> pd.DataFrame:
    from hms_core.synthetic.long import truth_path

    return pd.read_csv(truth_path(edf), sep="\t")


def _duration(truth: pd.DataFrame, hours: float) -> float:
    return float(truth["recordingDuration"].iloc[0]) if len(truth) else hours * 3600.0


# --- scanning -------------------------------------------------------------------------------------------------
def _bench_scan_config(platform: Any, engine: str) -> Any:
    # the benchmark's windows are synthetic: keep them out of the workspace's prediction log (monitoring)
    return platform.scan.model_copy(update={"engine": engine, "log_predictions": False})


@dataclass
class Scanned:
    """What scoring needs of a ScanResult (cached between benchmark runs)."""

    name: str
    engine: str
    duration_s: float
    start_datetime: Any
    timeline: pd.DataFrame
    spectrogram: Any
    seconds: float


def _scan_key(edf: Path, scanner: Any, engine: str, scan_cfg: Any) -> str:
    """Cache key of one scan: the recording, the engines (package version, distilled model digest) and every scan
    key but the event ones (events are derived from the timeline afterwards)."""
    pred = scanner.choose(engine, scan_cfg)
    distilled = getattr(pred if pred.kind == "distilled" else getattr(pred, "distilled", None), "path", None)
    digest = (Path(distilled) / "manifest.json").read_text() if distilled else ""
    keys = scan_cfg.model_dump(mode="json", exclude={"events", "log_predictions", "log_stride_s", "log_features"})
    return hashlib.sha256(json.dumps([edf.name, pred.kind, scanner.version, digest, keys]).encode()).hexdigest()[
        :12
    ]


def _cached(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def _save_scanned(done: Scanned, base: Path) -> None:
    """A cached scan as plain files (no pickle): ``<base>.parquet`` (timeline), ``<base>.npz`` (spectrogram),
    ``<base>.json`` (the rest), the JSON written last so that its presence means the others are whole."""
    base.parent.mkdir(parents=True, exist_ok=True)
    done.timeline.to_parquet(_cached(base, ".parquet"))
    if done.spectrogram is not None:
        sp = done.spectrogram
        np.savez(_cached(base, ".npz"), times_s=sp.times_s, freqs_hz=sp.freqs_hz, power=sp.power)
    start = done.start_datetime.isoformat() if done.start_datetime is not None else None
    meta = {"name": done.name, "engine": done.engine, "duration_s": done.duration_s, "start_datetime": start,
            "seconds": done.seconds, "spectrogram": done.spectrogram is not None}  # fmt: skip
    _cached(base, ".json").write_text(json.dumps(meta))


def _load_scanned(base: Path) -> Scanned:
    import datetime as dt

    from hms_core.scanning.plots import HemisphereSpectrogram

    meta = json.loads(_cached(base, ".json").read_text())
    spectrogram = None
    if meta["spectrogram"]:
        with np.load(_cached(base, ".npz"), allow_pickle=False) as z:
            spectrogram = HemisphereSpectrogram(times_s=z["times_s"], freqs_hz=z["freqs_hz"], power=z["power"])
    start = dt.datetime.fromisoformat(meta["start_datetime"]) if meta["start_datetime"] else None
    return Scanned(meta["name"], meta["engine"], meta["duration_s"], start,
                   pd.read_parquet(_cached(base, ".parquet")), spectrogram, meta["seconds"])  # fmt: skip


def scan_set(edfs: list[Path], platform: Any, package: str | None, engine: str, out: Path | None,
             cache: Path | None = None) -> list[Scanned]:  # fmt: skip
    """The scans of ``edfs`` (outputs written under ``out/<stem>`` when given; reused from ``cache`` when the same
    recording was scanned by the same engines with the same scan keys)."""
    from hms_core.scanning.engine import load_scanner, scan_recording

    scan_cfg = _bench_scan_config(platform, engine)
    scanner = load_scanner(package, scan_cfg, platform)
    results = []
    for edf in edfs:
        hit = cache / f"{edf.stem}-{_scan_key(edf, scanner, engine, scan_cfg)}" if cache else None
        if hit is not None and _cached(hit, ".json").is_file() and out is None:
            results.append(_load_scanned(hit))
            print(f"{edf.name}: scan reused from {hit}", flush=True)
            continue
        res = scan_recording(edf, None, scan_cfg, out / edf.stem if out else None, platform=platform,
                             scanner=scanner)  # fmt: skip
        print(f"{edf.name}: {res.duration_s / 3600:.2f} h, engine {res.engine}, {res.seconds:.1f} s, "
              f"{res.n_evaluated}/{res.n_windows} windows evaluated", flush=True)  # fmt: skip
        done = Scanned(edf.name, res.engine, res.duration_s, res.start_datetime, res.timeline, res.spectrogram,
                       res.seconds)  # fmt: skip
        if hit is not None:
            _save_scanned(done, hit)
        results.append(done)
    return results


def hypotheses(results: list[Any], events_cfg: Any) -> list[pd.DataFrame]:
    from hms_core.scanning.events import detect_events

    return [detect_events(r.timeline, events_cfg, recording_duration_s=r.duration_s,
                          start_datetime=r.start_datetime, spectrogram=r.spectrogram) for r in results]  # fmt: skip


def tune_events(results: list[Any], truths: list[pd.DataFrame], base: Any) -> tuple[Any, dict[str, Any]]:
    """The event config with the best event F1 on these (tuning) recordings: the shared keys by the mean F1 over
    the classes present, each class's (on, off) by its own F1 (ties: fewer false alarms, then the default)."""
    from hms_core.scanning.events import ClassThresholds, detect_class_events

    present = [c for c, et in EVENT_TYPES.items() if any((t["eventType"] == et).any() for t in truths)]
    durations = [r.duration_s for r in results]
    tls = [r.timeline for r in results]
    best_shared, best_total, table = None, -1.0, {}
    for values in itertools.product(*GRID_SHARED.values()):
        shared = dict(zip(GRID_SHARED, values))
        per_class, total = {}, 0.0
        for cls in present:
            et = EVENT_TYPES[cls]
            best = None
            for on, ratio in itertools.product(GRID_ON, GRID_OFF_RATIO):
                cfg = base.model_copy(update={**shared, "class_thresholds": {}, "on_threshold": on,
                                              "off_threshold": round(on * ratio, 3)})  # fmt: skip
                hyps = []
                for tl, d in zip(tls, durations):
                    ev = detect_class_events(tl, cls, cfg)
                    hyps.append(pd.DataFrame({"onset": ev["start_s"], "duration": ev["end_s"] - ev["start_s"],
                                              "eventType": et}))  # fmt: skip
                agg = aggregate([score_recording(t, h, d, et) for t, h, d in zip(truths, hyps, durations)])
                key = (0.0 if not np.isfinite(agg["f1"]) else agg["f1"], -agg["fp"])
                if best is None or key > best[0]:
                    best = (key, on, round(on * ratio, 3), agg)
            per_class[cls] = best
            total += best[0][0]
        table[json.dumps(shared)] = round(total / max(len(present), 1), 4)
        if total > best_total:
            best_total, best_shared = total, (shared, per_class)
    shared, per_class = best_shared
    thresholds = {c: ClassThresholds(on=v[1], off=v[2]) for c, v in per_class.items()}
    chosen = base.model_copy(update={**shared, "class_thresholds": thresholds})
    info = {"shared": shared, "per_class": {c: {"on": v[1], "off": v[2], "f1": round(v[0][0], 4)}
                                            for c, v in per_class.items()},
            "mean_f1_by_shared": table}  # fmt: skip
    return chosen, info


# --- throughput (child processes) -----------------------------------------------------------------------------
def _speed_child(args: dict[str, Any], out: Any) -> None:
    """One engine on one recording in a fresh process; puts wall, CPU and peak memory on ``out``."""
    try:
        out.put(_speed_run(**args))
    except Exception as e:  # noqa: BLE001 - reported to the parent (which raises it) rather than hanging it
        out.put({"error": f"{type(e).__name__}: {e}"})


def _speed_run(config: str | None, package: str | None, engine: str, edf: str, limit_s: float | None,
               out: str, prepare_ahead: int | None = None) -> dict[str, Any]:  # fmt: skip
    t_start = time.perf_counter()
    from hms_core.config import load_config
    from hms_core.scanning.engine import load_scanner, scan_recording

    platform = load_config(config)
    scan_cfg = _bench_scan_config(platform, engine)
    if prepare_ahead is not None:
        scan_cfg = scan_cfg.model_copy(update={"prepare_ahead": prepare_ahead})
    scanner = load_scanner(package, scan_cfg, platform)
    predictor = scanner.choose(engine, scan_cfg)
    teacher = getattr(predictor, "teacher", predictor)
    if hasattr(teacher, "pkg"):  # open every engine session before the clock starts (as a service would)
        teacher.pkg.warm_up(scan_cfg.precision)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = scan_recording(edf, None, scan_cfg, out, platform=platform, scanner=scanner, limit_s=limit_s)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"engine": res.engine, "recording_s": res.duration_s, "windows": res.n_windows,
            "evaluated": res.n_evaluated, "wall_s": wall, "cpu_s": cpu,
            "process_cpu_s": r1.ru_utime + r1.ru_stime, "process_wall_s": time.perf_counter() - t_start,
            "peak_mb": r1.ru_maxrss / 1024.0, "scan_seconds": res.seconds,
            "ensemble_share": res.n_ensemble / max(res.n_evaluated, 1)}  # fmt: skip


def speed(config: str | None, package: str | None, engine: str, edf: Path, limit_s: float | None,
          out: Path, prepare_ahead: int | None = None) -> dict[str, Any]:  # fmt: skip
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    load0 = os.getloadavg()[0]
    p = ctx.Process(target=_speed_child, args=({"config": config, "package": package, "engine": engine,
                                                "edf": str(edf), "limit_s": limit_s, "out": str(out),
                                                "prepare_ahead": prepare_ahead}, q))  # fmt: skip
    p.start()
    while True:
        try:
            r = q.get(timeout=5.0)
            break
        except queue.Empty:
            if not p.is_alive():  # killed (e.g. out of memory) before it could report
                raise RuntimeError(f"speed run of engine {engine} died with exit code {p.exitcode}") from None
    p.join()
    if "error" in r:
        raise RuntimeError(f"speed run of engine {engine} failed: {r['error']}")
    r["load_before"], r["load_after"] = load0, os.getloadavg()[0]
    scale = 86400.0 / r["recording_s"]
    r |= {"rtf": r["recording_s"] / r["wall_s"], "rtf_cpu": r["recording_s"] / r["cpu_s"],
          "wall_s_24h": r["wall_s"] * scale, "cpu_s_24h": r["cpu_s"] * scale,
          "extrapolated": r["recording_s"] < 86400.0 - 1}  # fmt: skip
    return r


# --- output ---------------------------------------------------------------------------------------------------
def distilled_agreement(platform: Any, package: str | None) -> dict[str, float]:
    """The distilled scanning model's agreement with the ensemble on its held-out windows (``distill.json``): mean
    KL(ensemble || distilled) beside a constant prior's, and the top-class agreement; empty without one."""
    from hms_core.scanning.engine import load_scanner

    distilled = load_scanner(package, platform.scan, platform).distilled
    if distilled is None:
        return {}
    m = distilled.meta["metrics"]
    return {"distilled_kl_heldout": float(m["kl_heldout"]), "distilled_kl_prior": float(m["kl_heldout_constant_prior"]),
            "distilled_top1_heldout": float(m["top1_agreement_heldout"])}  # fmt: skip


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def result_line(scores: dict[str, dict[str, float]] | None, extra: dict[str, Any]) -> str:
    kv: dict[str, Any] = {}
    if scores is not None:
        sz = scores["sz"]
        kv.update(sz_f1=sz["f1"], sz_sens=sz["sens"], sz_prec=sz["prec"], sz_fa24h=sz["fa24h"],
                  sz_sample_sens=sz["sample_sens"], sz_sample_prec=sz["sample_prec"],
                  sz_sample_f1=sz["sample_f1"], sz_n=int(sz["n_ref"]))  # fmt: skip
        for et, s in scores.items():
            if et != "sz":
                kv.update({f"{et}_f1": s["f1"], f"{et}_sens": s["sens"], f"{et}_prec": s["prec"],
                           f"{et}_fa24h": s["fa24h"], f"{et}_n": int(s["n_ref"])})  # fmt: skip
    kv.update(extra)
    return "RESULT " + " ".join(f"{k}={_fmt(v)}" for k, v in kv.items())


def _print_table(scores: dict[str, dict[str, float]]) -> None:
    print(pd.DataFrame(scores).T.round(3).to_string(), flush=True)


def _events_yaml(cfg: Any, engine: str) -> str:
    """The event settings as the config's YAML: ``scan.cascade.events`` for the cascade, else ``scan.events``."""
    import yaml

    d = cfg.model_dump(mode="json")
    return yaml.safe_dump({"scan": {"cascade": {"events": d}} if engine == "cascade" else {"events": d}},
                          sort_keys=False)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from hms_core.scanning.engine import ENGINES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=3.0, help="length of each test / tuning recording (h)")
    ap.add_argument("--recordings", type=int, default=4, help="test recordings")
    ap.add_argument("--seed", type=int, default=100, help="first test seed")
    ap.add_argument("--tune", action="store_true", help="choose scan.events on the tuning recordings, print them")
    ap.add_argument("--tune-recordings", type=int, default=24, help="tuning recordings (seeds --tune-seed ...)")
    ap.add_argument("--tune-seed", type=int, default=200, help="first tuning seed (never a test seed)")
    ap.add_argument("--speed-hours", type=float, default=24.0, help="0 = no throughput runs")
    ap.add_argument("--speed-seed", type=int, default=1)
    ap.add_argument(
        "--ensemble-hours", type=float, default=0.5, help="hours the ensemble engine's speed run scans"
    )
    ap.add_argument(
        "--speed-engines",
        default="distilled,cascade,ensemble",
        help="comma-separated engines of the throughput runs (ensemble: its first --ensemble-hours)",
    )
    ap.add_argument(
        "--ab-prepare-ahead",
        action="store_true",
        help="also the distilled 24-h scan with 1 worker thread against scan.prepare_ahead, interleaved",
    )
    ap.add_argument("--ab-repeats", type=int, default=2)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--config", default=None, help="platform profile/path whose workspace holds the models")
    ap.add_argument("--package", default=None, help="deployment package folder (default: the workspace's newest)")
    ap.add_argument("--engine", default="auto", choices=["auto", *ENGINES], help="for the scores")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=None, help="write each recording's scan outputs here")
    ap.add_argument("--truth-only", action="store_true", help="score truth and perturbed truth, no scan")
    a = ap.parse_args(argv)
    test_seeds = list(range(a.seed, a.seed + a.recordings))
    tune_seeds = list(range(a.tune_seed, a.tune_seed + a.tune_recordings))
    if set(test_seeds) & set(tune_seeds):
        ap.error(f"tuning seeds {tune_seeds} overlap the test seeds {test_seeds}")
    if a.truth_only:
        edfs = recordings(a.cache, a.hours, test_seeds)
        truths = [read_truth(p) for p in edfs]
        durations = [_duration(t, a.hours) for t in truths]
        rng = np.random.default_rng(a.seed)
        for name, kw in {"truth": {"shift_s": 0.0}, "shifted_20s": {}, "drop_half": {"drop": 0.5},
                         "false_2_per_h": {"add_per_h": 2.0}}.items():  # fmt: skip
            pairs = [(t, perturb(t, rng, duration_s=d, **kw), d) for t, d in zip(truths, durations)]
            scores = score_all(pairs)
            print(f"-- {name}")
            _print_table(scores)
        print(result_line(scores, {"hours": a.hours, "recordings": a.recordings, "engine": "truth"}), flush=True)
        return 0
    from hms_core.config import load_config

    platform = load_config(a.config)
    if a.tune:
        edfs = recordings(a.cache, a.hours, tune_seeds, prefix="tune")
        truths = [read_truth(p) for p in edfs]
        results = scan_set(edfs, platform, a.package, a.engine, None, a.cache / "scans")
        events = platform.scan.events_for(results[0].engine)
        before = score_all(list(zip(truths, hypotheses(results, events),
                                    [r.duration_s for r in results])))  # fmt: skip
        print("-- tuning recordings, the config's event settings for the engine")
        _print_table(before)
        chosen, info = tune_events(results, truths, events)
        after = score_all(list(zip(truths, hypotheses(results, chosen), [r.duration_s for r in results])))
        print("-- tuning recordings, the chosen event settings")
        _print_table(after)
        print(json.dumps(info, indent=1))
        print(_events_yaml(chosen, results[0].engine))
        print(result_line(after, {"set": "tuning", "seeds": ",".join(map(str, tune_seeds)), "hours": a.hours,
                                  "engine": results[0].engine}), flush=True)  # fmt: skip
        return 0
    extra: dict[str, Any] = {}
    scores = None
    test_pairs: list[tuple[pd.DataFrame, pd.DataFrame, float]] = []
    if not a.speed_only:
        edfs = recordings(a.cache, a.hours, test_seeds)
        truths = [read_truth(p) for p in edfs]
        results = scan_set(edfs, platform, a.package, a.engine, a.out, a.cache / "scans")
        events = platform.scan.events_for(results[0].engine)
        test_pairs = list(zip(truths, hypotheses(results, events), [r.duration_s for r in results]))
        scores = score_all(test_pairs)
        print(f"-- test recordings (seeds {test_seeds}, {a.hours:g} h each), the engine's event settings")
        _print_table(scores)
        extra |= {"engine": results[0].engine, "seeds": f"{test_seeds[0]}-{test_seeds[-1]}", "hours": a.hours,
                  "recordings": a.recordings}  # fmt: skip
    if a.speed_hours > 0:
        (edf,) = recordings(a.cache, a.speed_hours, [a.speed_seed], prefix="speed")
        runs = {}
        out_root = a.cache / "speed_out"
        for engine in a.speed_engines.split(","):
            limit = a.ensemble_hours * 3600.0 if engine == "ensemble" else None
            r = speed(a.config, a.package, engine, edf, limit, out_root / engine)
            runs[engine] = r
            print(f"speed {engine}: {r['recording_s'] / 3600:.2f} h of {edf.name}, {r['windows']} windows, wall "
                  f"{r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s (whole process {r['process_cpu_s']:.1f} s CPU, "
                  f"{r['process_wall_s']:.1f} s wall), peak {r['peak_mb']:.0f} MB, load {r['load_before']:.1f} -> "
                  f"{r['load_after']:.1f}; per 24 h: wall {r['wall_s_24h']:.0f} s, CPU {r['cpu_s_24h']:.0f} s"
                  + (" (extrapolated)" if r["extrapolated"] else "")
                  + (f", {r['ensemble_share']:.1%} of windows judged by the ensemble" if engine == "cascade" else ""),
                  flush=True)  # fmt: skip
        for engine, r in runs.items():
            extra |= {f"{engine}_hours": r["recording_s"] / 3600.0, f"{engine}_wall_s": r["wall_s"],
                      f"{engine}_cpu_s": r["cpu_s"], f"{engine}_cpu_s_24h": r["cpu_s_24h"],
                      f"{engine}_peak_mb": r["peak_mb"], f"{engine}_rtf": r["rtf"],
                      f"{engine}_rtf_cpu": r["rtf_cpu"]}  # fmt: skip
            if engine == "cascade":
                extra["cascade_ensemble_share"] = r["ensemble_share"]
            if r["extrapolated"]:
                continue
            # the 24-h recording is one more test recording (seed --speed-seed, never tuned on): each whole run's
            # events.tsv scored like the others
            day_pair = (read_truth(edf), pd.read_csv(out_root / engine / "events.tsv", sep="\t"), r["recording_s"])
            day = score_all([day_pair])
            print(f"-- the {a.speed_hours:g}-h recording (seed {a.speed_seed}), {engine} engine")
            _print_table(day)
            extra |= {f"{engine}_day_sz_{k}": day["sz"][k] for k in ("f1", "sens", "prec", "fa24h")}
            extra[f"{engine}_day_sz_n"] = int(day["sz"]["n_ref"])
            if test_pairs and engine == extra.get("engine"):  # both test sets, counts summed (neither tuned on)
                both = score_all([*test_pairs, day_pair])["sz"]
                extra |= {f"{engine}_all_sz_{k}": both[k] for k in ("f1", "sens", "prec", "fa24h")}
                extra[f"{engine}_all_sz_n"] = int(both["n_ref"])
        if a.ab_prepare_ahead:  # worker threads preparing chunks ahead: 1 against the config's, interleaved
            base, ours = {}, {}
            for _ in range(a.ab_repeats):
                for k, store in ((1, base), (platform.scan.prepare_ahead, ours)):
                    r = speed(a.config, a.package, "distilled", edf, None, out_root / f"ab{k}", k)
                    store.setdefault("wall", []).append(r["wall_s"])
                    store.setdefault("cpu", []).append(r["cpu_s"])
                    store.setdefault("peak", []).append(r["peak_mb"])
                    print(f"prepare_ahead {k}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, peak "
                          f"{r['peak_mb']:.0f} MB", flush=True)  # fmt: skip
            med = {n: {k: float(np.median(v)) for k, v in d.items()} for n, d in (("base", base), ("ours", ours))}
            extra |= {"ab_prepare_ahead": platform.scan.prepare_ahead, "ab_pa1_wall_s": med["base"]["wall"],
                      "ab_pa_wall_s": med["ours"]["wall"], "ab_pa_speedup": med["base"]["wall"] / med["ours"]["wall"],
                      "ab_pa1_cpu_s": med["base"]["cpu"], "ab_pa_cpu_s": med["ours"]["cpu"],
                      "ab_pa1_peak_mb": med["base"]["peak"], "ab_pa_peak_mb": med["ours"]["peak"]}  # fmt: skip
        if "distilled" in runs and "ensemble" in runs:
            extra["rtf_ratio"] = runs["distilled"]["rtf_cpu"] / runs["ensemble"]["rtf_cpu"]
        extra["load"] = max(max(r["load_before"], r["load_after"]) for r in runs.values())
    extra |= distilled_agreement(platform, a.package)
    print(result_line(scores, extra), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
