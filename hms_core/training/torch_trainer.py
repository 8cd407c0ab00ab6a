"""The trainer of the ``pytorch`` framework, in the manner of timm's ``train.py``.

:func:`fit` builds the model, the optimiser, the schedule and the EMA through small factories
(:func:`create_optimizer`, :func:`create_scheduler`, :func:`create_ema`), restores ``checkpoints/last.pt`` when
resuming, then runs epochs of :func:`train_one_epoch` and :func:`evaluate` (plain functions returning metrics),
early-stops per stage on a smoothed validation KL (of the high-vote rows, or of every row when a fold has too few;
:func:`~hms_core.training.schedule.monitor_mask`), stretches a small fold's schedule to ``training.min_steps``
optimizer steps (:func:`plan_fold_schedule`), and ends with :func:`finalize` (best weights,
out-of-fold and test predictions, ``final/``).

Every epoch writes ``checkpoints/last.pt`` (model, optimiser, schedule, scaler, EMA, RNG states, loop state)
atomically, so a run killed with ``kill -9`` continues bit-for-bit: shuffling, augmentation, mixup and dropout are
all seeded by ``(seed, epoch)``. Under DDP each rank trains on its shard, evaluates all validation rows, and only
rank 0 writes.

``FitContext.early_stopping=False`` (a refit on every fold, :mod:`hms_core.training.refit`) runs the planned epochs
to the end without evaluating between them; the last epoch's (EMA) weights are the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hms_core.config import TrainingConfig
from hms_core.io import atomic_path, write_json
from hms_core.metrics import kl_divergence
from hms_core.models.registry import create_model
from hms_core.training import distributed
from hms_core.training.augment import mixup, soft_kl_loss
from hms_core.training.checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hms_core.training.data import AugmentParams, RowDataset, all_rows, make_loader
from hms_core.training.fold import FitContext, FoldData, FoldResult, fold_metrics, val_ids, write_fold_outputs
from hms_core.training.inputs import InputSpec, infer_input_spec
from hms_core.training.predict import predict_torch
from hms_core.training.schedule import (
    EMA,
    EarlyStopping,
    SchedulePlan,
    WarmupCosine,
    monitor_mask,
    plan_schedule,
    steps_per_epoch,
)

log = logging.getLogger(__name__)

__all__ = [
    "TrainState",
    "create_ema",
    "create_optimizer",
    "create_scheduler",
    "evaluate",
    "finalize",
    "fit",
    "plan_fold_schedule",
    "resolve_device",
    "train_one_epoch",
]

#: Gradient-norm clip of every optimiser step.
CLIP_GRAD_NORM = 5.0


# --- factories ------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "training.device is 'cuda' but torch.cuda.is_available() is False; use 'auto' or 'cpu'."
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = distributed.context()
    if name == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


def create_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW over the model's own parameter groups when it has ``param_groups(lr, weight_decay)`` (e.g. layer-wise
    learning-rate decay), else over all its parameters."""
    if hasattr(model, "param_groups"):
        return torch.optim.AdamW(model.param_groups(cfg.learning_rate, cfg.weight_decay), lr=cfg.learning_rate,
                                 weight_decay=cfg.weight_decay)  # fmt: skip
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def plan_fold_schedule(data: FoldData, cfg: TrainingConfig) -> tuple[FoldData, SchedulePlan]:
    """The fold's stages, warm-up and patience stretched to at least ``training.min_steps`` optimizer steps."""
    world = distributed.context().world_size
    plan = plan_schedule([s.n_epochs for s in data.stages],
                         [steps_per_epoch(int(s.mask.sum()), cfg.batch_size, world) for s in data.stages],
                         cfg.warmup_epochs, cfg.early_stopping_patience, cfg.min_steps)  # fmt: skip
    if plan.factor > 1:
        log.info("schedule stretched x%.2f to %d epochs (%d optimizer steps, training.min_steps=%d)",
                 plan.factor, plan.total_epochs, plan.steps, cfg.min_steps)  # fmt: skip
    stages = [replace(s, first_epoch=f, n_epochs=n)
              for s, f, n in zip(data.stages, plan.stage_starts(), plan.stage_epochs)]  # fmt: skip
    return replace(data, stages=stages), plan


