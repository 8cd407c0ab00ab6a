"""The scanning model: a small CNN distilled from the ensemble, fast enough for 24-h recordings.

The ensemble runs every fold of every member on per-window inputs (raw segments, four spectrogram types, features);
at a 2-s stride that is 43,200 windows a day. The distilled model reads one cheap representation that every
overlapping window shares: the log STFT power of the four double-banana chains (``distill.spatial: chains``) or of
the 16 derivations (``derivations``: a focal pattern in two electrodes is not averaged with its chain's other
two) over the 10-s segment and ``distill.context_s`` seconds of its 50-s context on either side
(:func:`hms_core.scanning.frontend.distill_inputs`: Hann ``distill.window_size``, hop ``distill.hop``,
``freq_min``-``freq_max`` Hz, standardised per window, plus the window's mean and spread of log power). With context
the student sees whether a rhythm runs on or comes in runs and gaps, and with ``time_bins`` 3 (features averaged
before, during and after the segment apart) how it evolves.

Teacher windows: the long recordings of ``distill.recordings_dir`` when set (unlabelled, e.g. a unit's own ICU
recordings; each file one pseudo-patient), ``distill.synthetic_recordings`` long synthetic ones (for a workspace
without recordings of its own, such as the demo; their truth is never read), both scanned every
``distill.recordings_stride_s`` seconds, and the training recordings (``train_eegs``; no labels are read) every
``distill.stride_s``, scanned with the scanner itself and classified by the ensemble engine (the deployment
package's, or the workspace ensemble before one exists). The student is trained on the teacher's probabilities
(KL(teacher || student), with the label-preserving left/right flip as augmentation) on the windows of
``1 - holdout_fraction`` of the patients; its agreement with the ensemble, the mean KL(ensemble || distilled) and
the top-class agreement on the held-out patients' windows, is recorded in ``distill.json`` beside ``model.onnx``.

Where it is stored: ``<root>/models/scanning/<teacher version>/`` (``model.onnx``, ``distill.json``,
``manifest.json`` with their SHA-256 and the teacher package's manifest digest). The deployment package itself is
never edited: a verified package stays as EXPORT wrote it, and the scanner finds the model by the package version.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hms_core.config import PlatformConfig
from hms_core.constants import CLASSES, EEG_CHANNELS, SFREQ
from hms_core.io import atomic_path, sha256_file, write_json
from hms_core.scanning.config import ScanConfig

__all__ = [
    "DistillResult",
    "TeacherWindows",
    "distill",
    "distilled_dir",
    "synthetic_recordings",
    "teacher_windows",
    "train_student",
]

MODEL_FILE = "model.onnx"
META_FILE = "distill.json"
MANIFEST_FILE = "manifest.json"


def distilled_dir(models_dir: str | Path, teacher_version: str) -> Path:
    """``<models_dir>/scanning/<teacher version>`` (the version made safe as a folder name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", teacher_version).strip("_") or "teacher"
    return Path(models_dir) / "scanning" / safe


@dataclass
class ArrayRecording:
    """An in-memory recording (n, 20) at 200 Hz with the streaming reader's interface."""

    data: np.ndarray

    @property
    def duration_s(self) -> float:
        return self.data.shape[0] / SFREQ

    def read(self, start_s: float, stop_s: float) -> np.ndarray:
        return self.data[max(round(start_s * SFREQ), 0) : round(stop_s * SFREQ)]


@dataclass
class TeacherWindows:
    spec: np.ndarray  # (N, 4, F, T) float32
    scalars: np.ndarray  # (N, 2)
    probs: np.ndarray  # (N, 6) the ensemble's probabilities
    patient: np.ndarray  # (N,) patient ids
    seconds: float


def _training_recordings(cfg: PlatformConfig) -> list[tuple[Path, int]]:
    """(parquet path, patient id) of every training EEG of the raw data set (train.csv; labels unread)."""
    import polars as pl

    csv = cfg.raw_dir / "train.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} does not exist: distillation scans the training recordings it lists")
    ids = pl.read_csv(csv, columns=["eeg_id", "patient_id"]).unique("eeg_id").sort("eeg_id")
    return [(cfg.raw_dir / "train_eegs" / f"{e}.parquet", int(p)) for e, p in ids.iter_rows()]


def synthetic_recordings(cfg: PlatformConfig, dcfg: Any) -> list[Path]:
    """The ``distill.synthetic_recordings`` long synthetic EDFs under ``<root>/distill/synthetic`` (written by
    :func:`hms_core.synthetic.long.write_long_recording` when missing; the name holds seed, length and seizure
    share, so a changed key writes new files). Only the EDF is read: the truth beside it is never used."""
    from hms_core.synthetic.long import EVENT_MIX, write_long_recording

    folder = cfg.root / "distill" / "synthetic"
    share = dcfg.synthetic_seizure_share
    others = [c for c in EVENT_MIX if c != "Seizure"]
    mix = {"Seizure": share} | {c: (1.0 - share) / len(others) for c in others}
    out = []
    for i in range(dcfg.synthetic_recordings):
        seed = dcfg.synthetic_seed + i
        path = folder / f"teacher-s{seed}-{dcfg.synthetic_hours:g}h-sz{share:g}_eeg.edf"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            write_long_recording(path, dcfg.synthetic_hours, seed, event_mix=mix)  # written atomically
        out.append(path)
    return out


