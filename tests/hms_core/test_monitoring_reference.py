"""The drift reference: quantile bins of the training values, KS samples, the out-of-fold class mix and metrics,
saved and read back; built from a trained workspace exactly as the export stage stores it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hms_core.constants import CLASSES
from hms_core.monitoring.log import monitored_feature_columns
from hms_core.monitoring.reference import (
    ENTROPY,
    REFERENCE_FILE,
    ReferenceDataError,
    bin_counts,
    build_reference,
    load_reference,
    quantile_edges,
    reference_from_workspace,
)


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = monitored_feature_columns()
    df = pd.DataFrame({c: rng.lognormal(0, 1, n) for c in cols if "gamma" not in c})  # gamma: filtered away
    df["flagged_fraction"] = np.where(rng.random(n) < 0.7, 0.0, rng.random(n))  # a point mass at 0
    return df


def _preds(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(6) * 2, n)
    votes = rng.integers(1, 25, n)
    counts = np.stack([rng.multinomial(v, q) for v, q in zip(votes, p)])
    return p, counts / votes[:, None], votes


def test_bins_hold_equal_training_mass_and_a_point_mass_gets_its_own_bin():
    x = np.random.default_rng(1).normal(size=10_000)
    edges = quantile_edges(x, 10)
    assert len(edges) == 9
    np.testing.assert_allclose(bin_counts(x, edges) / x.size, 0.1, atol=0.002)
    y = np.concatenate([np.zeros(7000), np.linspace(0.01, 1, 3000)])
    e = quantile_edges(y, 10)
    assert e[0] == 0.0 and len(e) < 9  # the quantiles inside the point mass collapse into one edge
    c = bin_counts(y, e)
    assert c[0] == 7000 and c.sum() == 10_000


def test_reference_round_trip_and_contents(tmp_path):
    feats = _table(3000)
    p, y, votes = _preds(800)
    ref = build_reference(feats, p, targets=y, votes=votes, n_bins=10, sample_size=500, source={"version": "t"})
    assert ENTROPY in ref.bins and set(ref.features) == set(feats.columns)
    assert sorted(ref.source["missing_features"]) == sorted(c for c in monitored_feature_columns() if "gamma" in c)
    np.testing.assert_allclose(ref.class_mix, np.bincount(p.argmax(1), minlength=6) / 800)
    assert ref.features_sample.shape == (500, len(ref.features)) and len(ref.predictions_sample) == 500
    assert 0 < ref.metrics["kl"] < 5 and 0 <= ref.metrics["ece"] <= 1
    assert sum(b["rows"] for b in ref.metrics["kl_by_votes"]) == 800
    paths = ref.save(tmp_path / "reference")
    assert set(paths) == {"reference", "features_sample", "predictions_sample"}
    back = load_reference(tmp_path / "reference")
    assert back.to_dict() == json.loads(json.dumps(ref.to_dict()))
    np.testing.assert_allclose(back.sample("LL_delta_abs"), ref.sample("LL_delta_abs"))
    with pytest.raises(ReferenceDataError, match="no sample of 'nope'"):
        back.sample("nope")
    doc = json.loads((tmp_path / "reference" / REFERENCE_FILE).read_text())
    assert doc["classes"] == list(CLASSES) and "eeg_id" not in json.dumps(doc)


def test_reference_errors_name_what_is_wrong(tmp_path):
    p, _, _ = _preds(10)
    with pytest.raises(ReferenceDataError, match="no rows"):
        build_reference(pd.DataFrame(), p)
    with pytest.raises(ReferenceDataError, match="shaped"):
        build_reference(_table(10), p[:, :5])
    with pytest.raises(ReferenceDataError, match="none of the monitored features"):
        build_reference(pd.DataFrame({"x": [1.0]}), p)
    with pytest.raises(ReferenceDataError, match="does not exist"):
        load_reference(tmp_path)
    (tmp_path / REFERENCE_FILE).write_text('{"format": 99}')
    with pytest.raises(ReferenceDataError, match="expected format 1"):
        load_reference(tmp_path)


def test_reference_of_a_trained_workspace(trained_workspace, tmp_path):
    cfg = trained_workspace.cfg
    ref = reference_from_workspace(cfg)
    oof = pd.read_parquet(cfg.ensemble_dir / "oof.parquet")
    n_windows = sum(
        len(pd.read_parquet(cfg.processed_dir / "windows" / f / "index.parquet")) for f in cfg.fold_names
    )
    assert ref.n_windows == n_windows and ref.n_predictions == len(oof)
    assert ref.source["folds"] == cfg.fold_names and not ref.source["missing_features"]
    assert {"LL_delta_abs", "RP_hjorth_activity", "flagged_fraction"} <= set(ref.features)
    assert ref.metrics["n_labelled"] == len(oof) and np.isfinite(ref.metrics["kl"])
    ref.save(tmp_path / "ref")
    assert load_reference(tmp_path / "ref").n_windows == n_windows
