"""How long one fold of the full data trains: CPU seconds per optimizer step of every deep model at the full
profile's sizes, scaled to the full data's steps per epoch. Measured on this machine's CPU, not on a GPU.

Each model is built with ``config/full.yaml``'s model section (``pretrained`` off: the same network without its
downloaded or pretrained weights, which this machine does not have) and trained by the engine's own step
(:func:`hms_core.training.torch_trainer.train_one_epoch`: data loading, forward, soft-KL loss, backward, clipped
AdamW step, EMA update) at the full profile's batch size, on synthetic partitions in the exact on-disk layout with
the full preprocessing's shapes (50-s bipolar context at 200 Hz, every spectrogram type at the shape the
preprocessing config gives). Validation cost is the engine's prediction pass (``evaluate``) over a held-out
partition. Times are CPU seconds of this process (``time.process_time``, one torch thread), so the machine's other
load does not inflate them. The first step of each model (allocation, first-touch) is measured apart.

Full-data rows: ``train.csv`` has 106,800 rows of 17,089 EEGs (../shared/reference/hms_data.md); the labels asset
keeps one row per (eeg_id, votes) group, a count between those two that depends on the real file, so the epoch
time is given for both bounds, with ``(n_folds - 1) / n_folds`` of the rows training and the rest validating.

    nice -n 10 python -m benchmarks.fold_time [--steps 3] [--models resnet1d_gru sparcnet]

Last line: ``RESULT <model>_step_cpu_s=... <model>_val_cpu_ms_per_row=... <model>_epoch_cpu_h_lo/hi=...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

#: train.csv rows and EEGs of the Kaggle competition (hms_data.md): bounds of the deduplicated label rows.
FULL_ROWS_HI = 106_800
FULL_ROWS_LO = 17_089
#: Deep models (LightGBM is a CPU model in every profile and has no optimizer steps).
DEEP = ("resnet1d_gru", "efficientnet", "sparcnet", "eeg_foundation")


def spectrogram_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(frequency bins, frames) of every spectrogram type as the preprocessing config computes them."""
    import numpy as np

    from hms_core.constants import KAGGLE_SPECTROGRAM, SPEC_FREQS, SPEC_WINDOW_ROWS
    from hms_core.spectral import compute_spectrogram

    sp, eeg = cfg.preprocessing.spectrogram, cfg.preprocessing.eeg
    n = eeg.segment_length if sp.span == "segment" else eeg.context_length
    x = np.random.default_rng(0).normal(size=(1, n)).astype(np.float32)
    shapes = {t: tuple(compute_spectrogram(t, x, sp)[0].shape[-2:]) for t in sp.types}
    if sp.use_kaggle_spectrograms:
        shapes[KAGGLE_SPECTROGRAM] = (len(SPEC_FREQS), SPEC_WINDOW_ROWS)
    return shapes


def time_model(name: str, model_cfg: dict, train_cfg, train_dir: Path, val_dir: Path, out: Path) -> dict:
    import torch

    from hms_core.models.registry import get_spec, resolve_config
    from hms_core.training.data import RowDataset, all_rows, make_loader
    from hms_core.training.fold import FitContext, load_fold_data
    from hms_core.training.torch_trainer import _build, evaluate, plan_fold_schedule, train_one_epoch

    spec = get_spec(name)
    mcfg = resolve_config(name, {**model_cfg, **({"pretrained": False} if "pretrained" in model_cfg else {})})
    data = load_fold_data([train_dir], val_dir, None, train_cfg)
    data, plan = plan_fold_schedule(data, train_cfg)
    ctx = FitContext(name, spec, mcfg, train_cfg, out)
    t, ispec = _build(data, ctx, plan)
    stage = data.stage_at(0)
    ds = RowDataset(data.train, data.rows[stage.mask], ispec, stage.weights[stage.mask], None, train_cfg.seed)
    one = torch.utils.data.Subset(ds, range(train_cfg.batch_size))
    c0 = time.process_time()
    train_one_epoch(t, torch.utils.data.DataLoader(one, batch_size=train_cfg.batch_size), 0, train_cfg)
    first = time.process_time() - c0
    loader = make_loader(ds, train_cfg.batch_size, 0, train_cfg.seed, True, 0, drop_last=True)
    c0, w0 = time.process_time(), time.perf_counter()
    tr = train_one_epoch(t, loader, 0, train_cfg)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    steps = len(loader)
    val_ds = RowDataset([data.val], all_rows(data.val), ispec)
    c0 = time.process_time()
    evaluate(t.eval_model, val_ds, data.val.targets, data.val_high_votes, train_cfg, t.device, t.amp)
    val_cpu = time.process_time() - c0
    n_val = len(val_ds)
    n_params = sum(p.numel() for p in t.model.parameters())
    return {"model": name, "n_params": n_params, "input": [ispec.kind, *_input_shape(ds)], "steps": steps,
            "first_step_cpu_s": round(first, 3), "step_cpu_s": cpu / steps, "step_wall_s": wall / steps,
            "val_cpu_s_per_row": val_cpu / n_val, "train_loss": round(tr["train_loss"], 4)}  # fmt: skip


