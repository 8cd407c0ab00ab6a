"""The evaluation report: one self-contained HTML file (every figure embedded as a base64 PNG, no script, no
network) plus the PNGs themselves, from the files the ensemble stage wrote (:mod:`hms_core.ensemble.build`).

Sections: the KL table of every member and of the ensemble (patient-bootstrap 95 % intervals, all rows and
>= :data:`~hms_core.constants.HIGH_VOTE_THRESHOLD`-vote rows, each combiner's nested figure), the per-fold
spread, the confusion matrix against the expert consensus, per-class ROC and precision-recall curves with AUROC,
reliability diagrams before and after calibration, KL by vote count (with the perfect-model floor), predictive
vs rater-vote entropy, the ensemble weights, example windows (predicted vs voted) and the top of the review list.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hms_core.constants import CLASSES, HIGH_VOTE_THRESHOLD
from hms_core.ensemble.build import METRICS_FILE, OOF_FILE, RAW_PREFIX, REVIEW_FILE, WEIGHTS_FILE
from hms_core.ensemble.calibration import reliability_bins
from hms_core.ensemble.uncertainty import entropy
from hms_core.io import write_bytes, write_text
from hms_core.training.predict import PRED_COLUMNS, TARGET_COLUMNS

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"
REPORT_DIR = "report"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _kl_table(metrics: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, m in [*metrics["members"].items(), ("ENSEMBLE (nested CV)", metrics["ensemble"])]:
        rows.append({
            "model": name,
            "KL all rows": f"{m['kl']:.4f} [{m['kl_low']:.4f}, {m['kl_high']:.4f}]",
            f"KL >= {HIGH_VOTE_THRESHOLD} votes": f"{m['kl_high_votes']:.4f} "
            f"[{m['kl_high_votes_low']:.4f}, {m['kl_high_votes_high']:.4f}]",
            "accuracy vs consensus": f"{m['accuracy']:.3f}",
            "mean AUROC": f"{np.nanmean([m.get(f'auroc_{c}', np.nan) for c in CLASSES]):.3f}",
        })  # fmt: skip
    return pd.DataFrame(rows)


def _fig_folds(metrics: dict[str, Any]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    entries = [*metrics["members"].items(), ("ensemble", metrics["ensemble"])]
    for i, (name, m) in enumerate(entries):
        vals = list(m["per_fold"].values())
        ax.scatter(np.full(len(vals), i), vals, s=18, color="C3" if name == "ensemble" else "C0")
        ax.plot([i - 0.25, i + 0.25], [m["kl"]] * 2, color="k", lw=1)
    ax.set_xticks(range(len(entries)), [n for n, _ in entries], rotation=30, ha="right")
    ax.set_ylabel("KL per fold (bar: all rows)")
    ax.set_title("Per-fold spread (ensemble: nested CV)")
    return fig


def _fig_confusion(y: np.ndarray, p: np.ndarray):
    plt = _plt()
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y.argmax(1), p.argmax(1), labels=range(len(CLASSES))).astype(float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("ensemble argmax")
    ax.set_ylabel("expert consensus (vote argmax)")
    ax.set_title("Confusion matrix (row-normalised colour, counts)")
    return fig


def _fig_roc_pr(y: np.ndarray, p: np.ndarray):
    plt = _plt()
    from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    cons = y.argmax(1)
    for k, c in enumerate(CLASSES):
        pos = cons == k
        if not 0 < pos.sum() < len(pos):
            continue
        fpr, tpr, _ = roc_curve(pos, p[:, k])
        a1.plot(fpr, tpr, label=f"{c} AUROC {roc_auc_score(pos, p[:, k]):.3f}")
        prec, rec, _ = precision_recall_curve(pos, p[:, k])
        a2.plot(rec, prec, label=f"{c} AUPRC {auc(rec, prec):.3f}")
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest, consensus)")
    a2.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    return fig


def _fig_reliability(y: np.ndarray, raw: np.ndarray, cal: np.ndarray, metrics: dict[str, Any]):
    plt = _plt()
    c = metrics["calibration"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
    for ax, p, title, ece, kl in ((axes[0], raw, "before calibration", c["ece_before"], c["kl_before"]),
                                  (axes[1], cal, "after calibration", c["ece_after"], c["kl_after"])):  # fmt: skip
        b = reliability_bins(p, y)
        centres = (b["edges"][:-1] + b["edges"][1:]) / 2
        used = b["count"] > 0
        ax.bar(
            centres[used], b["agreement"][used], width=0.09, alpha=0.7, label="vote fraction of predicted class"
        )
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.plot(b["confidence"][used], b["agreement"][used], "o-", color="C3", ms=3, label="bin mean")
        ax.set(xlabel="confidence (max probability)", title=f"{title}: ECE {ece:.3f}, KL {kl:.4f}")
    axes[0].set_ylabel("agreement")
    axes[0].legend(fontsize=7)
    return fig


def _fig_votes(metrics: dict[str, Any]):
    plt = _plt()
    ens = pd.DataFrame(metrics["kl_by_votes"])
    best = pd.DataFrame(metrics["kl_by_votes_members"][metrics["best_member"]])
    x = np.arange(len(ens))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for off, df, label in ((-0.2, best, f"best member ({metrics['best_member']})"), (0.2, ens, "ensemble")):
        err = np.vstack([df["kl"] - df["kl_low"], df["kl_high"] - df["kl"]]).clip(min=0)
        ax.bar(x + off, df["kl"], width=0.4, yerr=np.nan_to_num(err), capsize=3, label=label)
    ax.scatter(x, ens["floor"], color="k", marker="_", s=300, label="perfect-model floor (k-1)/(2n)")
    ax.set_xticks(x, [f"{v}\n(n={r})" for v, r in zip(ens["votes"], ens["rows"])])
    ax.set(xlabel="votes per window", ylabel="KL (95 % patient bootstrap)", title="KL by vote count")
    ax.legend(fontsize=7)
    return fig


def _fig_entropy(y: np.ndarray, p: np.ndarray, metrics: dict[str, Any]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 3.8))
    ax.scatter(entropy(y), entropy(p), s=6, alpha=0.4)
    ax.set(
        xlabel="rater-vote entropy (nats)",
        ylabel="predictive entropy (nats)",
        title=f"Uncertainty vs rater disagreement\nSpearman {metrics['uncertainty']['entropy_spearman']:.3f}",
    )
    return fig


def _fig_weights(weights: dict[str, Any]):
    plt = _plt()
    w = weights["weights"]
    names = list(w) + list(weights.get("dropped", []))
    vals = [w.get(n, 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, vals, color=["C0" if n in w else "0.7" for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel="weight", title=f"Ensemble weights ({weights['combiner']}; grey = dropped)")
    return fig


def _fig_examples(oof: pd.DataFrame, y: np.ndarray, p: np.ndarray, review: pd.DataFrame, n: int, seed: int):
    plt = _plt()
    pick = []
    if "eeg_id" in review.columns and len(review):
        for eid in review["eeg_id"].head(max(n // 2, 1)):
            hit = np.flatnonzero(oof["eeg_id"].to_numpy() == eid)
            if hit.size:
                pick.append(int(hit[0]))
    rest = np.random.default_rng(seed).permutation(len(oof))
    pick += [int(i) for i in rest if int(i) not in pick][: max(n - len(pick), 0)]
    pick = pick[:n]
    cols = 3
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.6 * rows), squeeze=False, layout="constrained")
    x = np.arange(len(CLASSES))
    for ax, i in zip(axes.ravel(), pick):
        ax.bar(x - 0.2, y[i], width=0.4, label="voted")
        ax.bar(x + 0.2, p[i], width=0.4, label="predicted")
        ax.set_xticks(x, CLASSES, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"eeg {oof['eeg_id'].iloc[i]}, {int(oof['total_votes'].iloc[i])} votes", fontsize=8)
    for ax in axes.ravel()[len(pick) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Example windows: voted vs predicted (first: from the review list)", fontsize=9)
    return fig


#: Heading and caption of each figure in the HTML report.
FIGURE_TEXT: dict[str, tuple[str, str]] = {
    "per_fold_spread": (
        "Per-fold spread",
        "KL of each patient fold (dots) and over all rows (bar); the ensemble's folds are its nested-CV figures.",
    ),
    "confusion_matrix": ("Confusion matrix against the expert consensus", "Vote argmax vs ensemble argmax."),
    "roc_pr": ("ROC and precision-recall per class", "One class against the rest, the consensus as the label."),
    "reliability": (
        "Reliability before and after calibration",
        (
            "Confidence (largest probability) against the vote "
            "fraction of the predicted class; on the diagonal a 70 % prediction agrees with 70 % of raters."
        ),
    ),
    "kl_by_votes": (
        "KL by vote count",
        (
            "Windows with few votes have noisy targets: even a perfect model scores "
            "about (classes present - 1) / (2n) with n votes (black marks), so compare buckets, not rows."
        ),
    ),
    "entropy": (
        "Model uncertainty vs rater disagreement",
        (
            "A high rank correlation means the model is unsure where "
            "the raters disagree: its entropy flags windows that need expert review."
        ),
    ),
    "weights": ("Ensemble weights", "Members the selection dropped are grey."),
    "examples": (
        "Example windows",
        "Voted and predicted distributions; the first ones come from the review list.",
    ),
}


def _img(name: str, png: bytes) -> str:
    return f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/></figure>'


def write_report(ensemble_dir: str | os.PathLike[str], n_examples: int = 6, seed: int = 0,
                 title: str = "HMS ensemble evaluation") -> dict[str, Path]:  # fmt: skip
    """Write ``<ensemble_dir>/report/report.html`` and one PNG per figure; returns ``{name: path}``."""
    d = Path(ensemble_dir)
    for f in (METRICS_FILE, OOF_FILE, WEIGHTS_FILE, REVIEW_FILE):
        if not (d / f).is_file():
            raise FileNotFoundError(
                f"{d / f} does not exist: the ensemble asset writes it (run the ensemble stage)"
            )
    metrics = json.loads((d / METRICS_FILE).read_text())
    weights = json.loads((d / WEIGHTS_FILE).read_text())
    oof = pd.read_parquet(d / OOF_FILE)
    review = pd.read_csv(d / REVIEW_FILE)
    y = oof[list(TARGET_COLUMNS)].to_numpy(np.float64)
    p = oof[list(PRED_COLUMNS)].to_numpy(np.float64)
    raw = oof[[RAW_PREFIX + c for c in PRED_COLUMNS]].to_numpy(np.float64)
    figs = {
        "per_fold_spread": _fig_folds(metrics),
        "confusion_matrix": _fig_confusion(y, p),
        "roc_pr": _fig_roc_pr(y, p),
        "reliability": _fig_reliability(y, raw, p, metrics),
        "kl_by_votes": _fig_votes(metrics),
        "entropy": _fig_entropy(y, p, metrics),
        "weights": _fig_weights(weights),
    }
    if n_examples > 0:
        figs["examples"] = _fig_examples(oof, y, p, review, n_examples, seed)
    out_dir = d / REPORT_DIR
    pngs = {name: _png(fig) for name, fig in figs.items()}
    paths = {name: write_bytes(out_dir / f"{name}.png", b) for name, b in pngs.items()}
    comb = pd.DataFrame([{"combiner": k, "nested-CV KL": f"{v:.4f}"} for k, v in
                         metrics["nested_kl_by_combiner"].items()])  # fmt: skip
    gain = metrics["gain_vs_best"]
    summary = (
        f"<p>{metrics['n_rows']} out-of-fold windows ({metrics['n_rows_high_votes']} with >= {HIGH_VOTE_THRESHOLD} "
        f"votes) from {metrics['n_patients']} patients. Ensemble (<b>{html.escape(metrics['chosen_combiner'])}</b> over "
        f"{', '.join(map(html.escape, metrics['kept_members']))}; dropped: "
        f"{', '.join(map(html.escape, metrics['dropped_members'])) or 'none'}) nested-CV KL "
        f"<b>{metrics['ensemble_kl']:.4f}</b> vs best member {html.escape(metrics['best_member'])} "
        f"{metrics['best_member_kl']:.4f} ({gain:+.1%}). Check 'not worse than best member': "
        f"<b>{'passed' if metrics['check_not_worse_than_best'] else 'FAILED'}</b>. Intervals: 95 % patient bootstrap."
        " With n votes even a perfect model scores about (classes present - 1) / (2n); see the vote-count figure.</p>"
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>", summary,
        "<h2>KL per model and ensemble</h2>", _kl_table(metrics).to_html(index=False, escape=True),
        "<h3>Each combiner, nested CV</h3>", comb.to_html(index=False),
        *(f"<h2>{FIGURE_TEXT[n][0]}</h2><p>{html.escape(FIGURE_TEXT[n][1])}</p>{_img(n, png)}" for n, png in pngs.items()),
        "<h2>Review list (top 20)</h2>",
        f"<p>Windows where the ensemble most disagrees with the raters or is most unsure (full list: {REVIEW_FILE}).</p>",
        review.head(20).to_html(index=False, escape=True),
    ]  # fmt: skip
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")  # fmt: skip
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")  # fmt: skip
    paths["html"] = write_text(out_dir / REPORT_FILE, doc)
    return paths
