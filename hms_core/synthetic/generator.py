"""Plan, synthesise and write a synthetic data set in the exact Kaggle HMS layout.

Recording model: every ``spectrogram_id`` is a recording session (>= 10 min) of one patient; every ``eeg_id`` is an
excerpt of it (50 s + 2 s per extra sub-window row) whose label windows share their centre with the spectrogram
windows (``spectrogram_label_offset = eeg start + eeg_label_offset - 275 s``). A session carries 1-3 EEGs.

Two stages keep it deterministic, parallel and resumable:

1. :func:`plan_dataset` (cheap, in the calling process) draws patients, sessions, ids, classes, pattern parameters
   and votes. Each session uses its own RNG, ``SeedSequence([seed, 1, session_index])``, so labels never depend on
   ``workers`` nor on which files already exist.
2. :func:`synthesize_session` (in a process pool) renders the session signal from the plan's second seed and
   writes its EEG excerpts and spectrogram atomically; complete sessions are skipped.

``train.csv`` / ``test.csv`` / ``sample_submission.csv`` / ``synthetic_manifest.json`` are written last.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hms_core.config import SyntheticConfig
from hms_core.constants import (
    CLASSES,
    EEG_CHANNELS,
    EEG_FILE_COLUMNS,
    EEG_WINDOW_S,
    LABEL_WINDOW_S,
    SFREQ,
    SPEC_COLUMNS,
    SPEC_ROW_S,
    SPEC_TIME_COLUMN,
    SPEC_WINDOW_S,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    VOTE_COLUMNS,
)
from hms_core.io import atomic_path, write_json, write_text
from hms_core.synthetic import raters
from hms_core.synthetic.artifacts import (
    add_amplifier_artifacts,
    add_artifacts,
    add_disconnections,
    draw_artifact_style,
    ecg,
    line_noise,
)
from hms_core.synthetic.background import background, draw_background_params, voltage_envelope
from hms_core.synthetic.patterns import draw_pattern, render_pattern
from hms_core.synthetic.spatial import CH_INDEX
from hms_core.synthetic.spectrogram import kaggle_spectrogram

#: Class mix of the EEGs over all patients (Other is the largest class, as in the real data).
CLASS_PRIOR = np.array([0.17, 0.14, 0.13, 0.11, 0.13, 0.32])
SUB_WINDOW_P = np.array([0.25, 0.15, 0.12, 0.1, 0.1, 0.1, 0.09, 0.09])  # 1..8 rows per EEG
HALF_CONTEXT_S = (SPEC_WINDOW_S - EEG_WINDOW_S) // 2  # 275 s
LABEL_START_S = (EEG_WINDOW_S - LABEL_WINDOW_S) // 2  # 20 s
VOLTAGE_STATES = ("normal", "low", "suppressed")
GENERATOR_VERSION = 2  # 2: amplifier artifacts (spikes, DC offsets, saturation), real spectrogram names


@dataclass
class EegPlan:
    """One EEG excerpt of a session and its labels (identical votes on every sub-window row)."""

    eeg_id: int
    start_s: int  # start within the session
    n_sub: int
    cls: str
    pattern: dict[str, Any]
    span_s: tuple[float, float]  # pattern extent within the session
    voltage_state: str
    n_raters: int
    difficulty: float
    votes: list[int]
    nan_channel: int | None = None
    label_ids: list[int] = field(default_factory=list)

    @property
    def duration_s(self) -> int:
        return EEG_WINDOW_S + SPEC_ROW_S * (self.n_sub - 1)


@dataclass
class SessionPlan:
    """One recording session (one spectrogram) of one patient."""

    index: int
    split: str  # "train" | "test"
    patient_index: int
    duration_s: int
    background: dict[str, Any]
    style: dict[str, Any]
    eegs: list[EegPlan]
    signal_seed: list[int]
    spectrogram_id: int = 0
    patient_id: int = 0

    @property
    def n_times(self) -> int:
        return self.duration_s * SFREQ


# Planning ------------------------------------------------------------------------------------------------------------
def draw_patient_style(rng: np.random.Generator) -> dict[str, Any]:
    """Patient-level style shared by all of a patient's sessions: background, amplitude, artifacts, class mix."""
    return {
        "beta": float(rng.triangular(1.0, 1.6, 2.5)),
        "rms": float(np.clip(rng.lognormal(np.log(16.0), 0.2), 10.0, 40.0)),
        "neighbour_corr": float(rng.uniform(0.6, 0.88)),
        "alpha_amp": 0.0 if rng.random() < 0.4 else float(rng.uniform(5, 30)),
        "alpha_freq": float(rng.uniform(7.0, 11.0)),
        "beta_amp": float(rng.uniform(0, 10)),
        "voltage_p": rng.dirichlet([8.0, 2.0, 1.0]).tolist(),
        "class_p": rng.dirichlet(CLASS_PRIOR * 4.0).tolist(),
        "rater_noise": float(rng.uniform(0.0, 0.25)),
        "nan_channel_p": float(rng.choice([0.0, 0.08], p=[0.7, 0.3])),
        **draw_artifact_style(rng),
    }