def _input_shape(ds) -> list[int]:
    x = ds[0][0]
    return list(x.shape)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument(
        "--steps", type=int, default=3, help="timed optimizer steps per model (the first step is timed apart)"
    )
    ap.add_argument("--models", nargs="*", default=None)
    a = ap.parse_args(argv)
    if a.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {a.steps}")

    import torch

    from hms_core.config import load_config
    from hms_core.training.testing import make_partition

    torch.set_num_threads(1)
    cfg = load_config(a.profile)
    names = a.models or [m for m in cfg.enabled_models() if m in DEEP]
    unknown = sorted(set(names) - set(DEEP))
    if unknown:
        raise SystemExit(f"--models: {unknown} are not deep models; expected some of {list(DEEP)}")
    bs = cfg.training.batch_size
    train_cfg = cfg.training.model_copy(update={
        "device": "cpu", "mixed_precision": False, "num_workers": 0, "torch_threads": 1, "epochs": 1,
        "stage2_epochs": 0, "min_steps": 0, "gradient_checkpointing": False})  # fmt: skip
    shapes = spectrogram_shapes(cfg)
    ctx_len, seg_len = cfg.preprocessing.eeg.context_length, cfg.preprocessing.eeg.segment_length
    tmp = Path(tempfile.mkdtemp(prefix="hms_bench_fold_time_"))
    train_dir = make_partition(tmp / "windows" / "fold_0", bs * a.steps, 0, 0, ctx_len, shapes,
                               segment_length=seg_len)  # fmt: skip
    val_dir = make_partition(tmp / "windows" / "fold_1", bs, 1, 1, ctx_len, shapes, id_offset=10_000,
                             segment_length=seg_len)  # fmt: skip
    k = cfg.dataset.n_folds
    print(f"# {platform.node()} {os.cpu_count()} cpus, torch {torch.__version__}, 1 thread, profile {cfg.profile},"
          f" batch {bs}, {k} folds, spectrograms {shapes}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    result: dict[str, float | int] = {"batch_size": bs, "n_folds": k}
    for name in names:
        r = time_model(name, cfg.models[name], train_cfg, train_dir, val_dir, tmp / "models" / name)
        for label, rows in (("lo", FULL_ROWS_LO), ("hi", FULL_ROWS_HI)):
            n_train, n_val = rows * (k - 1) // k, rows - rows * (k - 1) // k
            steps = n_train // bs
            r[f"epoch_steps_{label}"] = steps
            r[f"epoch_cpu_h_{label}"] = (steps * r["step_cpu_s"] + n_val * r["val_cpu_s_per_row"]) / 3600
        print(json.dumps({k2: round(v, 4) if isinstance(v, float) else v for k2, v in r.items()}), flush=True)
        result[f"{name}_step_cpu_s"] = round(r["step_cpu_s"], 3)
        result[f"{name}_val_cpu_ms_per_row"] = round(1000 * r["val_cpu_s_per_row"], 2)
        result[f"{name}_epoch_cpu_h_lo"] = round(r["epoch_cpu_h_lo"], 2)
        result[f"{name}_epoch_cpu_h_hi"] = round(r["epoch_cpu_h_hi"], 2)
    epochs = cfg.training.epochs + cfg.training.stage2_epochs
    total_lo = sum(result[f"{n}_epoch_cpu_h_lo"] for n in names)
    total_hi = sum(result[f"{n}_epoch_cpu_h_hi"] for n in names)
    result.update({"epoch_steps_lo": FULL_ROWS_LO * (k - 1) // k // bs,
                   "epoch_steps_hi": FULL_ROWS_HI * (k - 1) // k // bs,
                   "fold_epoch_all_models_cpu_h_lo": round(total_lo, 2),
                   "fold_epoch_all_models_cpu_h_hi": round(total_hi, 2),
                   "max_epochs": epochs,
                   "fold_all_models_max_epochs_cpu_h_hi": round(total_hi * epochs, 1),
                   "load_avg_1m": round(os.getloadavg()[0], 2)})  # fmt: skip
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    assert all(math.isfinite(float(v)) for v in result.values())
    print("RESULT " + " ".join(f"{k2}={v}" for k2, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
