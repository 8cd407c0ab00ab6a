"""The foundation pretraining from the platform config: the one place that turns a config into a call.

The Dagster asset ``foundation_encoder`` and the ``torchrun`` entry point (``python -m hms_core.foundation.job``)
both call :func:`run_foundation`, so both read the same recordings, write the same folder and log the same runs:

    <root>/foundation/corpus/       the preprocessed recording blocks (shards; reused while unchanged)
    <root>/foundation/checkpoints/  last.pt (resume)
    <root>/foundation/encoder/      weights.pt + config.json (what eeg_foundation loads)
    <root>/foundation/{loss_curve.jsonl, reconstruction.png, metrics.json, recordings.json}

    torchrun --nproc_per_node=4 -m hms_core.foundation.job --config full
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hms_core.config import PlatformConfig, load_config
from hms_core.io import write_json

__all__ = ["FOUNDATION_DIR", "encoder_dir", "foundation_dir", "main", "prepare_corpus", "run_foundation"]

FOUNDATION_DIR = "foundation"


def foundation_dir(cfg: PlatformConfig) -> Path:
    return cfg.path(FOUNDATION_DIR)


def encoder_dir(cfg: PlatformConfig) -> Path:
    """Where the pretrained encoder lives (``models.eeg_foundation.encoder_path`` defaults to it)."""
    from hms_core.foundation.pretrain import ENCODER_DIR

    return foundation_dir(cfg) / ENCODER_DIR


def prepare_corpus(cfg: PlatformConfig, progress: Callable[[int, int], None] | None = None):
    """List and select the recordings (no labels read) and build (or reuse) the corpus."""
    from hms_core.foundation.data import build_corpus, list_recordings, select_recordings

    f = cfg.foundation
    recs = list_recordings(cfg.raw_dir, include_test=f.include_test)
    recs = select_recordings(recs, f.max_recordings, f.max_hours, f.seed)
    corpus = build_corpus(recs, cfg.preprocessing, foundation_dir(cfg) / "corpus", window=f.window_s * 200,
                          batch_size=min(cfg.dataset.processing_batch_size, 64), progress=progress)  # fmt: skip
    write_json(foundation_dir(cfg) / "recordings.json", corpus.manifest["recordings"])
    return corpus


def run_foundation(cfg: PlatformConfig, loggers: Sequence[Any] = (), resume: bool = True,
                   progress: Callable[[int, int], None] | None = None,
                   corpus_progress: Callable[[int, int], None] | None = None):  # fmt: skip
    """Build the corpus, then pretrain (resuming from ``checkpoints/last.pt``); returns the PretrainResult."""
    from hms_core.foundation.pretrain import pretrain
    from hms_core.training import distributed

    corpus = prepare_corpus(cfg, corpus_progress) if distributed.context().is_main else None
    distributed.barrier()
    if corpus is None:
        from hms_core.foundation.data import load_corpus

        corpus = load_corpus(foundation_dir(cfg) / "corpus")
    main = distributed.context().is_main
    params = {f"foundation.{k}": v for k, v in cfg.foundation.model_dump(mode="json").items()}
    params.update(n_recordings=corpus.manifest["n_recordings"], recording_hours=corpus.manifest["recording_hours"])
    if main:
        for lg in loggers:
            lg.on_start(params)
    res = pretrain(corpus, cfg.foundation, foundation_dir(cfg), loggers=loggers, resume=resume, progress=progress,
                   preprocessing=cfg.preprocessing.model_dump(mode="json"))  # fmt: skip
    if main:
        for lg in loggers:
            lg.on_end(res.metrics, [p for p in res.paths.values() if Path(p).is_file()])
    return res


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m hms_core.foundation.job --config PROFILE``: data-parallel pretraining (rank 0 writes)."""
    from hms_core.tracking import build_loggers
    from hms_core.training import distributed

    ap = argparse.ArgumentParser(description="Pretrain the EEG foundation encoder (torchrun-ready).")
    ap.add_argument("--config", default=None)
    ap.add_argument("--no-resume", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(a.config)
    distributed.init_distributed()
    try:
        loggers = build_loggers(cfg, "foundation_encoder", {"stage": "foundation", "profile": cfg.profile},
                                state_dir=foundation_dir(cfg)) if distributed.context().is_main else []  # fmt: skip
        res = run_foundation(cfg, loggers, resume=not a.no_resume)
        if distributed.context().is_main:
            print({k: round(v, 4) for k, v in res.metrics.items()})
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
