"""Training one (model, fold): plain functions, no orchestration.

:func:`train_fold` trains a registered model on the training partitions, early-stops on the validation
partition's KL over high-vote rows, and writes (all atomically) ``checkpoints/last.pt`` every epoch,
``checkpoints/best.pt`` on improvement, ``oof.parquet`` / ``test_pred.parquet`` and ``final/{weights, config.json}``.
Re-running with ``resume=True`` after a crash or ``kill -9`` continues from ``last.pt`` and ends with the same
result as an uninterrupted run: shuffling, augmentation, mixup and dropout are all seeded by ``(seed, epoch)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hms_core.config import TrainingConfig
from hms_core.constants import HIGH_VOTE_THRESHOLD
from hms_core.io import write_json, write_parquet
from hms_core.metrics import classification_report, kl_divergence, prior_baseline
from hms_core.models.registry import create_model, get_spec, resolve_config
from hms_core.training import ddp
from hms_core.training.augment import mixup, soft_kl_loss
from hms_core.training.checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hms_core.training.data import (
    AugmentParams, InputSpec, Partition, RowDataset, feature_columns, infer_input_spec, load_partition, make_loader,
)  # fmt: skip
from hms_core.training.predict import PRED_COLUMNS, predict_torch, prediction_table
from hms_core.training.schedule import EMA, WarmupCosine

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    model_name: str
    oof_pred: np.ndarray
    val_index: Any  # pandas DataFrame of the validation rows' ids
    test_pred: np.ndarray | None
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but torch.cuda.is_available() is False; use 'auto' or 'cpu'.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and ddp.context().enabled:
        return torch.device("cuda", ddp.context().local_rank)
    return torch.device(name)


def _seed_everything(seed: int, deterministic: bool = True) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 99]).integers(2**62))


def _row_plan(parts: Sequence[Partition], cfg: TrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """All training rows as (partition, row) pairs and their total votes (capped by ``max_train_rows``)."""
    rows = np.concatenate([np.stack([np.full(len(p), i), np.arange(len(p))], 1) for i, p in enumerate(parts)])
    votes = np.concatenate([p.total_votes for p in parts])
    if cfg.max_train_rows is not None and len(rows) > cfg.max_train_rows:
        keep = np.sort(np.random.default_rng([cfg.seed, 1]).choice(len(rows), cfg.max_train_rows, replace=False))
        rows, votes = rows[keep], votes[keep]
    return rows, votes


def _stages(cfg: TrainingConfig, votes: np.ndarray) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(first_epoch, n_epochs, row mask, row weights) per stage."""
    low = votes < cfg.min_votes
    w1 = np.where(low, cfg.low_vote_weight, 1.0).astype(np.float32)
    stages = [(0, cfg.epochs, w1 > 0, w1)]
    if cfg.stage2_epochs > 0:
        high = ~low
        if high.sum() == 0:
            log.warning("stage 2 skipped: no training rows with >= %d votes", cfg.min_votes)
        else:
            stages.append((cfg.epochs, cfg.stage2_epochs, high, np.ones(len(votes), np.float32)))
    return stages


def _config_hash(*objs: Any) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fold_metrics(targets: np.ndarray, probs: np.ndarray, votes: np.ndarray, prior: np.ndarray,
                  min_votes: int) -> dict[str, float]:  # fmt: skip
    high = votes >= min_votes
    m = {"val_kl": kl_divergence(targets, probs)}
    m["val_kl_high_votes"] = kl_divergence(targets[high], probs[high]) if high.any() else m["val_kl"]
    m["prior_kl"] = kl_divergence(targets, np.tile(prior, (len(targets), 1)))
    m["prior_kl_high_votes"] = (
        kl_divergence(targets[high], np.tile(prior, (int(high.sum()), 1))) if high.any() else m["prior_kl"]
    )
    m["n_val_high_votes"] = float(high.sum())
    m.update(classification_report(targets, probs))
    return m


def _write_outputs(out_dir: Path, val: Partition, oof: np.ndarray, test: Partition | None,
                   test_pred: np.ndarray | None) -> dict[str, Path]:  # fmt: skip
    paths = {"oof": write_parquet(out_dir / "oof.parquet", prediction_table(val, oof))}
    if test is not None and test_pred is not None:
        paths["test_pred"] = write_parquet(out_dir / "test_pred.parquet", prediction_table(test, test_pred))
    return paths