def plan_eeg(
    rng: np.random.Generator,
    cls: str,
    start_s: int,
    n_sub: int,
    style: dict[str, Any],
    bg: dict[str, Any],
    duration_s: int,
    pattern_overrides: dict[str, Any] | None = None,
) -> EegPlan:
    """Latent parameters and votes of one EEG (ids are filled in later)."""
    pattern = draw_pattern(cls, rng)
    pattern.update(pattern_overrides or {})
    length = EEG_WINDOW_S + SPEC_ROW_S * (n_sub - 1)
    lab_a = start_s + LABEL_START_S
    lab_b = start_s + length - LABEL_START_S
    span = (max(0.0, lab_a - float(rng.uniform(5, 40))), min(float(duration_s), lab_b + float(rng.uniform(5, 40))))
    state = pattern.get("voltage_state") or VOLTAGE_STATES[rng.choice(3, p=style["voltage_p"])]
    gain = {"normal": 1.0, "low": 0.47, "suppressed": 0.2, "burst_suppression": 0.5}[state]
    snr = pattern["amp_uv"] / (bg["rms"] * gain) if cls != "Other" else 3.0
    diff = raters.difficulty(rng, pattern["edge"] is not None, snr, style["rater_noise"])
    n_r = raters.draw_n_raters(rng)
    alt_share = 0.6 if pattern["edge"] else (0.25 if pattern["alt"] else 0.0)
    if n_r >= raters.POPULATION_HIGH[0]:
        diff = min(1.0, diff + 0.05)  # the hard cases were the ones sent to many raters
    p = raters.perceived_distribution(cls, diff, pattern["alt"], alt_share)
    votes = raters.draw_votes(rng, n_r, p)
    nan_ch = int(rng.integers(0, len(EEG_CHANNELS))) if rng.random() < style["nan_channel_p"] else None
    return EegPlan(
        eeg_id=0, start_s=start_s, n_sub=n_sub, cls=cls, pattern=pattern, span_s=span, voltage_state=state,
        n_raters=n_r, difficulty=diff, votes=votes.tolist(), nan_channel=nan_ch,
    )  # fmt: skip


def _plan_session(
    index: int, seed: int, split: str, patient_index: int, style: dict[str, Any], classes: list[str]
) -> SessionPlan:
    ss = np.random.SeedSequence([seed, 1, index])
    plan_ss, sig_ss = ss.spawn(2)
    rng = np.random.default_rng(plan_ss)
    bg = draw_background_params(rng, style)
    if split == "test":
        starts, subs, duration = [HALF_CONTEXT_S], [1], SPEC_WINDOW_S
    else:
        subs = [int(rng.choice(8, p=SUB_WINDOW_P)) + 1 for _ in classes]
        starts = [HALF_CONTEXT_S + int(rng.integers(0, 41))]
        for k in range(1, len(classes)):
            starts.append(starts[-1] + EEG_WINDOW_S + 2 * (subs[k - 1] - 1) + int(rng.integers(60, 121)))
        duration = starts[-1] + EEG_WINDOW_S + 2 * (subs[-1] - 1) + HALF_CONTEXT_S + int(rng.integers(0, 21))
        duration += duration % SPEC_ROW_S
    eegs = [plan_eeg(rng, c, s, k, style, bg, duration) for c, s, k in zip(classes, starts, subs)]
    return SessionPlan(
        index=index, split=split, patient_index=patient_index, duration_s=duration, background=bg, style=style,
        eegs=eegs, signal_seed=[int(v) for v in sig_ss.generate_state(4)],
    )  # fmt: skip


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        for v in rng.integers(low, high, size=2 * (n - len(out)) + 8).tolist():
            if v not in taken and len(out) < n:
                taken.add(v)
                out.append(v)
    return out


