"""Preprocessing throughput and memory benchmark (not a timed test).

    python -m benchmarks.preprocess [--sizes 200 400 800] [--n-ref 100] [--batch-size 100] [--workers 2]
                                    [--baseline GIT_REV]

Generates realistic 60-s HMS-format records (1/f background with spatial mixing, posterior alpha, occasional
periodic discharges, 60-Hz line noise, an EKG column), then measures on the same records:

* our pipeline (:func:`hms_core.partition.build_partition`: read parquet, NaN handling, artifacts, band-pass +
  notch, montage, clipping, robust scaling, spectrograms, features, streaming writes) against a like-for-like
  straightforward reference computing the same outputs one record at a time (pandas read, NaN interpolation,
  ``mne.filter.filter_data`` + ``notch_filter``, bipolar montage, per-derivation ``scipy.signal.spectrogram``,
  DPSS multitaper, ``pywt.cwt``, mel via a scipy STFT and a mel filter bank, the main features with
  ``scipy.signal.welch``/numpy, median/IQR scaling, chain averages), twice: with all four spectrogram types
  ("full") and with the core set STFT + mel ("core"); records/s of both and their ratios, measured side by side;
* records/s of the core steps alone (filter, montage, scaling, STFT, mel, features), from the pipeline's
  per-step timings;
* the cost of each spectrogram type alone (records/s on one in-memory batch);
* records/s and peak resident memory (whole process tree, each size in a fresh process) at three
  dataset sizes with all four spectrogram types, to show linear time and constant memory;
* with ``--baseline REV``: the same full build with ``hms_core`` as it was at git revision ``REV`` (extracted with
  ``git archive`` and put first on the child's ``sys.path``), alternated with ours (A B A B) in fresh processes on
  the same records, so a change is measured side by side in one run.

The last line printed is ``RESULT key=value ...``. Besides wall-clock records/s it reports records per CPU-second
(CPU time of every thread of the benchmark's child process, ``time.process_time``, plus the partition builder's
worker processes' CPU time on the batches, the manifest's ``worker_cpu_seconds``) and CPU milliseconds per record,
which stay meaningful when other jobs share the cores; ``cpu_bound_rps_2cores`` is 2 x records per CPU-second:
the wall rate on 2 cores that nothing else uses (the workers keep both busy).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hms_core.config import PreprocessingConfig
from hms_core.constants import EEG_CHANNELS, EEG_FILE_COLUMNS, EEG_WINDOW_SAMPLES, SFREQ, VOTE_COLUMNS
from hms_core.signal import bipolar_index

RECORD_S = 60
OFFSETS = (0.0, 5.0, 10.0)


# --- data -----------------------------------------------------------------------------------------------------
def make_record(rng: np.random.Generator, seconds: int = RECORD_S) -> np.ndarray:
    """One realistic record (n_times, 20) in EEG_FILE_COLUMNS order, microvolts at 200 Hz."""
    n = seconds * SFREQ
    t = np.arange(n) / SFREQ
    f = np.fft.rfftfreq(n, 1 / SFREQ)
    f[0] = f[1]
    spec = (rng.normal(size=(8, f.size)) + 1j * rng.normal(size=(8, f.size))) / f ** rng.uniform(0.8, 1.2)
    sources = np.fft.irfft(spec, n)
    sources /= sources.std(-1, keepdims=True)
    mix = rng.normal(0, 1, (19, 8)) + 2 * np.eye(19, 8)
    eeg = 20 * (mix @ sources) / np.sqrt(8)
    posterior = np.array([ch in ("O1", "O2", "P3", "P4", "Pz", "T5", "T6") for ch in EEG_CHANNELS])
    eeg[posterior] += rng.uniform(5, 25) * np.sin(2 * np.pi * rng.uniform(8, 12) * t + rng.uniform(0, 6))
    if rng.random() < 0.3:  # periodic discharges over one hemisphere
        side = np.array([ch[-1] in "13579" for ch in EEG_CHANNELS])
        rate = rng.uniform(0.7, 2.5)
        k = np.arange(-20, 21)
        wave = 100 * (np.exp(-((k / 4.0) ** 2)) - 0.5 * np.exp(-(((k - 8) / 6.0) ** 2)))
        for s in np.arange(30, n - 30, int(SFREQ / rate)):
            eeg[side, s - 20 : s + 21] += wave
    eeg += 3 * np.sin(2 * np.pi * 60 * t)  # line noise
    ekg = np.zeros(n)
    ekg[np.arange(0, n, int(SFREQ / rng.uniform(1.0, 1.6)))] = 800
    ekg = np.convolve(ekg, np.hanning(15), "same") + rng.normal(0, 10, n)
    out = np.concatenate([eeg, ekg[None]]).T.astype(np.float32)
    if rng.random() < 0.1:
        out[rng.integers(0, n - 400) :][:300, rng.integers(0, 19)] = np.nan
    return out


def write_records(folder: Path, n_files: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        pd.DataFrame(make_record(rng), columns=list(EEG_FILE_COLUMNS)).to_parquet(folder / f"{i}.parquet")


def make_rows(n_rows: int, n_files: int) -> pd.DataFrame:
    """Label rows like the labels asset's: each file gives up to 3 windows (offsets 0, 5, 10 s)."""
    i = np.arange(n_rows)
    eeg_id = i % n_files
    off = np.array(OFFSETS)[(i // n_files) % len(OFFSETS)]
    df = pd.DataFrame({"eeg_id": eeg_id, "eeg_sub_id": (i // n_files), "eeg_label_offset_seconds": off,
                       "spectrogram_id": eeg_id, "spectrogram_label_offset_seconds": off, "label_id": i,
                       "patient_id": eeg_id // 4, "expert_consensus": "Other"})  # fmt: skip
    for c in VOTE_COLUMNS:
        df[c] = 1
    df["total_votes"] = len(VOTE_COLUMNS)
    df["fold"] = 0
    return df


# --- reference --------------------------------------------------------------------------------------------------
CORE_SPECS = ("stft", "mel")
ALL_SPECS = ("stft", "multitaper", "wavelet", "mel")


def _ref_features(ch: np.ndarray, sfreq: float) -> list[float]:
    """The main per-derivation features, written the straightforward way (scipy.signal.welch + numpy)."""
    import scipy.signal as ss
    import scipy.stats as st

    f, p = ss.welch(ch, sfreq, nperseg=256, nfft=512)
    band = (f >= 0.5) & (f <= 50)
    total = p[band].sum() + 1e-12
    out = []
    for lo, hi in ((0.5, 4), (4, 8), (8, 13), (13, 30), (30, 50)):
        bp = p[(f >= lo) & (f < hi)].sum()
        out += [bp, bp / total]
    pn = p[band] / total
    fb = f[band]
    centroid = (fb * pn).sum()
    out += [centroid, np.sqrt(((fb - centroid) ** 2 * pn).sum()), -(pn * np.log(pn + 1e-12)).sum(),
            fb[np.searchsorted(np.cumsum(pn), 0.95)]]  # fmt: skip
    d1, d2 = np.diff(ch), np.diff(ch, 2)
    activity = ch.var()
    mobility = np.sqrt(d1.var() / (activity + 1e-12))
    out += [activity, mobility, np.sqrt(d2.var() / (d1.var() + 1e-12)) / (mobility + 1e-12),
            np.abs(d1).sum(), st.kurtosis(ch), ((ch[:-1] * ch[1:]) < 0).sum()]  # fmt: skip
    ac = np.correlate(ch - ch.mean(), ch - ch.mean(), "full")[len(ch) - 1 :]
    lags = slice(int(sfreq / 3), int(sfreq * 2))
    out.append(sfreq / (lags.start + int(np.argmax(ac[lags]))))
    return out


def reference_pipeline(rows: pd.DataFrame, eeg_dir: Path, specs: tuple[str, ...] = ALL_SPECS) -> int:
    """The same outputs as our pipeline, computed the straightforward way: one record at a time, MNE filters,
    then per derivation in Python loops: scipy STFT, DPSS multitaper, ``pywt.cwt`` (FFT method), mel from a scipy
    STFT and a mel filter bank, and the main features; chain averages and log-normalisation per record."""
    import mne
    import pywt
    import scipy.signal as ss
    import torchaudio.functional as AF

    cfg = PreprocessingConfig().spectrogram
    a, b = bipolar_index(False)
    hop = cfg.window_size - cfg.overlap
    tapers = ss.windows.dpss(cfg.window_size, 2.0, cfg.n_tapers)
    mel_fb = AF.melscale_fbanks(cfg.mel_nfft // 2 + 1, cfg.freq_min, cfg.freq_max, cfg.n_mels, SFREQ,
                                norm="slaney", mel_scale="htk").numpy()  # fmt: skip
    wfreqs = np.geomspace(max(cfg.freq_min, 0.25), cfg.freq_max, cfg.n_wavelet_freqs)
    scales = pywt.frequency2scale(cfg.wavelet, wfreqs / SFREQ)
    n = 0
    for eeg_id, off in zip(rows["eeg_id"], rows["eeg_label_offset_seconds"]):
        df = pd.read_parquet(eeg_dir / f"{eeg_id}.parquet")
        start = int(off * SFREQ)
        x = df.iloc[start : start + EEG_WINDOW_SAMPLES].to_numpy().T.astype(np.float64)
        for ch in x:  # NaN gaps: linear interpolation per channel
            bad = np.isnan(ch)
            if bad.any() and not bad.all():
                ch[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), ch[~bad])
        x = np.nan_to_num(x)
        x = mne.filter.filter_data(
            x,
            SFREQ,
            0.5,
            50.0,
            method="iir",
            iir_params={"order": 4, "ftype": "butter", "output": "sos"},
            verbose=False,
        )
        x = mne.filter.notch_filter(x, SFREQ, 60.0, method="iir", verbose=False)
        bip = [np.clip(x[i] - x[j], -500, 500) for i, j in zip(a, b)]
        powers: dict[str, list[np.ndarray]] = {k: [] for k in specs}
        feats = []
        for ch in bip:
            seg = ch[4000:6000]
            if "stft" in specs:
                powers["stft"].append(ss.spectrogram(seg, SFREQ, nperseg=cfg.window_size, noverlap=cfg.overlap,
                                                     nfft=cfg.nfft)[2])  # fmt: skip
            if "multitaper" in specs:
                powers["multitaper"].append(np.mean([ss.spectrogram(seg, SFREQ, window=t, nperseg=cfg.window_size,
                                                                    noverlap=cfg.overlap, nfft=cfg.nfft)[2]
                                                     for t in tapers], axis=0))  # fmt: skip
            if "wavelet" in specs:
                coef, _ = pywt.cwt(seg, scales, cfg.wavelet, sampling_period=1 / SFREQ, method="fft")
                pw = np.abs(coef) ** 2
                powers["wavelet"].append(pw[:, : pw.shape[1] // hop * hop].reshape(len(scales), -1, hop).mean(-1))
            if "mel" in specs:
                spec = ss.spectrogram(
                    seg, SFREQ, nperseg=cfg.window_size, noverlap=cfg.overlap, nfft=cfg.mel_nfft
                )[2]
                powers["mel"].append(mel_fb.T @ spec)
            feats.append(_ref_features(seg, SFREQ))
            q25, q50, q75 = np.percentile(ch, [25, 50, 75])
            _ = (ch - q50) / max(q75 - q25, 1e-3)
        for chans in powers.values():
            chains = np.stack(chans).reshape(4, 4, *chans[0].shape).mean(1)
            lp = np.log(chains + 1e-6)
            _ = (lp - lp.mean()) / lp.std()
        n += 1
    return n


# --- ours -------------------------------------------------------------------------------------------------------
def core_config(workers: int, specs: tuple[str, ...] = CORE_SPECS) -> PreprocessingConfig:
    cfg = PreprocessingConfig()
    cfg.workers = workers
    cfg.spectrogram.types = list(specs)
    cfg.spectrogram.use_kaggle_spectrograms = False
    return cfg


def _run_size(args: tuple, queue: mp.Queue) -> None:
    n_rows, n_files, eeg_dir, out_dir, batch, workers, *rest = args
    specs = tuple(rest[0]) if rest else CORE_SPECS
    from hms_core.partition import build_partition

    rows = make_rows(n_rows, n_files)
    # warm-up on other rows, not timed: in this process (imports, filter design, mel filter bank, Morlet plan: a
    # partition of one batch is built here) and, with worker processes, in the workers (the fork server's one-off
    # start, ~1 s of imports once per process, e.g. per Dagster step)
    for w in sorted({1, workers}):
        warm = Path(out_dir + "_warm")
        build_partition(make_rows(2 * w, n_files), Path(eeg_dir), None, warm, core_config(w, specs), 1)
        shutil.rmtree(warm, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    m = build_partition(rows, Path(eeg_dir), None, Path(out_dir), core_config(workers, specs), batch)
    import hms_core

    # CPU: this process's threads plus the worker processes' time on the batches (the manifest's
    # worker_cpu_seconds; revisions without worker processes have none)
    cpu = time.process_time() - c0 + getattr(m, "worker_cpu_seconds", 0.0)
    queue.put({"n": n_rows, "seconds": time.perf_counter() - t0, "cpu_seconds": cpu,
               "steps": m.step_seconds, "bytes": m.total_bytes, "code": str(Path(hms_core.__file__).parent),
               "torch_imported": "torch" in sys.modules})  # fmt: skip


def _tree_rss_kb(pid: int) -> int:
    """Resident memory (VmRSS) of a process and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


def run_in_fresh_process(args: tuple, code_root: Path | None = None) -> dict:
    """Run one partition build in a fresh process; sample the RSS of its process tree every 20 ms. With
    ``code_root`` the child imports ``hms_core`` from that folder (a spawned child starts from the parent's
    ``sys.path``, which is changed for the start only)."""
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_run_size, args=(args, q))
    saved = sys.path[:]
    if code_root is not None:
        sys.path.insert(0, str(code_root))
    try:
        p.start()
    finally:
        sys.path[:] = saved
    peak = 0
    while True:
        peak = max(peak, _tree_rss_kb(p.pid))
        try:
            res = q.get(timeout=0.02)
            break
        except queue_mod.Empty:
            if not p.is_alive():
                raise RuntimeError(f"benchmark child for {args[0]} records died with exit code {p.exitcode}")
    p.join()
    shutil.rmtree(args[3], ignore_errors=True)
    res["peak_mb"] = peak / 1024
    return res


def spectrogram_costs(n: int = 100, seed: int = 1) -> dict[str, float]:
    """records per CPU-second (this thread's CPU time) of each spectrogram type alone on one in-memory batch of
    bipolar segments (16 x 2000), single-threaded as in each preprocessing worker (idle BLAS threads spin-wait
    on shared, busy cores)."""
    from hms_core.preprocess import single_threaded_compute
    from hms_core.spectral import chain_average, compute_spectrogram, log_normalize

    cfg = PreprocessingConfig().spectrogram
    rng = np.random.default_rng(seed)
    seg = (30 * rng.standard_normal((n, 16, 2000))).astype(np.float32)
    out = {}
    with single_threaded_compute():
        for name in ("stft", "multitaper", "wavelet", "mel"):
            compute_spectrogram(name, seg[:2], cfg)  # warm-up (filter banks, tapers)
            c0 = time.thread_time()
            power, _ = compute_spectrogram(name, seg, cfg)
            log_normalize(chain_average(power))
            out[name] = n / (time.thread_time() - c0)
    return out


def extract_revision(rev: str, dest: Path) -> Path:
    """``hms_core`` as it was at git revision ``rev``, extracted under ``dest``; returns the folder to put on
    ``sys.path``."""
    repo = Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "hms_core"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=3, default=[200, 400, 800], help="dataset sizes (records)")
    ap.add_argument("--n-ref", type=int, default=400, help="records for the ours-vs-reference comparison")
    ap.add_argument("--n-files", type=int, default=300, help="distinct 60-s EEG files (rows reuse them)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--baseline", default=None, help="git revision whose hms_core is measured beside ours")
    ap.add_argument("--baseline-repeats", type=int, default=2, help="A B alternations with --baseline")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hms_bench_"))
    eeg_dir = work / "eegs"
    t0 = time.perf_counter()
    write_records(eeg_dir, args.n_files)
    print(f"generated {args.n_files} records of {RECORD_S} s in {time.perf_counter() - t0:.1f} s under {work}")
    print(f"cpu cores: {os.cpu_count()}, load average: {os.getloadavg()}")

    # ours vs the like-for-like reference on the same records: all four spectrogram types + features ("full"),
    # and the core steps only (filter, montage, scaling, STFT, mel, features)
    ref_rows = make_rows(args.n_ref, args.n_files)
    reference_pipeline(ref_rows.iloc[:1], eeg_dir)  # warm-up (imports, filter banks), not timed
    cmp: dict[str, dict[str, float]] = {}
    for label, specs in (("full", ALL_SPECS), ("core", CORE_SPECS)):
        t0, c0 = time.perf_counter(), time.process_time()
        reference_pipeline(ref_rows, eeg_dir, specs)
        ref = {"rps": args.n_ref / (time.perf_counter() - t0), "cpu": args.n_ref / (time.process_time() - c0)}
        ours = run_in_fresh_process((args.n_ref, args.n_files, str(eeg_dir), str(work / f"cmp_{label}"),
                                     args.batch_size, args.workers, specs))  # fmt: skip
        cmp[label] = {"ref_rps": ref["rps"], "ref_cpu": ref["cpu"], "ours_rps": ours["n"] / ours["seconds"],
                      "ours_cpu": ours["n"] / ours["cpu_seconds"], "steps": ours["steps"]}  # fmt: skip
        print(f"[{label}: {'+'.join(specs)} + features] reference (per record, MNE + per-derivation scipy/pywt "
              f"loops): {ref['rps']:.1f} records/s ({ref['cpu']:.1f} per CPU-second); ours (build_partition, "
              f"{args.workers} workers): {cmp[label]['ours_rps']:.1f} records/s ({cmp[label]['ours_cpu']:.1f} per "
              f"CPU-second); speedup {cmp[label]['ours_rps'] / ref['rps']:.1f}x; steps (s, summed over workers): "
              f"{ {k: round(v, 2) for k, v in ours['steps'].items()} }")  # fmt: skip
    ours_rps, ref_rps = cmp["full"]["ours_rps"], cmp["full"]["ref_rps"]
    ours_cpu, ref_cpu = cmp["full"]["ours_cpu"], cmp["full"]["ref_cpu"]

    core = ("filter", "montage", "scaling", "spec_stft", "spec_mel", "features")
    core_s = sum(cmp["core"]["steps"].get(k, 0.0) for k in core) / max(args.workers, 1)
    core_rps = args.n_ref / core_s
    print(f"core steps {core} alone: {core_rps:.1f} records/s (per-step wall time summed over the worker threads, "
          f"divided by {args.workers} workers)")  # fmt: skip

    costs = spectrogram_costs()
    print("spectrogram cost alone (records per CPU-second, 16 derivations x 10 s, one thread): "
          + ", ".join(f"{k}={v:.0f}" for k, v in costs.items()))  # fmt: skip

    base: dict[str, float] = {}
    if args.baseline:
        root = extract_revision(args.baseline, work / "baseline")
        runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
        for _ in range(args.baseline_repeats):
            for label, code in (("ours", None), ("baseline", root)):
                r = run_in_fresh_process((args.n_ref, args.n_files, str(eeg_dir), str(work / f"ab_{label}"),
                                          args.batch_size, args.workers, ALL_SPECS), code)  # fmt: skip
                runs[label].append(r)
                print(f"  [{label}: hms_core from {r['code']}, torch imported: {r['torch_imported']}] "
                      f"{r['n'] / r['seconds']:.1f} records/s, {r['n'] / r['cpu_seconds']:.1f} per CPU-second, "
                      f"peak RSS {r['peak_mb']:.0f} MB")  # fmt: skip
        for label, rs in runs.items():
            base[f"{label}_cpu"] = sum(r["n"] for r in rs) / sum(r["cpu_seconds"] for r in rs)
            base[f"{label}_rps"] = sum(r["n"] for r in rs) / sum(r["seconds"] for r in rs)
        print(f"[A/B, full set, {args.baseline_repeats} alternations] ours {base['ours_cpu']:.1f} vs baseline "
              f"{args.baseline} {base['baseline_cpu']:.1f} records per CPU-second "
              f"({base['ours_cpu'] / base['baseline_cpu']:.2f}x); wall {base['ours_rps']:.1f} vs "
              f"{base['baseline_rps']:.1f} records/s")  # fmt: skip

    scaling = []
    for n in args.sizes:
        r = run_in_fresh_process((n, args.n_files, str(eeg_dir), str(work / f"size_{n}"), args.batch_size,
                                  args.workers, ALL_SPECS))  # fmt: skip
        scaling.append(r)
        print(
            f"size {n}: {n / r['seconds']:.1f} records/s ({n / r['cpu_seconds']:.1f} per CPU-second), "
            f"{r['seconds']:.1f} s, peak RSS of the process tree "
            f"{r['peak_mb']:.0f} MB, output {r['bytes'] / 2**20:.0f} MiB"
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "ours_rps": round(ours_rps, 1),
        "reference_rps": round(ref_rps, 1),
        "speedup": round(ours_rps / ref_rps, 1),
        "core_ours_rps": round(cmp["core"]["ours_rps"], 1),
        "core_reference_rps": round(cmp["core"]["ref_rps"], 1),
        "speedup_core": round(cmp["core"]["ours_rps"] / cmp["core"]["ref_rps"], 1),
        "core_steps_rps": round(core_rps, 1),
        "ours_cpu_rps": round(ours_cpu, 1),
        "ours_cpu_ms_per_record": round(1000 / ours_cpu, 1),
        "cpu_bound_rps_2cores": round(2 * ours_cpu, 1),
        "reference_cpu_rps": round(ref_cpu, 1),
        "speedup_cpu": round(ours_cpu / ref_cpu, 1),
        "workers": args.workers,
        **{f"spec_{k}_rps": round(v, 1) for k, v in costs.items()},
        **{f"rps_n{r['n']}": round(r["n"] / r["seconds"], 1) for r in scaling},
        **{f"cpu_rps_n{r['n']}": round(r["n"] / r["cpu_seconds"], 1) for r in scaling},
        **{f"peak_mb_n{r['n']}": round(r["peak_mb"]) for r in scaling},
        **(
            {
                "baseline": args.baseline,
                "ab_ours_cpu_rps": round(base["ours_cpu"], 1),
                "ab_baseline_cpu_rps": round(base["baseline_cpu"], 1),
                "ab_cpu_ratio": round(base["ours_cpu"] / base["baseline_cpu"], 2),
                "ab_ours_rps": round(base["ours_rps"], 1),
                "ab_baseline_rps": round(base["baseline_rps"], 1),
            }
            if base
            else {}
        ),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