def _extra_recordings(cfg: PlatformConfig, dcfg: Any) -> list[Path]:
    """The files of ``distill.recordings_dir`` that :func:`hms_core.recording.open_recording` reads, then the
    synthetic teacher recordings (:func:`synthetic_recordings`)."""
    found: list[Path] = []
    if dcfg.recordings_dir:
        folder = cfg.path(dcfg.recordings_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"scan.distill.recordings_dir: {folder} is not a folder of recordings")
        suffixes = (".edf", ".bdf", ".rec", ".fif", ".vhdr", ".set", ".cnt", ".gdf")
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    return found + synthetic_recordings(cfg, dcfg)


def teacher_windows(cfg: PlatformConfig, scanner: Any, scan: ScanConfig,
                    progress: Callable[[int, int], None] | None = None) -> TeacherWindows:  # fmt: skip
    """Scan the recordings of ``distill.recordings_dir`` (each its own pseudo-patient, ids -1, -2, ...), then the
    training recordings (a seeded order), until ``distill.max_windows``, with the ensemble engine, and keep every
    evaluated window's distilled-model input and the ensemble's probabilities."""
    from hms_core.eeg_io import read_hms_eeg
    from hms_core.recording import open_recording
    from hms_core.scanning.engine import scan_reader

    dcfg = scan.distill
    t0 = time.perf_counter()
    extra = _extra_recordings(cfg, dcfg)
    recs = _training_recordings(cfg)
    order = np.random.default_rng(dcfg.seed).permutation(len(recs))
    sources: list[tuple[Path, int, bool]] = [(p, -(i + 1), True) for i, p in enumerate(extra)]
    sources += [(recs[j][0], recs[j][1], False) for j in order]
    sub = scan.model_copy(update={"stride_s": dcfg.stride_s})
    sub_long = scan.model_copy(update={"stride_s": dcfg.recordings_stride_s or dcfg.stride_s})
    ens = scanner.ensemble
    max_missing = scanner.max_missing_channels if scan.max_missing_channels is None else scan.max_missing_channels
    parts: dict[str, list[np.ndarray]] = {"spec": [], "scalars": [], "probs": [], "patient": []}
    n = 0
    for i, (path, patient, long) in enumerate(sources):

        def keep(spec: np.ndarray, scal: np.ndarray, probs: np.ndarray, patient: int = patient) -> None:
            parts["spec"].append(spec)
            parts["scalars"].append(scal)
            parts["probs"].append(probs)
            parts["patient"].append(np.full(len(probs), patient, np.int64))

        if long:
            with open_recording(path, min_eeg_channels=len(EEG_CHANNELS) - max_missing) as rec:
                scan_reader(rec, ens, sub_long, max_missing, on_batch=keep)
        else:
            scan_reader(ArrayRecording(read_hms_eeg(path, missing_channels="flag")), ens, sub, max_missing,
                        on_batch=keep)  # fmt: skip
        n = sum(len(p) for p in parts["probs"])
        if progress is not None:
            progress(i + 1, len(sources))
        if dcfg.max_windows is not None and n >= dcfg.max_windows:
            break
    if not n:
        raise ValueError(f"no evaluable window in the {len(sources)} teacher recordings ({cfg.raw_dir})")
    out = {k: np.concatenate(v) for k, v in parts.items()}
    if dcfg.max_windows is not None and n > dcfg.max_windows:
        keep_idx = np.sort(np.random.default_rng(dcfg.seed).choice(n, dcfg.max_windows, replace=False))
        out = {k: v[keep_idx] for k, v in out.items()}
    return TeacherWindows(out["spec"], out["scalars"], out["probs"], out["patient"], time.perf_counter() - t0)


