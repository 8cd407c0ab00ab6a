"""Drift and quality statistics: PSI + KS per feature with the warn / error rule, the minimum day size (checked
by simulation), the class mix, and KL / ECE against expert votes that arrive later."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hms_core.config import DriftConfig, QualityConfig
from hms_core.constants import CLASSES, VOTE_COLUMNS
from hms_core.monitoring.drift import ERROR, INSUFFICIENT, OK, WARN, compute_drift, min_windows_for_psi, psi
from hms_core.monitoring.log import PROB_COLUMNS
from hms_core.monitoring.quality import LabelsError, compute_quality, expected_kl, read_labels
from hms_core.monitoring.reference import bin_proportions, build_reference, quantile_edges

FEATURES = [f"f{i}" for i in range(20)]


def _features(n: int, seed: int, scale: float = 1.0, shift_cols: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0, 1, (n, len(FEATURES)))
    x[:, :shift_cols] *= scale
    return pd.DataFrame(x, columns=FEATURES)


def _probs(n: int, seed: int, mix: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.choice(6, n, p=np.full(6, 1 / 6) if mix is None else mix)
    p = rng.dirichlet(np.ones(6), n) * 0.4
    p[np.arange(n), k] += 0.6
    return p


def _day(n: int, seed: int, **kw) -> pd.DataFrame:
    mix = kw.pop("mix", None)
    df = _features(n, seed, **kw)
    p = _probs(n, seed + 1, mix)
    for j, c in enumerate(PROB_COLUMNS):
        df[c] = p[:, j]
    df["entropy"] = -(p * np.log(p)).sum(1)
    df["request_id"] = [f"r{i // 4}" for i in range(n)]
    return df


@pytest.fixture(scope="module")
def reference():
    return build_reference(_features(4000, 0), _probs(2000, 1), columns=FEATURES, n_bins=10, sample_size=2000)


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    r = np.full(10, 0.1)
    assert psi(r, r) == 0.0
    x = np.random.default_rng(0).normal(size=5000)
    e = quantile_edges(x, 10)
    small, large = (psi(bin_proportions(x, e), bin_proportions(x + d, e)) for d in (0.2, 1.0))
    assert 0.02 < small < 0.1 and large > 0.25


def test_min_windows_keeps_an_unshifted_day_below_psi_warn():
    """At the size the rule gives, 300 simulated unshifted days of 20 features stay below psi_warn on every
    feature in at least 98 % of days (the rule is for 99 % family-wise); at a quarter of it they do not."""
    n_bins, warn = 10, 0.1
    n = min_windows_for_psi(n_bins, warn, len(FEATURES), alpha=0.01, n_reference=20_000)
    assert 250 < n < 400
    rng = np.random.default_rng(3)
    ref = rng.normal(size=20_000)
    e = quantile_edges(ref, n_bins)
    r = bin_proportions(ref, e)

    def false_alarm_rate(size: int) -> float:
        days = rng.normal(size=(300, len(FEATURES), size))
        worst = [max(psi(r, bin_proportions(f, e)) for f in d) for d in days]
        return float(np.mean(np.asarray(worst) >= warn))

    assert false_alarm_rate(n) <= 0.02
    assert false_alarm_rate(n // 4) > 0.2
    with pytest.raises(ValueError, match="cannot tell a PSI"):
        min_windows_for_psi(10, 0.1, 50, n_reference=100)


def test_an_unshifted_day_passes_and_a_scaled_one_drifts(reference):
    cfg = DriftConfig()
    same = compute_drift(reference, _day(500, 10), cfg)
    assert same.status == OK and not same.drifted and same.min_windows > 300 and same.n_requests == 125
    scaled = compute_drift(reference, _day(500, 11, scale=2.0, shift_cols=5), cfg)
    assert scaled.status == ERROR and set(scaled.drifted) == set(FEATURES[:5])
    assert "5 feature(s) drifted" in scaled.reasons[0]
    assert scaled.features["feature"].iloc[0] in FEATURES[:5]  # sorted by PSI
    few = compute_drift(reference, _day(50, 12, scale=3.0), cfg)
    assert few.status == INSUFFICIENT and "50 windows logged" in few.reasons[0]
    tolerant = compute_drift(reference, _day(500, 11, scale=2.0, shift_cols=5), DriftConfig(max_error_features=5))
    assert tolerant.status == WARN  # 5 drifted features are allowed there: they only warn


def test_class_mix_drift_and_missing_columns(reference):
    mix = np.array([0.6, 0.08, 0.08, 0.08, 0.08, 0.08])
    day = _day(600, 20, mix=mix).drop(columns=["f19"])
    rep = compute_drift(reference, day, DriftConfig())
    assert rep.class_mix is not None and rep.class_mix.status == ERROR and rep.status == ERROR
    assert rep.class_mix.current[0] > 0.5 and "class mix" in rep.reasons[-1]
    assert rep.not_logged == ["f19"]
    doc = rep.to_dict()
    assert doc["class_mix"]["current"]["Seizure"] > 0.5 and doc["status"] == ERROR


def _labels(rows: pd.DataFrame, seed: int, n_votes: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rows[list(PROB_COLUMNS)].to_numpy()
    votes = np.stack([rng.multinomial(n_votes, q / q.sum()) for q in p])
    return pd.DataFrame({"window_id": rows["window_id"]} | {c: votes[:, k] for k, c in enumerate(VOTE_COLUMNS)})


def test_quality_against_votes(tmp_path):
    n = 200
    p, y = _probs(n, 5), None
    votes = np.random.default_rng(6).integers(10, 15, n)
    counts = np.stack([np.random.default_rng(i).multinomial(v, q) for i, (v, q) in enumerate(zip(votes, p))])
    y = counts / votes[:, None]
    ref = build_reference(_features(500, 0), p, targets=y, votes=votes, columns=FEATURES)
    rows = pd.DataFrame(
        {c: p[:, k] for k, c in enumerate(PROB_COLUMNS)} | {"window_id": [f"r:{i}" for i in range(n)]}
    )
    lab = tmp_path / "labels"
    lab.mkdir()
    _labels(rows, 1).to_csv(lab / "a.csv", index=False)
    good = compute_quality(ref, rows, read_labels(lab), QualityConfig())
    assert good.status == OK and good.n_labelled == n and 0.7 < good.ratio < 1.3 and good.ece < 0.1
    flat = rows.copy()
    flat[list(PROB_COLUMNS)] = 1 / 6  # a model that predicts the uniform distribution
    bad = compute_quality(ref, flat, read_labels(lab), QualityConfig())
    assert bad.status == ERROR and bad.ratio > 1.5 and "reference" in bad.reasons[0]
    assert set(bad.per_class["class"]) == set(CLASSES)
    few = compute_quality(ref, rows.head(5), read_labels(lab), QualityConfig())
    assert few.status == INSUFFICIENT and "5 of 5" in few.reasons[0]
    assert compute_quality(None, rows, read_labels(lab), QualityConfig()).ratio is None
    # bucket weighting: a day of 11-vote windows is compared with the 10-19-vote reference KL
    ten = next(b for b in ref.metrics["kl_by_votes"] if b["lo"] == 10)
    assert expected_kl(ref, np.full(10, 11)) == pytest.approx(ten["kl"])


def test_labels_files(tmp_path):
    assert read_labels(tmp_path / "none").empty
    pd.DataFrame({"window_id": ["a:0", "a:1"]} | {c: [1, 1] for c in VOTE_COLUMNS}).to_csv(
        tmp_path / "1.csv", index=False
    )
    pd.DataFrame({"window_id": ["a:1"]} | {c: [2] for c in VOTE_COLUMNS}).to_csv(tmp_path / "2.csv", index=False)
    lab = read_labels(tmp_path)
    assert len(lab) == 2 and lab.set_index("window_id").loc["a:1", "seizure_vote"] == 2  # the later file wins
    (tmp_path / "3.csv").write_text("window_id,seizure_vote\nx,1\n")
    with pytest.raises(LabelsError, match="3.csv lacks the columns"):
        read_labels(tmp_path)
    (tmp_path / "3.csv").write_text("window_id," + ",".join(VOTE_COLUMNS) + "\nx,0,0,0,0,0,0\n")
    with pytest.raises(LabelsError, match="row 2"):
        read_labels(tmp_path)