def create_scheduler(optimizer: torch.optim.Optimizer, plan: SchedulePlan) -> WarmupCosine:
    return WarmupCosine(optimizer, plan.total_epochs, plan.warmup_epochs)


def create_ema(model: torch.nn.Module, cfg: TrainingConfig) -> EMA | None:
    return EMA(model, cfg.ema_decay) if cfg.ema_decay else None


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 99]).integers(2**62))


def _config_hash(*objs: Any) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- loop state -----------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What the epoch loop carries between epochs (saved in ``last.pt``)."""

    next_epoch: int = 0
    best: float = float("inf")
    best_epoch: int = -1
    stopping: dict[str, Any] = field(default_factory=dict)  # EarlyStopping.state_dict()
    history: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    train_seconds: float = 0.0
    train_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


@dataclass
class _Trainable:
    """The objects one torch training owns (built by the factories, restored from a checkpoint)."""

    model: torch.nn.Module
    train_model: torch.nn.Module  # ``model`` or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    scaler: torch.amp.GradScaler
    ema: EMA | None
    device: torch.device
    amp: bool

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None}  # fmt: skip

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None and ck.get("ema") is not None:
            self.ema.load_state_dict(ck["ema"])


# --- one epoch ------------------------------------------------------------------------------------------------
def train_one_epoch(t: _Trainable, loader: torch.utils.data.DataLoader, epoch: int, cfg: TrainingConfig,
                    world_size: int = 1) -> dict[str, float]:  # fmt: skip
    """One pass over ``loader``: mixup, autocast forward, soft-KL loss, clipped AdamW step, EMA update.

    The schedule is set per step (fractional epochs). Returns ``train_loss``, ``lr``, ``train_samples`` (all ranks),
    ``train_seconds`` and ``train_samples_per_s``.
    """
    torch.manual_seed(epoch_seed(cfg.seed, epoch))
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) + 1)
    t.train_model.train()
    steps = len(loader)
    losses, seen, t0 = [], 0, time.perf_counter()
    lr = float("nan")
    for i, (x, y, w) in enumerate(loader):
        lr = t.scheduler.set(epoch + i / max(steps, 1))
        x, y, w = (v.to(t.device, non_blocking=True) for v in (x, y, w))
        if cfg.augment.mixup_alpha > 0:
            x, y, w = mixup(x, y, w, cfg.augment.mixup_alpha, gen)
        with torch.autocast(t.device.type, dtype=torch.float16, enabled=t.amp):
            logits = t.train_model(x)
        loss = soft_kl_loss(logits, y, w)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), CLIP_GRAD_NORM)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        if t.ema is not None:
            t.ema.update(t.model)
        losses.append(float(loss.detach()))
        seen += x.shape[0]
    end_lr = t.scheduler.set(epoch + 1)
    secs = time.perf_counter() - t0
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "lr": lr if steps else end_lr,
            "train_samples": float(seen * world_size), "train_seconds": secs,
            "train_samples_per_s": seen * world_size / max(secs, 1e-9)}  # fmt: skip


def evaluate(model: torch.nn.Module, ds: RowDataset, targets: np.ndarray, high_votes: np.ndarray,
             cfg: TrainingConfig, device: torch.device, amp: bool) -> tuple[dict[str, float], np.ndarray]:  # fmt: skip
    """Validation KL on all rows and on high-vote rows (the early-stopping score); returns (metrics, probs)."""
    probs = predict_torch(model, ds, max(cfg.batch_size, 64), device, cfg.flip_tta, cfg.num_workers, amp)
    val_kl = kl_divergence(targets, probs)
    score = kl_divergence(targets[high_votes], probs[high_votes]) if high_votes.any() else val_kl
    return {"val_kl": val_kl, "val_kl_high_votes": score}, probs


def finalize(t: _Trainable, data: FoldData, ctx: FitContext, ispec: InputSpec, state: TrainState,
             val_ds: RowDataset) -> FoldResult:  # fmt: skip
    """Load the best epoch's (EMA) weights, predict validation and test rows, write ``final/`` and predictions."""
    cfg, out_dir = ctx.cfg, ctx.out_dir
    dctx = distributed.context()
    ckpt_dir = out_dir / "checkpoints"
    best = load_checkpoint(ckpt_dir / BEST, t.device)
    final_model = t.eval_model
    if best is not None:
        final_model.load_state_dict(best["model"])
    final_model.eval()
    bs = max(cfg.batch_size, 64)
    oof = predict_torch(final_model, val_ds, bs, t.device, cfg.flip_tta, cfg.num_workers, t.amp)
    test_pred = None
    if data.test is not None:
        tds = RowDataset([data.test], all_rows(data.test), ispec, with_targets=False)
        test_pred = predict_torch(final_model, tds, bs, t.device, cfg.flip_tta, cfg.num_workers, t.amp)
    metrics = fold_metrics(data.val.targets, oof, data.val.total_votes, data.prior)
    metrics.update(epochs=float(len(state.history)), best_epoch=float(state.best_epoch),
                   n_params=float(t.model.n_params()),
                   train_samples_per_s=state.train_samples / max(state.train_seconds, 1e-9))  # fmt: skip
    paths: dict[str, Path] = {"checkpoint": ckpt_dir / LAST}
    if dctx.is_main:
        final = out_dir / "final"
        with atomic_path(final / "weights.pt", suffix=".tmp.pt") as tmp:
            torch.save(final_model.state_dict(), tmp)
        paths["weights"] = final / "weights.pt"
        config = {"model": t.model.get_config(), "input_kind": ctx.spec.input_kind, "input_spec": ispec.to_dict(),
                  "training": cfg.model_dump(mode="json"), "preprocessing": ctx.preprocessing,
                  "weights_file": "weights.pt", "prior": data.prior.tolist(), "metrics": metrics,
                  "ema": t.ema is not None}  # fmt: skip
        paths["config"] = write_json(final / "config.json", config)
        paths.update(write_fold_outputs(out_dir, data, oof, test_pred))
    distributed.barrier()
    return FoldResult(ctx.model_name, oof, val_ids(data.val), test_pred, metrics, list(state.history), paths)