def plan_dataset(cfg: SyntheticConfig) -> list[SessionPlan]:
    """All sessions (train then test) with ids, latent parameters and votes. Cheap and deterministic."""
    sessions: list[SessionPlan] = []
    lo, hi = cfg.eegs_per_patient
    for p in range(cfg.n_patients):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0, p]))
        style = draw_patient_style(rng)
        n_eegs = int(rng.integers(lo, hi + 1))
        classes: list[str] = []
        for _ in range(n_eegs):
            if classes and rng.random() < 0.5:
                classes.append(classes[-1])  # a patient's EEGs often repeat the same pattern
            else:
                classes.append(CLASSES[rng.choice(len(CLASSES), p=style["class_p"])])
        i = 0
        while i < n_eegs:
            k = int(min(n_eegs - i, rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3])))
            sessions.append(_plan_session(len(sessions), cfg.seed, "train", p, style, classes[i : i + k]))
            i += k
    for j in range(cfg.n_test):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2, j]))
        style = draw_patient_style(rng)
        cls = CLASSES[rng.choice(len(CLASSES), p=style["class_p"])]
        sessions.append(_plan_session(len(sessions), cfg.seed, "test", cfg.n_patients + j, style, [cls]))
    # ids: realistic magnitudes, unique across train and test
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 3]))
    taken: set[int] = set()
    patient_ids = _unique_ints(rng, cfg.n_patients + cfg.n_test, 10_000, 100_000, taken)
    spec_ids = _unique_ints(rng, len(sessions), 100_000, 2_147_483_647, taken)
    n_eegs_total = sum(len(s.eegs) for s in sessions)
    eeg_ids = iter(_unique_ints(rng, n_eegs_total, 100_000_000, 4_294_967_295, taken))
    n_rows = sum(e.n_sub for s in sessions if s.split == "train" for e in s.eegs)
    label_ids = iter(_unique_ints(rng, n_rows, 100_000, 4_294_967_295, taken))
    for s, sid in zip(sessions, spec_ids):
        s.spectrogram_id = sid
        s.patient_id = patient_ids[s.patient_index]
        for e in s.eegs:
            e.eeg_id = next(eeg_ids)
            if s.split == "train":
                e.label_ids = [next(label_ids) for _ in range(e.n_sub)]
    return sessions


# Synthesis -----------------------------------------------------------------------------------------------------------
def _crossfade(n: int, ramp: int) -> np.ndarray:
    i = np.arange(n)
    r = np.clip(np.minimum(i + 1, n - i) / max(ramp, 1), 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * r)).astype(np.float32)


_LEAK_W = {"T3": 1.0, "T5": 0.8, "F7": 0.4, "O1": 0.3, "T4": 0.4, "T6": 0.3}


