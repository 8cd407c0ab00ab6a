"""The pretraining loop of the EEG foundation encoder: steps, atomic checkpoints, exact resume, outputs.

Each step draws its windows, its two augmented views, their patch masks and the dropout stream from
``(seed, step)`` alone (:class:`~hms_core.foundation.data.WindowSampler`, seeded generators), so the loop carries
no random state: ``checkpoints/last.pt`` (written atomically every ``checkpoint_every`` steps: model, optimiser,
schedule, AMP scaler, step, loss curve) is enough for a run killed with ``kill -9`` to continue bit-for-bit. The
checkpoint holds tensors and plain numbers only and is read with ``torch.load(weights_only=True)``.

Loss of one step: ``reconstruction_weight * MSE(masked raw patches) + spectrum_weight * MSE(masked log-amplitude
spectra) + contrastive_weight * InfoNCE(view 1, view 2)``, the MSE terms over the masked patches of both views
(one forward pass over both). Under DDP the InfoNCE negatives are the rank's own windows.

Outputs under ``out_dir``: ``encoder/weights.pt`` (the encoder's ``state_dict``) and ``encoder/config.json`` (its
architecture, channel vocabulary, patch length, the preprocessing and pretraining parameters, the corpus summary
and the final losses: everything :func:`load_encoder` needs, never a pickle), ``loss_curve.jsonl``,
``reconstruction.png`` (original vs reconstructed masked patches of held-out windows) and ``metrics.json``.

Mixed precision (float16 autocast + GradScaler) on CUDA; under ``torchrun`` (:mod:`hms_core.training.distributed`)
each rank takes its share of the step's windows, gradients are all-reduced by ``DistributedDataParallel`` and
only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hms_core.config import FoundationConfig
from hms_core.constants import SFREQ
from hms_core.foundation.data import Corpus, WindowSampler
from hms_core.foundation.masking import augment_view, random_patch_mask
from hms_core.foundation.model import CHANNELS, EEGEncoder, channel_index, patchify
from hms_core.foundation.objectives import FoundationPretrainer, info_nce
from hms_core.io import atomic_path, write_json, write_text
from hms_core.training import distributed
from hms_core.training.checkpoint import LAST, save_checkpoint

log = logging.getLogger(__name__)

__all__ = ["ENCODER_DIR", "PretrainResult", "load_encoder", "pretrain", "save_encoder"]

ENCODER_DIR = "encoder"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
CLIP_GRAD_NORM = 1.0


@dataclass
class PretrainResult:
    metrics: dict[str, float]
    history: list[dict[str, float]]
    paths: dict[str, Path]
    resumed_from: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "foundation.device is 'cuda' but torch.cuda.is_available() is False; use 'auto' or 'cpu'."
        )
    dev = torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)
    )
    ctx = distributed.context()
    return torch.device("cuda", ctx.local_rank) if dev.type == "cuda" and ctx.enabled else dev


def lr_factor(step: int, cfg: FoundationConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine to 1 % at ``steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min((step - cfg.warmup_steps) / span, 1.0)))


def build_pretrainer(cfg: FoundationConfig) -> FoundationPretrainer:
    torch.manual_seed(cfg.seed)
    encoder = EEGEncoder.from_size(cfg.model_size, dropout=cfg.dropout)
    return FoundationPretrainer(encoder, spectrum_target=cfg.spectrum_target)


def _gen(*seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng(list(seed)).integers(2**62)))


def step_losses(model: torch.nn.Module, x: torch.Tensor, usable: torch.Tensor, channels: torch.Tensor,
                cfg: FoundationConfig, seed: Sequence[int], amp: bool) -> dict[str, torch.Tensor]:  # fmt: skip
    """The weighted loss of one batch and its terms: two augmented, masked views of every window go through the
    model in one forward pass (one pass per step, as ``DistributedDataParallel`` expects); the MSE terms average
    the masked patches of both views, InfoNCE pairs view 1 with view 2."""
    g = _gen(*seed)
    n_patches = x.shape[-1] // model_encoder(model).patch_samples
    vs, keeps, masks = [], [], []
    for _ in range(2):
        v, keep = augment_view(x, usable, g)
        vs.append(v)
        keeps.append(keep)
        masks.append(random_patch_mask(keep, n_patches, cfg.mask_ratio, g))
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
        res = model(torch.cat(vs), torch.cat(keeps), channels, torch.cat(masks))
    out: dict[str, torch.Tensor] = {"recon": res["recon"]}
    total = cfg.reconstruction_weight * out["recon"]
    if cfg.spectrum_target:
        out["spectrum"] = res["spectrum"]
        total = total + cfg.spectrum_weight * out["spectrum"]
    z1, z2 = res["z"].chunk(2)
    out["contrastive"] = info_nce(z1, z2, cfg.temperature)
    total = total + cfg.contrastive_weight * out["contrastive"]
    out["loss"] = total
    return out


def model_encoder(model: torch.nn.Module) -> EEGEncoder:
    return (model.module if hasattr(model, "module") else model).encoder


def _config_hash(cfg: FoundationConfig, corpus: Corpus, sampler: WindowSampler) -> str:
    d = cfg.model_dump(mode="json")
    for k in ("checkpoint_every", "log_every", "torch_threads", "enabled"):
        d.pop(k, None)
    blob = json.dumps([d, corpus.manifest["key"], len(sampler.train_windows)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def evaluate(model: FoundationPretrainer, sampler: WindowSampler, cfg: FoundationConfig, channels: torch.Tensor,
             device: torch.device, amp: bool) -> dict[str, float]:  # fmt: skip
    """Losses on the held-out windows with fixed views and masks (the same every evaluation)."""
    was = model.training
    model.eval()
    x, q = sampler.get(sampler.eval_batch(cfg.eval_windows))
    out = step_losses(model, torch.from_numpy(x).to(device), torch.from_numpy(q).to(device), channels, cfg,
                      (cfg.seed, 17), amp)  # fmt: skip
    model.train(was)
    return {f"eval_{k}": float(v) for k, v in out.items()}


def pretrain(corpus: Corpus, cfg: FoundationConfig, out_dir: str | Path, loggers: Sequence[Any] = (),
             resume: bool = True, progress: Callable[[int, int], None] | None = None,
             preprocessing: dict[str, Any] | None = None,
             stop_after: int | None = None) -> PretrainResult:  # fmt: skip
    """Pretrain the encoder on ``corpus`` (see the module docstring). ``stop_after`` ends the loop early after
    that many steps (tests of resume), leaving only the checkpoint."""
    out = Path(out_dir)
    dctx = distributed.context()
    device = _device(cfg.device)
    amp = cfg.mixed_precision and device.type == "cuda"
    window, stride = cfg.window_s * SFREQ, cfg.stride_s * SFREQ
    sampler = WindowSampler(corpus, window, stride, cfg.seed)
    channels = channel_index(list(corpus.channels)).to(device)
    threads = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    try:
        model = build_pretrainer(cfg).to(device)
        decay = [p for n, p in model.named_parameters() if _decays(n, p)]
        other = [p for n, p in model.named_parameters() if not _decays(n, p)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": other, "weight_decay": 0.0}], lr=cfg.learning_rate)  # fmt: skip
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        train_model: torch.nn.Module = model
        if dctx.enabled:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        ckpt_dir = out / "checkpoints"
        chash = _config_hash(cfg, corpus, sampler)
        step, history, t_train = 0, [], 0.0
        ck = _load(ckpt_dir / LAST, device) if resume else None
        if ck is not None and ck.get("config_hash") != chash:
            log.warning("%s was written for another config or corpus; pretraining afresh", ckpt_dir / LAST)
            ck = None
        if ck is None and dctx.is_main and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        if ck is not None:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
            step, history, t_train = int(ck["step"]), list(ck["history"]), float(ck["train_seconds"])
            run_ck = {k: list(v) for k, v in ck.get("run", {}).items()}
            log.info("resumed pretraining in %s at step %d", out, step)
        resumed_from = step
        distributed.barrier()
        model.train()
        run: dict[str, list[float]] = run_ck if ck is not None else {}
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        while step < end:
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = cfg.learning_rate * lr_factor(step, cfg)
            x, q = sampler.get(sampler.batch(step, cfg.batch_size, dctx.rank, dctx.world_size))
            torch.manual_seed(int(np.random.default_rng([cfg.seed, step, 3]).integers(2**62)))  # dropout stream
            losses = step_losses(train_model, torch.from_numpy(x).to(device), torch.from_numpy(q).to(device),
                                 channels, cfg, (cfg.seed, step, 1), amp)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.unscale_(opt)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD_NORM)
            scaler.step(opt)
            scaler.update()
            t_train += time.perf_counter() - t0
            for k, v in losses.items():
                run.setdefault(k, []).append(float(v.detach()))
            run.setdefault("grad_norm", []).append(float(gnorm))
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                rec = {"step": step, **{k: float(np.mean(v)) for k, v in run.items()},
                       "lr": opt.param_groups[0]["lr"], "windows_per_s": step * cfg.batch_size / max(t_train, 1e-9)}  # fmt: skip
                run = {}
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    rec.update(evaluate(model, sampler, cfg, channels, device, amp))
                history.append(rec)
                if dctx.is_main:
                    for lg in loggers:
                        lg.on_epoch_end(step, rec)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if dctx.is_main:
                    save_checkpoint(ckpt_dir / LAST, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                      "scaler": scaler.state_dict(), "step": step,
                                                      "history": history, "run": run, "train_seconds": t_train,
                                                      "config_hash": chash})  # fmt: skip
                distributed.barrier()
            if progress is not None:
                progress(step, cfg.steps)
        paths: dict[str, Path] = {"checkpoint": ckpt_dir / LAST}
        last = history[-1] if history else {}
        metrics = {k: float(v) for k, v in last.items() if k != "step"}
        metrics.update(steps=float(step), resumed_from=float(resumed_from), train_seconds=t_train,
                       n_params_encoder=float(sum(p.numel() for p in model.encoder.parameters())),
                       n_train_windows=float(len(sampler.train_windows)),
                       n_eval_windows=float(len(sampler.eval_windows)),
                       n_train_recordings=float(sampler.n_train_recordings),
                       n_eval_recordings=float(sampler.n_eval_recordings))  # fmt: skip
        summary = {k: v for k, v in corpus.manifest.items() if k not in ("recordings", "preprocessing", "key")}
        if step < cfg.steps or not dctx.is_main:
            return PretrainResult(metrics, history, paths, resumed_from, summary)
        enc_dir = out / ENCODER_DIR
        paths.update(save_encoder(model.encoder, enc_dir, {
            "channels": list(corpus.channels), "pretraining": cfg.model_dump(mode="json"),
            "preprocessing": preprocessing or corpus.manifest.get("preprocessing"), "corpus": summary,
            "metrics": metrics}))  # fmt: skip
        paths["loss_curve"] = write_text(out / "loss_curve.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        paths["recon_plot"] = reconstruction_plot(
            model, sampler, channels, device, cfg, out / "reconstruction.png"
        )
        paths["metrics"] = write_json(out / "metrics.json", metrics)
        return PretrainResult(metrics, history, paths, resumed_from, summary)
    finally:
        torch.set_num_threads(threads)


def _decays(name: str, p: torch.Tensor) -> bool:
    """Weight decay on matrices only: not on norms, biases, the channel / time embeddings or the mask token."""
    return p.ndim >= 2 and not name.endswith(("channel_embed.weight", "time_embed.weight"))


def _load(path: Path, device: torch.device) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, map_location=device, weights_only=True)


def save_encoder(encoder: EEGEncoder, out_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """``weights.pt`` (state_dict) + ``config.json`` (architecture, vocabulary, patch length, ``extra``)."""
    out = Path(out_dir)
    with atomic_path(out / WEIGHTS_FILE, suffix=".tmp.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, tmp)
    config = {"architecture": encoder.get_config(), "vocabulary": list(CHANNELS), "sfreq": SFREQ,
              "weights_file": WEIGHTS_FILE, **(extra or {})}  # fmt: skip
    return {"encoder_weights": out / WEIGHTS_FILE, "encoder_config": write_json(out / CONFIG_FILE, config)}


def load_encoder(path: str | Path) -> tuple[EEGEncoder, dict[str, Any]]:
    """The encoder saved by :func:`save_encoder` in folder ``path`` and its config (``weights_only`` load)."""
    p = Path(path)
    cfile = p / CONFIG_FILE
    if not cfile.exists():
        raise FileNotFoundError(
            f"No pretrained encoder at '{p}' ({CONFIG_FILE} missing); run the foundation stage first "
            f"(hms run --stage foundation) or set models.eeg_foundation.pretrained: false."
        )
    config = json.loads(cfile.read_text())
    if list(config.get("vocabulary", [])) != list(CHANNELS):
        raise ValueError(f"{cfile}: channel vocabulary {config.get('vocabulary')} differs from {list(CHANNELS)}")
    enc = EEGEncoder.from_config(config["architecture"])
    enc.load_state_dict(torch.load(p / config.get("weights_file", WEIGHTS_FILE), map_location="cpu",
                                   weights_only=True))  # fmt: skip
    return enc, config


@torch.no_grad()
def reconstruction_plot(model: FoundationPretrainer, sampler: WindowSampler, channels: torch.Tensor,
                        device: torch.device, cfg: FoundationConfig, path: Path, n_chans: int = 4) -> Path:  # fmt: skip
    """PNG: for one held-out window, ``n_chans`` derivations, the original signal with the masked patches shaded
    and their reconstruction overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    x, q = sampler.get(sampler.eval_batch(1))
    xt, qt = torch.from_numpy(x).to(device), torch.from_numpy(q).to(device)
    n_p = x.shape[-1] // model.encoder.patch_samples
    mask = random_patch_mask(qt, n_p, cfg.mask_ratio, _gen(cfg.seed, 23))
    rec = model.reconstruct(xt, qt, channels, mask).float().cpu().reshape(1, x.shape[1], -1)[0].numpy()
    orig = patchify(xt, model.encoder.patch_samples).cpu().reshape(1, x.shape[1], -1)[0].numpy()
    m = mask[0].cpu().numpy()
    chans = [c for c in np.flatnonzero(q[0])][:n_chans]
    fig, axes = plt.subplots(len(chans), 1, figsize=(9, 1.6 * len(chans)), squeeze=False, sharex=True)
    t = np.arange(orig.shape[-1]) / SFREQ
    s = model.encoder.patch_samples
    for ax, c in zip(axes[:, 0], chans):
        ax.plot(t, orig[c], lw=0.6, color="k", label="original")
        rc = np.where(np.repeat(m[c], s), rec[c], np.nan)
        ax.plot(t, rc, lw=0.8, color="tab:red", label="reconstructed (masked patches)")
        for j in np.flatnonzero(m[c]):
            ax.axvspan(j * s / SFREQ, (j + 1) * s / SFREQ, color="tab:red", alpha=0.08)
        ax.set_ylabel(sampler.corpus.channels[c], fontsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("s")
    fig.suptitle("Held-out window: original vs reconstruction of masked 1-s patches", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=70, bbox_inches="tight")
    plt.close(fig)
    return path