# --- the whole fit --------------------------------------------------------------------------------------------
def _build(data: FoldData, ctx: FitContext, plan: SchedulePlan) -> tuple[_Trainable, InputSpec]:
    cfg = ctx.cfg
    dctx = distributed.context()
    device = resolve_device(cfg.device)
    amp = cfg.mixed_precision and device.type == "cuda"
    ispec = infer_input_spec(ctx.spec.input_kind, data.train[0], ctx.model_cfg)
    seed_everything(cfg.seed)
    model = create_model(ctx.model_name, **ctx.model_cfg, n_chans=ispec.n_chans, n_times=ispec.n_times)
    if cfg.gradient_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    opt = create_optimizer(model, cfg)
    sched = create_scheduler(opt, plan)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ema = create_ema(model, cfg)
    train_model: torch.nn.Module = model
    if dctx.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Trainable(model, train_model, opt, sched, scaler, ema, device, amp), ispec


def _restore(t: _Trainable, data: FoldData, ctx: FitContext, ispec: InputSpec) -> tuple[TrainState, str]:
    """The loop state from ``last.pt`` when resuming with the same config; otherwise a fresh state (old
    checkpoints are removed)."""
    ckpt_dir = ctx.out_dir / "checkpoints"
    chash = _config_hash(ctx.model_name, ctx.model_cfg, ctx.cfg.model_dump(mode="json"), ispec.to_dict(),
                         data.train_dirs, len(data.rows),
                         *([] if ctx.early_stopping else ["fixed schedule"]))  # fmt: skip
    ck = load_checkpoint(ckpt_dir / LAST, t.device) if ctx.resume else None
    if ck is not None and ck.get("config_hash") != chash:
        log.warning("%s: checkpoint was written for another config; starting afresh", ckpt_dir / LAST)
        ck = None
    if ck is None and distributed.context().is_main and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    distributed.barrier()
    if ck is None:
        return TrainState(), chash
    t.load_state_dict(ck)
    set_rng_state(ck["rng"])
    state = TrainState.from_dict(ck["state"])
    log.info("resumed %s from epoch %d", ctx.out_dir, state.next_epoch)
    return state, chash