def render_session(
    plan: SessionPlan, artifacts: bool = True
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Render the session: (eeg (19, n_times) float32 uV, ekg (n_times,) float32 uV, artifact events)."""
    rng = np.random.default_rng(np.random.SeedSequence(plan.signal_seed))
    n = plan.n_times
    style = plan.style
    x = background(rng, n, plan.background)
    gain = np.ones(n, np.float32)
    boosts: list[tuple[int, int, float]] = []
    for e in plan.eegs:
        a, b = int(e.span_s[0] * SFREQ), int(e.span_s[1] * SFREQ)
        if e.voltage_state != "normal":
            env, _ = voltage_envelope(rng, b - a, e.voltage_state)
            fade = _crossfade(b - a, 5 * SFREQ)
            gain[a:b] = gain[a:b] * (1 - fade) + env * fade
        if e.pattern.get("artifact_boost"):
            boosts.append((a, b, float(e.pattern["artifact_boost"])))
    x *= gain
    for e in plan.eegs:
        a, b = int(e.span_s[0] * SFREQ), int(e.span_s[1] * SFREQ)
        x[:, a:b] += render_pattern(e.cls, e.pattern, b - a, rng)
    events: list[dict[str, Any]] = []
    ekg = np.zeros(n, np.float32)
    if artifacts:
        amp_rng = rng.spawn(1)[0]  # a child stream: the artifacts drawn before it came are unchanged by it
        events += add_artifacts(x, rng, style, boosts)
        heart, _ = ecg(rng, n, style["heart_bpm"])
        if style["ekg_present"]:
            ekg += np.float32(style["ekg_uv"]) * heart
        ekg += rng.normal(0.0, 5.0, n).astype(np.float32)
        leak = np.zeros(len(EEG_CHANNELS), np.float32)
        for ch, w in _LEAK_W.items():
            leak[CH_INDEX[ch]] = w * style["ecg_leak_uv"]
        x += leak[:, None] * heart[None, :]
        if style["line_uv"] > 0:
            amps = style["line_uv"] * rng.uniform(0.3, 1.5, len(EEG_CHANNELS) + 1)
            lines = line_noise(n, amps, style["line_120_ratio"])
            x += lines[:-1]
            ekg += lines[-1]
        events += add_amplifier_artifacts(x, amp_rng, style, boosts)
        events += add_disconnections(x, rng, style)
        for e in plan.eegs:
            if e.nan_channel is not None:
                s = e.start_s * SFREQ
                x[e.nan_channel, s : s + e.duration_s * SFREQ] = np.nan
    return x, ekg, events


def _eeg_path(out: Path, split: str, eeg_id: int) -> Path:
    return out / f"{split}_eegs" / f"{eeg_id}.parquet"


def _spec_path(out: Path, split: str, spec_id: int) -> Path:
    return out / f"{split}_spectrograms" / f"{spec_id}.parquet"


def _n_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except (OSError, ValueError):
        return None


def session_complete(plan: SessionPlan, out_dir: str | Path) -> bool:
    """True when every file of the session exists with the planned number of rows."""
    out = Path(out_dir)
    for e in plan.eegs:
        if _n_rows(_eeg_path(out, plan.split, e.eeg_id)) != e.duration_s * SFREQ:
            return False
    return _n_rows(_spec_path(out, plan.split, plan.spectrogram_id)) == plan.duration_s // SPEC_ROW_S


def _write_parquet(target: Path, df: Any) -> None:
    """Atomic parquet write (snappy, like the Kaggle files; random floats barely compress anyway)."""
    with atomic_path(target, suffix=".tmp.parquet") as tmp:
        df.write_parquet(tmp, compression="snappy")


def synthesize_session(plan: SessionPlan, out_dir: str | Path) -> str:
    """Write the session's EEG excerpts and spectrogram (atomically); returns 'written' or 'skipped'."""
    import polars as pl

    out = Path(out_dir)
    if session_complete(plan, out):
        return "skipped"
    x, ekg, _ = render_session(plan)
    for e in plan.eegs:
        a = e.start_s * SFREQ
        b = a + e.duration_s * SFREQ
        data = np.concatenate([x[:, a:b], ekg[None, a:b]]).T  # EEG_CHANNELS then EKG = EEG_FILE_COLUMNS
        df = pl.from_numpy(np.ascontiguousarray(data, dtype=np.float32), schema=list(EEG_FILE_COLUMNS))
        _write_parquet(_eeg_path(out, plan.split, e.eeg_id), df)
    t, power = kaggle_spectrogram(x)
    spec = pl.from_numpy(power, schema=list(SPEC_COLUMNS)).insert_column(0, pl.Series(SPEC_TIME_COLUMN, t))
    _write_parquet(_spec_path(out, plan.split, plan.spectrogram_id), spec)
    return "written"


def _work(args: tuple[SessionPlan, str]) -> tuple[int, str, float]:
    from threadpoolctl import threadpool_limits

    plan, out = args
    t0 = time.process_time()
    # one BLAS thread, in a worker as in the caller's process: a BLAS library may pick another kernel (and another
    # rounding of the float32 channel mixing) for another thread count, and the files must not depend on it
    with threadpool_limits(1, user_api="blas"):
        status = synthesize_session(plan, out)
    return plan.index, status, time.process_time() - t0


# Label tables ----------------------------------------------------------------------------------------------------
def train_rows(sessions: list[SessionPlan]) -> list[dict[str, Any]]:
    """``train.csv`` rows in the Kaggle column order."""
    rows: list[dict[str, Any]] = []
    for s in sessions:
        if s.split != "train":
            continue
        spec_sub = 0
        for e in s.eegs:
            cons = raters.consensus(np.asarray(e.votes))
            for j in range(e.n_sub):
                off = float(SPEC_ROW_S * j)
                rows.append(
                    {
                        "eeg_id": e.eeg_id, "eeg_sub_id": j, "eeg_label_offset_seconds": off,
                        "spectrogram_id": s.spectrogram_id, "spectrogram_sub_id": spec_sub,
                        "spectrogram_label_offset_seconds": float(e.start_s + off - HALF_CONTEXT_S),
                        "label_id": e.label_ids[j], "patient_id": s.patient_id, "expert_consensus": cons,
                        **dict(zip(VOTE_COLUMNS, e.votes)),
                    }
                )  # fmt: skip
                spec_sub += 1
    return rows


def _write_tables(out: Path, sessions: list[SessionPlan]) -> tuple[int, Counter[str]]:
    import polars as pl

    rows = train_rows(sessions)
    schema = {
        c: (pl.Float64 if "offset" in c else pl.Utf8 if c == "expert_consensus" else pl.Int64)
        for c in TRAIN_COLUMNS
    }
    train = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    test = [s for s in sessions if s.split == "test"]
    test_df = pl.DataFrame(
        {"eeg_id": [s.eegs[0].eeg_id for s in test], "spectrogram_id": [s.spectrogram_id for s in test],
         "patient_id": [s.patient_id for s in test]},
        schema={c: pl.Int64 for c in TEST_COLUMNS},
    )  # fmt: skip
    sub = pl.DataFrame({"eeg_id": test_df["eeg_id"]} | {c: [1.0 / len(CLASSES)] * len(test) for c in VOTE_COLUMNS})
    write_text(out / "sample_submission.csv", sub.write_csv())
    write_text(out / "test.csv", test_df.write_csv())
    write_text(out / "train.csv", train.select(list(TRAIN_COLUMNS)).write_csv())
    return len(rows), Counter(train["expert_consensus"].to_list())


# Public API --------------------------------------------------------------------------------------------------------
def generate_dataset(
    out_dir: str | Path, cfg: SyntheticConfig, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Generate (or complete) a synthetic data set in the Kaggle layout under ``out_dir``.

    Identical ``cfg`` (whatever ``workers``) gives identical files. Sessions whose files are complete are skipped;
    the csv tables, then ``synthetic_manifest.json`` with ``complete: true``, are written last (a manifest with
    ``complete: false`` is written first). ``progress(done, total)`` is called as
    sessions (recordings) complete. Returns counts and timings.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # first a manifest saying "not complete" (the folder is a generated one at every instant, so a rerun finishes
    # it and a stale one may be deleted), the full one with complete: true last
    manifest = {"config": cfg.model_dump(mode="json"), "generator_version": GENERATOR_VERSION, "complete": False}
    write_json(out / "synthetic_manifest.json", manifest)
    sessions = plan_dataset(cfg)
    total = len(sessions)
    status: Counter[str] = Counter()
    done, cpu = 0, 0.0
    jobs = [(s, str(out)) for s in sessions]
    if cfg.workers <= 1 or total <= 1:
        for job in jobs:
            _, st, c = _work(job)
            status[st] += 1
            cpu += c
            done += 1
            if progress:
                progress(done, total)
    else:
        # spawn, not fork: forking a process whose polars/BLAS thread pools are running can deadlock
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(cfg.workers, total), mp_context=ctx) as pool:
            futures = [pool.submit(_work, job) for job in jobs]
            for fut in as_completed(futures):
                _, st, c = fut.result()
                status[st] += 1
                cpu += c
                done += 1
                if progress:
                    progress(done, total)
    n_rows, class_counts = _write_tables(out, sessions)
    train = [s for s in sessions if s.split == "train"]
    summary: dict[str, Any] = {
        "n_patients": cfg.n_patients,
        "n_eegs": sum(len(s.eegs) for s in train),
        "n_rows": n_rows,
        "n_spectrograms": len(train),
        "n_test": cfg.n_test,
        "seconds": round(time.perf_counter() - t0, 3),
        "synthesis_cpu_seconds": round(cpu, 3),
        "class_counts": {c: int(class_counts.get(c, 0)) for c in CLASSES},
        "latent_class_counts": {c: sum(e.cls == c for s in train for e in s.eegs) for c in CLASSES},
        "sessions_written": int(status["written"]),
        "sessions_skipped": int(status["skipped"]),
        "recording_hours": round(sum(s.duration_s for s in sessions) / 3600.0, 3),
        "generator_version": GENERATOR_VERSION,
    }
    write_json(out / "synthetic_manifest.json", {**manifest, **summary, "complete": True})
    return summary


def session_latents(sessions: list[SessionPlan]) -> list[dict[str, Any]]:
    """Per-EEG latent parameters (class, difficulty, pattern params) for analysis and tests."""
    return [
        {"eeg_id": e.eeg_id, "patient_id": s.patient_id, "spectrogram_id": s.spectrogram_id, **asdict(e)}
        for s in sessions
        for e in s.eegs
    ]
