"""Preprocessing throughput and memory benchmark (not a timed test).

    python -m benchmarks.preprocess [--sizes 200 400 800] [--n-ref 100] [--batch-size 100] [--workers 2]

Generates realistic 60-s HMS-format records (1/f background with spatial mixing, posterior alpha, occasional
periodic discharges, 60-Hz line noise, an EKG column), then measures on the same records:

* our pipeline (:func:`hms_core.preprocess.build_partition`: read parquet, NaN handling, artifacts, band-pass +
  notch, montage, clipping, robust scaling, STFT + mel spectrograms, features, streaming writes) against a
  straightforward per-record reference (pandas read, ``mne.filter.filter_data`` + ``notch_filter``, bipolar
  montage, per-channel median/IQR, per-channel ``scipy.signal.spectrogram`` and Welch band powers in a Python
  loop), records/s of both and their ratio;
* records/s of the core steps alone (filter, montage, scaling, STFT, mel, features), from the pipeline's
  per-step timings;
* the cost of each spectrogram type alone (records/s on one in-memory batch);
* records/s and peak resident memory (whole process tree, each size in a fresh process) at three
  dataset sizes, to show linear time and constant memory.

The last line printed is ``RESULT key=value ...``. Besides wall-clock records/s it reports records per CPU-second
(process CPU time of all threads), which stays meaningful when other jobs share the cores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
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
        wave = 100 * (np.exp(-(k / 4.0) ** 2) - 0.5 * np.exp(-((k - 8) / 6.0) ** 2))
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
def reference_pipeline(rows: pd.DataFrame, eeg_dir: Path) -> int:
    """Straightforward per-record processing: MNE filters + per-channel scipy spectrograms in Python loops."""
    import mne
    import scipy.signal as ss

    a, b = bipolar_index(False)
    n = 0
    for eeg_id, off in zip(rows["eeg_id"], rows["eeg_label_offset_seconds"]):
        df = pd.read_parquet(eeg_dir / f"{eeg_id}.parquet")
        start = int(off * SFREQ)
        x = df.iloc[start : start + EEG_WINDOW_SAMPLES].to_numpy().T.astype(np.float64)
        x = np.nan_to_num(x)
        x = mne.filter.filter_data(x, SFREQ, 0.5, 50.0, verbose=False)
        x = mne.filter.notch_filter(x, SFREQ, 60.0, verbose=False)
        bip = [x[i] - x[j] for i, j in zip(a, b)]
        bip = [np.clip(ch, -500, 500) for ch in bip]
        feats = []
        specs = []
        for ch in bip:
            seg = ch[4000:6000]
            _, _, sxx = ss.spectrogram(seg, SFREQ, nperseg=256, noverlap=128, nfft=512)
            specs.append(np.log(sxx + 1e-6))
            f, p = ss.welch(seg, SFREQ, nperseg=256, nfft=512)
            feats.append([p[(f >= lo) & (f < hi)].sum() for lo, hi in ((0.5, 4), (4, 8), (8, 13), (13, 30), (30, 50))])
            q25, q50, q75 = np.percentile(ch, [25, 50, 75])
            _ = (ch - q50) / max(q75 - q25, 1e-3)
        n += 1
    return n


# --- ours -------------------------------------------------------------------------------------------------------
def core_config(workers: int) -> PreprocessingConfig:
    cfg = PreprocessingConfig()
    cfg.workers = workers
    cfg.spectrogram.types = ["stft", "mel"]
    cfg.spectrogram.use_kaggle_spectrograms = False
    return cfg


def _run_size(args: tuple[int, int, str, str, int, int], queue: mp.Queue) -> None:
    n_rows, n_files, eeg_dir, out_dir, batch, workers = args
    from hms_core.preprocess import build_partition

    rows = make_rows(n_rows, n_files)
    # warm-up on 2 other rows (imports, filter design, mel filter bank), not timed
    build_partition(make_rows(2, n_files), Path(eeg_dir), None, Path(out_dir + "_warm"), core_config(1), batch)
    shutil.rmtree(out_dir + "_warm", ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    m = build_partition(rows, Path(eeg_dir), None, Path(out_dir), core_config(workers), batch)
    queue.put({"n": n_rows, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
               "steps": m.step_seconds, "bytes": m.total_bytes})  # fmt: skip


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


def run_in_fresh_process(args: tuple[int, int, str, str, int, int]) -> dict:
    """Run one partition build in a fresh process; sample the RSS of its process tree every 20 ms."""
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_run_size, args=(args, q))
    p.start()
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
    """records/s of each spectrogram type alone on one in-memory batch of bipolar segments (16 x 2000)."""
    from hms_core.spectral import chain_average, compute_spectrogram, log_normalize

    cfg = PreprocessingConfig().spectrogram
    rng = np.random.default_rng(seed)
    seg = (30 * rng.standard_normal((n, 16, 2000))).astype(np.float32)
    out = {}
    for name in ("stft", "multitaper", "wavelet", "mel"):
        compute_spectrogram(name, seg[:2], cfg)  # warm-up (filter banks, tapers)
        t0 = time.perf_counter()
        power, _ = compute_spectrogram(name, seg, cfg)
        log_normalize(chain_average(power))
        out[name] = n / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=3, default=[200, 400, 800], help="dataset sizes (records)")
    ap.add_argument("--n-ref", type=int, default=400, help="records for the ours-vs-reference comparison")
    ap.add_argument("--n-files", type=int, default=300, help="distinct 60-s EEG files (rows reuse them)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hms_bench_"))
    eeg_dir = work / "eegs"
    t0 = time.perf_counter()
    write_records(eeg_dir, args.n_files)
    print(f"generated {args.n_files} records of {RECORD_S} s in {time.perf_counter() - t0:.1f} s under {work}")
    print(f"cpu cores: {os.cpu_count()}, load average: {os.getloadavg()}")

    # ours vs reference on the same records
    ref_rows = make_rows(args.n_ref, args.n_files)
    reference_pipeline(ref_rows.iloc[:1], eeg_dir)  # warm-up (imports), not timed
    t0, c0 = time.perf_counter(), time.process_time()
    reference_pipeline(ref_rows, eeg_dir)
    ref_rps = args.n_ref / (time.perf_counter() - t0)
    ref_cpu = args.n_ref / (time.process_time() - c0)
    print(f"reference (MNE filter_data + per-channel scipy, per record): {ref_rps:.1f} records/s, "
          f"{ref_cpu:.1f} records per CPU-second")
    ours = run_in_fresh_process((args.n_ref, args.n_files, str(eeg_dir), str(work / "ref_ours"), args.batch_size,
                                 args.workers))  # fmt: skip
    ours_rps = ours["n"] / ours["seconds"]
    ours_cpu = ours["n"] / ours["cpu_seconds"]
    print(f"ours (build_partition, stft+mel+features, {args.workers} workers): {ours_rps:.1f} records/s, "
          f"{ours_cpu:.1f} records per CPU-second"
          f"; steps (s, summed over workers): "
          f"{ {k: round(v, 2) for k, v in ours['steps'].items()} }")  # fmt: skip

    core = ("filter", "montage", "scaling", "spec_stft", "spec_mel", "features")
    core_s = sum(ours["steps"].get(k, 0.0) for k in core) / max(args.workers, 1)
    core_rps = ours["n"] / core_s
    print(f"core steps {core} alone: {core_rps:.1f} records/s (per-step wall time summed over the worker threads, "
          f"divided by {args.workers} workers)")  # fmt: skip

    costs = spectrogram_costs()
    print("spectrogram cost alone (records/s, 16 derivations x 10 s): "
          + ", ".join(f"{k}={v:.0f}" for k, v in costs.items()))  # fmt: skip

    scaling = []
    for n in args.sizes:
        r = run_in_fresh_process((n, args.n_files, str(eeg_dir), str(work / f"size_{n}"), args.batch_size,
                                  args.workers))  # fmt: skip
        scaling.append(r)
        print(f"size {n}: {n / r['seconds']:.1f} records/s ({n / r['cpu_seconds']:.1f} per CPU-second), "
              f"{r['seconds']:.1f} s, peak RSS of the process tree "
              f"{r['peak_mb']:.0f} MB, output {r['bytes'] / 2**20:.0f} MiB")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "ours_rps": round(ours_rps, 1),
        "reference_rps": round(ref_rps, 1),
        "speedup": round(ours_rps / ref_rps, 1),
        "core_steps_rps": round(core_rps, 1),
        "ours_cpu_rps": round(ours_cpu, 1),
        "reference_cpu_rps": round(ref_cpu, 1),
        "speedup_cpu": round(ours_cpu / ref_cpu, 1),
        "workers": args.workers,
        **{f"spec_{k}_rps": round(v, 1) for k, v in costs.items()},
        **{f"rps_n{r['n']}": round(r["n"] / r["seconds"], 1) for r in scaling},
        **{f"cpu_rps_n{r['n']}": round(r["n"] / r["cpu_seconds"], 1) for r in scaling},
        **{f"peak_mb_n{r['n']}": round(r["peak_mb"]) for r in scaling},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
