"""Foundation stage: ``foundation_encoder``, the self-supervised pretraining of the EEG encoder (unpartitioned).

It reads every recording of ``raw_dataset`` (train and test; only the ``eeg_id`` columns of the tables, never a
label), builds the corpus and pretrains through :func:`hms_core.foundation.job.run_foundation` (the same call as
the ``torchrun`` entry point), resuming from its last checkpoint after a crash or ``kill -9``. Metadata: the
recordings and hours used (the full list in ``recordings.json``), ``labels_read: false``, the loss curve, a plot of
reconstructed vs original patches, the encoder's paths and size. Training shares the ``gpu`` pool with the models.
"""

import dagster as dg

from hms_dagster.assets.data import RAW_KEYS, code_version
from hms_dagster.resources import WorkspaceResource, progress_logger
from hms_dagster.stages import FOUNDATION, FOUNDATION_ENCODER, RAW_DATASET

GROUP = FOUNDATION
#: What the encoder depends on: the raw data, the EEG preprocessing it shares with training, its own section.
FOUNDATION_KEYS = (*RAW_KEYS, "preprocessing.eeg", "foundation")


def _curve_markdown(history: list[dict]) -> str:
    from hms_core.plots import _plt, _png_markdown

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    steps = [h["step"] for h in history]
    for key in ("loss", "recon", "spectrum", "contrastive"):
        if history and key in history[0]:
            ax.plot(steps, [h[key] for h in history], label=f"train {key}", lw=1)
    ev = [h for h in history if "eval_loss" in h]
    if ev:
        ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], "k--o", ms=3, label="held-out loss")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    return _png_markdown(fig, "Pretraining loss curve")


def build_foundation_assets(cfg) -> list:
    if not cfg.foundation.enabled:
        return []

    @dg.asset(
        name=FOUNDATION_ENCODER,
        group_name=GROUP,
        deps=[RAW_DATASET],
        code_version=code_version(cfg, FOUNDATION_KEYS),
        kinds={"pytorch"},
        pool="gpu",
        description="Self-supervised EEG encoder (masked 1-s patch reconstruction + InfoNCE) pretrained on every "
        "available recording, train and test, without labels; eeg_foundation fine-tunes it.",
    )
    def foundation_encoder(context: dg.AssetExecutionContext, workspace: WorkspaceResource):  # fmt: skip
        import base64

        from hms_core.foundation.job import foundation_dir, run_foundation
        from hms_core.tracking import build_loggers

        cfg = workspace.config
        loggers = build_loggers(cfg, FOUNDATION_ENCODER, {"stage": FOUNDATION, "profile": cfg.profile,
                                                            "dagster_run_id": context.run.run_id},
                                state_dir=foundation_dir(cfg))  # fmt: skip
        res = run_foundation(cfg, loggers, resume=True, progress=progress_logger(context, "pretraining", "step "),
                             corpus_progress=progress_logger(context, "corpus", "block "))  # fmt: skip
        s = res.summary
        meta = {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in res.metrics.items()}
        meta.update(
            labels_read=False,
            columns_read="train.csv: eeg_id; test.csv: eeg_id (no vote, consensus or patient column)",
            n_recordings=int(s["n_recordings"]), n_train_recordings=int(s["n_train_recordings"]),
            n_test_recordings=int(s["n_test_recordings"]), recording_hours=float(s["recording_hours"]),
            corpus_hours=float(s["block_hours"]), n_blocks=int(s["n_blocks"]),
            recordings=dg.MetadataValue.path(str(foundation_dir(cfg) / "recordings.json")),
            model_size=cfg.foundation.model_size,
        )  # fmt: skip
        meta.update({f"path_{p}": dg.MetadataValue.path(str(v)) for p, v in res.paths.items()})
        if res.history:
            meta["loss_curve"] = dg.MetadataValue.md(_curve_markdown(res.history))
        png = res.paths.get("recon_plot")
        if png is not None and png.exists():
            b64 = base64.b64encode(png.read_bytes()).decode()
            meta["reconstruction"] = dg.MetadataValue.md(
                f"**Original vs reconstructed masked patches (held-out window)**\n\n![recon](data:image/png;base64,{b64})"
            )
        return dg.MaterializeResult(metadata=meta)

    return [foundation_encoder]