def train_fold(
    model_name: str,
    model_cfg: dict[str, Any],
    train_cfg: TrainingConfig,
    train_dirs: Sequence[Path],
    val_dir: Path,
    test_dir: Path | None,
    out_dir: Path,
    loggers: Sequence[Any] = (),
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> FoldResult:
    """Train ``model_name`` on ``train_dirs``, validate on ``val_dir``, predict ``test_dir``; see module docstring."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    spec = get_spec(model_name)
    mcfg = resolve_config(model_name, model_cfg)
    if not train_dirs:
        raise ValueError("train_fold: 'train_dirs' is empty; pass at least one processed partition folder")
    train_parts = [load_partition(d) for d in train_dirs]
    val = load_partition(val_dir)
    test = load_partition(test_dir) if test_dir is not None else None
    rows, votes = _row_plan(train_parts, train_cfg)
    train_targets = np.concatenate([p.targets for p in train_parts])
    prior = prior_baseline(train_targets, 1)[0]
    tcfg = train_cfg.model_dump(mode="json")
    ctx = ddp.context()
    params = {"model": model_name, **{f"model.{k}": v for k, v in mcfg.items()},
              **{f"train.{k}": v for k, v in tcfg.items()}, "n_train_rows": len(rows), "n_val_rows": len(val),
              "train_dirs": [str(d) for d in train_dirs], "val_dir": str(val_dir)}  # fmt: skip
    if ctx.is_main:
        for lg in loggers:
            lg.on_start(params)
    threads = torch.get_num_threads()
    if train_cfg.torch_threads:
        torch.set_num_threads(train_cfg.torch_threads)
    try:
        res = _dispatch(spec.input_kind, model_name, mcfg, train_cfg, train_parts, rows, votes, val, test, out_dir,
                        prior, loggers, resume, progress, preprocessing)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    res.metrics["seconds"] = time.perf_counter() - t0
    if ctx.is_main:
        write_json(out_dir / "metrics.json", res.metrics)
        res.paths["metrics"] = out_dir / "metrics.json"
        for lg in loggers:
            if spec.input_kind == "features":
                for h in res.history:
                    lg.on_epoch_end(int(h["epoch"]), {k: v for k, v in h.items() if k != "epoch"})
            lg.on_end(res.metrics, [p for p in res.paths.values() if Path(p).is_file()])
    return res


def _dispatch(kind, model_name, mcfg, train_cfg, train_parts, rows, votes, val, test, out_dir, prior, loggers,
              resume, progress, preprocessing) -> FoldResult:  # type: ignore[no-untyped-def]
    if kind == "features":
        res = _train_gbm(model_name, mcfg, train_cfg, train_parts, rows, votes, val, test, out_dir, prior,
                         preprocessing)  # fmt: skip
    else:
        res = _train_torch(model_name, kind, mcfg, train_cfg, train_parts, rows, votes, val, test,
                           out_dir, prior, loggers, resume, progress, preprocessing)  # fmt: skip
    return res


# --- LightGBM -------------------------------------------------------------------------------------------------
def _train_gbm(model_name: str, mcfg: dict[str, Any], cfg: TrainingConfig, parts: list[Partition],
               rows: np.ndarray, votes: np.ndarray, val: Partition, test: Partition | None, out_dir: Path,
               prior: np.ndarray, preprocessing: dict[str, Any] | None) -> FoldResult:  # fmt: skip
    feats = [p.features() for p in parts]
    cols = feature_columns(feats[0])
    if not cols:
        raise ValueError(f"{parts[0].path / 'features.parquet'} has no numeric feature columns")
    x = np.concatenate([f[cols].to_numpy(np.float32) for f in feats])
    y = np.concatenate([p.targets for p in parts])
    flat = np.concatenate([[0], np.cumsum([len(p) for p in parts])])[rows[:, 0]] + rows[:, 1]
    x, y = x[flat], y[flat]
    stages = _stages(cfg, votes)
    mask, w = stages[-1][2], stages[-1][3]  # stage 2 (high-vote rows) if configured, else weighted rows
    x_val = val.features()[cols].to_numpy(np.float32)
    y_val, v_val = val.targets, val.total_votes
    hv = v_val >= cfg.min_votes
    es_rows = hv if hv.sum() >= 10 else np.ones(len(hv), bool)
    model = create_model(model_name, **mcfg)
    t = time.perf_counter()
    model.fit(x[mask], y[mask], x_val[es_rows], y_val[es_rows], sample_weight=w[mask], seed=cfg.seed,
              feature_names=cols)  # fmt: skip
    fit_s = time.perf_counter() - t
    oof = model.predict_proba(x_val)
    test_pred = model.predict_proba(test.features()[cols].to_numpy(np.float32)) if test is not None else None
    metrics = _fold_metrics(y_val, oof, v_val, prior, cfg.min_votes)
    best = int(model.booster.best_iteration or model.booster.current_iteration())
    metrics.update(epochs=float(model.booster.current_iteration()), best_epoch=float(best),
                   n_params=float(model.n_params()), train_samples_per_s=float(mask.sum() / max(fit_s, 1e-9)))  # fmt: skip
    history = [{"epoch": h["round"], "val_soft_logloss": h["val_soft_logloss"]} for h in model.history]
    paths: dict[str, Path] = {}
    if ddp.context().is_main:
        final = out_dir / "final"
        paths["weights"] = model.save(final / "model.txt")
        config = {"model": model.get_config(), "input_kind": "features", "training": cfg.model_dump(mode="json"),
                  "preprocessing": preprocessing, "feature_names": cols, "weights_file": "model.txt",
                  "prior": prior.tolist(), "metrics": metrics}  # fmt: skip
        paths["config"] = write_json(final / "config.json", config)
        paths.update(_write_outputs(out_dir, val, oof, test, test_pred))
    return FoldResult(model_name, oof, _val_ids(val), test_pred, metrics, history, paths)


def _val_ids(val: Partition) -> Any:
    from hms_core.training.predict import ID_COLUMNS

    return val.index[[c for c in ID_COLUMNS if c in val.index.columns]].reset_index(drop=True)


# --- torch ----------------------------------------------------------------------------------------------------
def _train_torch(model_name: str, kind: str, mcfg: dict[str, Any], cfg: TrainingConfig, parts: list[Partition],
                 rows: np.ndarray, votes: np.ndarray, val: Partition, test: Partition | None, out_dir: Path,
                 prior: np.ndarray, loggers: Sequence[Any], resume: bool,
                 progress: Callable[[int, int], None] | None,
                 preprocessing: dict[str, Any] | None) -> FoldResult:  # fmt: skip
    ctx = ddp.context()
    device = resolve_device(cfg.device)
    amp = cfg.mixed_precision and device.type == "cuda"
    ispec: InputSpec = infer_input_spec(kind, parts[0], mcfg)
    _seed_everything(cfg.seed)
    model = create_model(model_name, **mcfg, n_chans=ispec.n_chans, n_times=ispec.n_times)
    if cfg.gradient_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    n_params = model.n_params()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    stages = _stages(cfg, votes)
    total_epochs = sum(s[1] for s in stages)
    sched = WarmupCosine(opt, total_epochs, cfg.warmup_epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    train_model: torch.nn.Module = model
    if ctx.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    ckpt_dir = out_dir / "checkpoints"
    chash = _config_hash(model_name, mcfg, cfg.model_dump(mode="json"), ispec.to_dict(),
                         [str(p.path) for p in parts], len(rows))  # fmt: skip
    state: dict[str, Any] = {"next_epoch": 0, "best": float("inf"), "best_epoch": -1, "bad_epochs": 0,
                             "history": [], "done": False, "train_seconds": 0.0, "train_samples": 0}  # fmt: skip
    ck = load_checkpoint(ckpt_dir / LAST, device) if resume else None
    if ck is not None and ck.get("config_hash") != chash:
        log.warning("%s: checkpoint was written for another config; starting afresh", ckpt_dir / LAST)
        ck = None
    if ck is None and ctx.is_main and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ddp.barrier()
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        set_rng_state(ck["rng"])
        state = ck["state"]
        log.info("resumed %s from epoch %d", out_dir, state["next_epoch"])
    eval_model = lambda: ema.module if ema is not None else model  # noqa: E731
    aug = AugmentParams.from_config(cfg.augment)
    val_ds = RowDataset([val], np.stack([np.zeros(len(val), np.int64), np.arange(len(val))], 1), ispec)
    v_targets, v_votes = val.targets, val.total_votes
    high = v_votes >= cfg.min_votes
    pin = device.type == "cuda"

    epoch = state["next_epoch"]
    while epoch < total_epochs and not state["done"]:
        si = max(i for i, s in enumerate(stages) if s[0] <= epoch)
        first, n_ep, mask, weights = stages[si]
        ds = RowDataset(parts, rows[mask], ispec, weights[mask], aug, cfg.seed)
        loader = make_loader(ds, cfg.batch_size, epoch, cfg.seed, True, cfg.num_workers, pin, drop_last=True,
                             rank=ctx.rank, world=ctx.world_size)  # fmt: skip
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch) + 1)
        train_model.train()
        steps = len(loader)
        losses, seen, te = [], 0, time.perf_counter()
        for i, (x, y, w) in enumerate(loader):
            lr = sched.set(epoch + i / max(steps, 1))
            x, y, w = (t.to(device, non_blocking=True) for t in (x, y, w))
            if cfg.augment.mixup_alpha > 0:
                x, y, w = mixup(x, y, w, cfg.augment.mixup_alpha, gen)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = train_model(x)
            loss = soft_kl_loss(logits, y, w)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update(model)
            losses.append(float(loss.detach()))
            seen += x.shape[0]
        sched.set(epoch + 1)
        train_s = time.perf_counter() - te
        state["train_seconds"] += train_s
        state["train_samples"] += seen * ctx.world_size
        probs = predict_torch(eval_model(), val_ds, max(cfg.batch_size, 64), device, cfg.flip_tta, cfg.num_workers, amp)
        val_kl = kl_divergence(v_targets, probs)
        score = kl_divergence(v_targets[high], probs[high]) if high.any() else val_kl
        rec = {"epoch": epoch, "stage": si + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "val_kl": val_kl, "val_kl_high_votes": score, "lr": lr if steps else sched.set(epoch + 1),
               "train_samples_per_s": seen * ctx.world_size / max(train_s, 1e-9)}  # fmt: skip
        state["history"].append(rec)
        if score < state["best"] - 1e-6:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
            if ctx.is_main:
                save_checkpoint(ckpt_dir / BEST, {"model": eval_model().state_dict(), "epoch": epoch, "score": score})
        else:
            state["bad_epochs"] += 1
        epoch += 1
        if state["bad_epochs"] >= cfg.early_stopping_patience:
            nxt = [s[0] for s in stages if s[0] > epoch - 1]
            log.info("early stopping at epoch %d (stage %d)", epoch - 1, si + 1)
            state["bad_epochs"] = 0
            if nxt:
                epoch = nxt[0]
            else:
                state["done"] = True
        if epoch >= total_epochs:
            state["done"] = True
        state["next_epoch"] = epoch
        if ctx.is_main:
            save_checkpoint(ckpt_dir / LAST, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "rng": rng_state(), "state": state, "config_hash": chash, "epoch": epoch - 1,
                "best_metric": state["best"],
            })  # fmt: skip
            for lg in loggers:
                lg.on_epoch_end(rec["epoch"], {k: v for k, v in rec.items() if k != "epoch"})
        ddp.barrier()
        if progress is not None:
            progress(min(epoch, total_epochs), total_epochs)

    # final weights: the best epoch's (EMA) weights
    best = load_checkpoint(ckpt_dir / BEST, device)
    final_model = eval_model()
    if best is not None:
        final_model.load_state_dict(best["model"])
    final_model.eval()
    oof = predict_torch(final_model, val_ds, max(cfg.batch_size, 64), device, cfg.flip_tta, cfg.num_workers, amp)
    test_pred = None
    if test is not None:
        tds = RowDataset([test], np.stack([np.zeros(len(test), np.int64), np.arange(len(test))], 1), ispec,
                         with_targets=False)  # fmt: skip
        test_pred = predict_torch(final_model, tds, max(cfg.batch_size, 64), device, cfg.flip_tta, cfg.num_workers, amp)
    metrics = _fold_metrics(v_targets, oof, v_votes, prior, cfg.min_votes)
    metrics.update(epochs=float(len(state["history"])), best_epoch=float(state["best_epoch"]), n_params=float(n_params),
                   train_samples_per_s=state["train_samples"] / max(state["train_seconds"], 1e-9))  # fmt: skip
    paths: dict[str, Path] = {"checkpoint": ckpt_dir / LAST}
    if ctx.is_main:
        final = out_dir / "final"
        from hms_core.io import atomic_path

        with atomic_path(final / "weights.pt", suffix=".tmp.pt") as tmp:
            torch.save(final_model.state_dict(), tmp)
        paths["weights"] = final / "weights.pt"
        config = {"model": model.get_config(), "input_kind": kind, "input_spec": ispec.to_dict(),
                  "training": cfg.model_dump(mode="json"), "preprocessing": preprocessing, "weights_file": "weights.pt",
                  "prior": prior.tolist(), "metrics": metrics, "ema": ema is not None}  # fmt: skip
        paths["config"] = write_json(final / "config.json", config)
        paths.update(_write_outputs(out_dir, val, oof, test, test_pred))
    ddp.barrier()
    return FoldResult(model_name, oof, _val_ids(val), test_pred, metrics, list(state["history"]), paths)