def build_student(n_freqs: int, n_frames: int, channels: int, time_bins: int = 1, n_rows: int = 4) -> Any:
    """The scanning CNN: two conv blocks over (frequency, time) with the ``n_rows`` chains or derivations as input
    channels, mean over
    each of ``time_bins`` equal stretches of time (1: the whole input; 3 with ``context_s``: before, during and
    after the segment, so the head sees how the pattern evolves), then a small head that also reads the window's
    log-power mean and spread. Outputs logits (B, 6)."""
    import torch
    from torch import nn

    n_t = n_frames // 2  # time after the first pooling
    if not 1 <= time_bins <= n_t:
        raise ValueError(f"time_bins ({time_bins}) must be between 1 and {n_t} (the CNN's {n_t} time steps)")
    edges = np.linspace(0, n_t, time_bins + 1).round().astype(int).tolist()

    class ScanNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = channels
            self.conv = nn.Sequential(
                nn.Conv2d(n_rows, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d((2, 1)),
            )  # fmt: skip
            n_f = n_freqs // 4
            self.head = nn.Sequential(nn.Linear(2 * c * n_f * time_bins + 2, 64), nn.ReLU(), nn.Dropout(0.1),
                                      nn.Linear(64, len(CLASSES)))  # fmt: skip

        def forward(self, spec: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
            z = self.conv(spec)
            pooled = [z[..., a:b].mean(-1).flatten(1) for a, b in itertools.pairwise(edges)]
            return self.head(torch.cat([*pooled, scalars], 1))

    return ScanNet()


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = np.clip(p, 1e-12, 1), np.clip(q, 1e-12, 1)
    return (p * np.log(p / q)).sum(-1)


def _predict(model: Any, spec: np.ndarray, scal: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(spec), 1024):
            out.append(torch.softmax(model(torch.from_numpy(spec[i : i + 1024]),
                                           torch.from_numpy(scal[i : i + 1024])), 1).numpy())  # fmt: skip
    return np.concatenate(out).astype(np.float64)


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities at ``temperature``: p^(1/T) renormalised (T < 1 sharpens, 1 leaves them)."""
    if temperature == 1.0:
        return probs
    z = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def train_student(tw: TeacherWindows, scan: ScanConfig) -> tuple[Any, dict[str, Any]]:
    """Fit the student on the non-held-out patients' windows; returns it and its agreement figures."""
    import torch

    from hms_core.constants import bipolar_flip_index
    from hms_core.training.inputs import CHAIN_FLIP_ORDER

    dcfg = scan.distill
    torch.manual_seed(dcfg.seed)
    rng = np.random.default_rng(dcfg.seed)
    patients = np.unique(tw.patient)
    n_hold = max(1, round(dcfg.holdout_fraction * len(patients))) if len(patients) > 1 else 0
    held = set(rng.permutation(patients)[:n_hold].tolist())
    test = np.isin(tw.patient, list(held))
    train = ~test if test.any() and (~test).any() else np.ones(len(test), bool)
    model = build_student(tw.spec.shape[2], tw.spec.shape[3], dcfg.channels, dcfg.time_bins, tw.spec.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=dcfg.learning_rate, weight_decay=dcfg.weight_decay)
    idx = np.flatnonzero(train)
    steps = dcfg.epochs * max(1, -(-len(idx) // dcfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=dcfg.learning_rate, total_steps=steps)
    spec, scal = torch.from_numpy(tw.spec), torch.from_numpy(tw.scalars)
    target = torch.from_numpy(sharpen(tw.probs, dcfg.target_temperature).astype(np.float32))
    # the label-preserving left/right flip of the input rows (chains, or derivations in BIPOLAR_PAIRS order)
    flip = torch.tensor(CHAIN_FLIP_ORDER if tw.spec.shape[1] == len(CHAIN_FLIP_ORDER) else bipolar_flip_index())
    t0 = time.perf_counter()
    model.train()
    for _ in range(dcfg.epochs):
        rng.shuffle(idx)
        for b0 in range(0, len(idx), dcfg.batch_size):
            b = torch.from_numpy(idx[b0 : b0 + dcfg.batch_size])
            if len(b) < 2:  # batch norm needs two windows
                continue
            swap = torch.rand(len(b)) < 0.5  # the label-preserving left/right flip
            x = torch.where(swap[:, None, None, None], spec[b][:, flip], spec[b])
            logp = torch.log_softmax(model(x, scal[b]), 1)
            loss = torch.nn.functional.kl_div(logp, target[b], reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched.last_epoch + 1 < steps:
                sched.step()
    p = _predict(model, tw.spec, tw.scalars)
    kl = _kl(tw.probs, p)
    agree = p.argmax(1) == tw.probs.argmax(1)
    prior = tw.probs[train].mean(0)
    metrics = {
        "windows": len(tw.probs), "train_windows": int(train.sum()), "heldout_windows": int(test.sum()),
        "patients": len(patients), "heldout_patients": sorted(int(x) for x in held),
        "unlabelled_recording_windows": int((tw.patient < 0).sum()),
        "kl_heldout": float(kl[test].mean()) if test.any() else None,
        "kl_train": float(kl[train].mean()),
        "top1_agreement_heldout": float(agree[test].mean()) if test.any() else None,
        "kl_heldout_constant_prior": float(_kl(tw.probs[test], prior[None]).mean()) if test.any() else None,
        "train_seconds": round(time.perf_counter() - t0, 2), "teacher_seconds": round(tw.seconds, 2),
    }  # fmt: skip
    return model, metrics


def export_student(model: Any, spec_shape: tuple[int, ...], path: Path) -> float:
    """ONNX export (TorchScript exporter, dynamic batch) and the max |p_onnx - p_torch| on random inputs."""
    import onnxruntime as ort
    import torch

    model.eval()
    rng = np.random.default_rng(0)
    spec = rng.standard_normal((8, *spec_shape)).astype(np.float32)
    scal = rng.standard_normal((8, 2)).astype(np.float32)
    with atomic_path(path, suffix=".tmp.onnx") as tmp:
        torch.onnx.export(
            model, (torch.from_numpy(spec), torch.from_numpy(scal)), str(tmp), input_names=["spec", "scalars"],
            output_names=["logits"], dynamic_axes={"spec": {0: "batch"}, "scalars": {0: "batch"},
                                                   "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {"spec": spec, "scalars": scal})
    with torch.no_grad():
        ref = model(torch.from_numpy(spec), torch.from_numpy(scal)).numpy()
    return float(np.abs(logits - ref).max())


@dataclass
class DistillResult:
    folder: Path
    metrics: dict[str, Any]
    meta: dict[str, Any]


def _student_speed(folder: Path, tw: TeacherWindows, threads: int) -> float:
    """Windows per second of the exported model (onnxruntime, ``threads`` threads) on batches of 512 teacher inputs."""
    from hms_core.scanning.predictors import DistilledModel

    n = min(len(tw.spec), 2048)
    reps = max(1, -(-2048 // max(n, 1)))
    sess = DistilledModel.session_for(folder / MODEL_FILE, threads)
    t0 = time.perf_counter()
    for _ in range(reps):
        for i in range(0, n, 512):
            sess.run(None, {"spec": tw.spec[i : min(i + 512, n)], "scalars": tw.scalars[i : min(i + 512, n)]})
    return reps * n / max(time.perf_counter() - t0, 1e-9)


def _publish(tmp: Path, folder: Path) -> None:
    """Move the complete folder ``tmp`` to ``folder``, replacing an older model: a reader finds the old folder or
    the new one, never a half-written one (the old one is renamed away first, then removed)."""
    import shutil

    old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def distill(cfg: PlatformConfig, package: Any = None, progress: Callable[[int, int], None] | None = None,
            log: Callable[[str], None] | None = None) -> DistillResult:  # fmt: skip
    """Teacher windows -> student -> ``<root>/models/scanning/<teacher version>/`` (see the module docstring),
    written into a temporary folder beside it and moved into place when complete."""
    import shutil

    from hms_core.scanning.engine import load_scanner

    say = log or (lambda _m: None)
    scan = cfg.scan
    scanner = load_scanner(package, scan, cfg)
    tw = teacher_windows(cfg, scanner, scan, progress)
    say(f"teacher: {len(tw.probs)} windows of {len(np.unique(tw.patient))} patients in {tw.seconds:.1f} s")
    model, metrics = train_student(tw, scan)
    folder = distilled_dir(cfg.models_dir, scanner.version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".tmp-{folder.name}-*"):  # what an interrupted build left
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        parity = export_student(model, tw.spec.shape[1:], tmp / MODEL_FILE)
        metrics |= {
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "model_bytes": (tmp / MODEL_FILE).stat().st_size,
            "windows_per_s": round(_student_speed(tmp, tw, scan.threads), 1),
            "teacher_windows_per_s": round(len(tw.probs) / max(tw.seconds, 1e-9), 2),
        }  # fmt: skip
        teacher_manifest = Path(scanner.source) / "manifest.json"
        meta = {
            "format": 1, "classes": list(CLASSES), "teacher": scanner.version, "teacher_path": str(scanner.source),
            "teacher_manifest_sha256": sha256_file(teacher_manifest) if teacher_manifest.is_file() else None,
            "config": scan.distill.model_dump(mode="json"), "n_frames": int(tw.spec.shape[-1]),
            "n_freqs": int(tw.spec.shape[2]), "preprocessing": scanner.preprocessing.model_dump(mode="json"),
            "metrics": metrics, "onnx_max_abs_logit_diff": parity,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
        write_json(tmp / META_FILE, meta)
        write_json(tmp / MANIFEST_FILE, {"format": 1, "files": {f: sha256_file(tmp / f)
                                                                 for f in (MODEL_FILE, META_FILE)}})  # fmt: skip
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(
        f"distilled model: held-out KL vs ensemble {metrics['kl_heldout']} (constant class prior "
        f"{metrics['kl_heldout_constant_prior']}), top-1 agreement {metrics['top1_agreement_heldout']} -> {folder}"
    )
    return DistillResult(folder, metrics, meta)


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META_FILE).read_text())