def fit(data: FoldData, ctx: FitContext) -> FoldResult:
    """Train a registered torch model on ``data`` (see the module docstring)."""
    cfg = ctx.cfg
    dctx = distributed.context()
    data, plan = plan_fold_schedule(data, cfg)
    t, ispec = _build(data, ctx, plan)
    state, chash = _restore(t, data, ctx, ispec)
    stopper = EarlyStopping(plan.patience)
    if state.stopping:
        stopper.load_state_dict(state.stopping)
    ckpt_dir = ctx.out_dir / "checkpoints"
    aug = AugmentParams.from_config(cfg.augment)
    val_ds = RowDataset([data.val], all_rows(data.val), ispec)
    v_targets, high = data.val.targets, data.val_high_votes
    monitored = monitor_mask(high)  # the high-vote rows, or every row when the fold has too few of them
    pin = t.device.type == "cuda"
    total = data.total_epochs

    epoch = state.next_epoch
    while epoch < total and not state.done:
        stage = data.stage_at(epoch)
        ds = RowDataset(data.train, data.rows[stage.mask], ispec, stage.weights[stage.mask], aug, cfg.seed)
        loader = make_loader(ds, cfg.batch_size, epoch, cfg.seed, True, cfg.num_workers, pin, drop_last=True,
                             rank=dctx.rank, world=dctx.world_size)  # fmt: skip
        tr = train_one_epoch(t, loader, epoch, cfg, dctx.world_size)
        state.train_seconds += tr["train_seconds"]
        state.train_samples += int(tr["train_samples"])
        if ctx.early_stopping:
            ev, probs = evaluate(t.eval_model, val_ds, v_targets, high, cfg, t.device, t.amp)
            score = kl_divergence(v_targets[monitored], probs[monitored])
            improved = stopper.update(score)
        else:  # a fixed schedule (a refit): no held-out rows to choose by, the last epoch is the model
            ev, score, improved = {}, float("nan"), True
        rec = {"epoch": epoch, "stage": stage.number, "train_loss": tr["train_loss"], **ev, "lr": tr["lr"],
               "train_samples_per_s": tr["train_samples_per_s"]}  # fmt: skip
        state.history.append(rec)
        if improved:
            state.best, state.best_epoch = score, epoch
            if dctx.is_main:
                save_checkpoint(
                    ckpt_dir / BEST, {"model": t.eval_model.state_dict(), "epoch": epoch, "score": score}
                )
        finished = epoch
        epoch += 1
        if ctx.early_stopping and stopper.should_stop:
            log.info("early stopping at epoch %d (stage %d)", finished, stage.number)
            stopper.reset_patience()
            nxt = data.next_stage_start(finished)
            if nxt is not None:
                epoch = nxt
            else:
                state.done = True
        if epoch >= total:
            state.done = True
        state.next_epoch, state.stopping = epoch, stopper.state_dict()
        if dctx.is_main:
            save_checkpoint(ckpt_dir / LAST, {**t.state_dict(), "rng": rng_state(), "state": state.to_dict(),
                                              "config_hash": chash, "epoch": finished,
                                              "best_metric": state.best})  # fmt: skip
            ctx.log_epoch(finished, rec)
        distributed.barrier()
        if ctx.progress is not None:
            ctx.progress(min(epoch, total), total)
    return finalize(t, data, ctx, ispec, state, val_ds)
