"""The ensemble: weight fitting, member selection, nested CV, calibration, uncertainty, outputs, config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax, softmax

from hms_core.config import ConfigError, load_config, parse_override
from hms_core.constants import CLASSES, HIGH_VOTE_THRESHOLD, VOTE_COLUMNS
from hms_core.ensemble.build import build_ensemble, load_ensemble
from hms_core.ensemble.calibration import Calibrator, expected_calibration_error
from hms_core.ensemble.combiners import LogLinearCombiner, MeanCombiner, StackingCombiner, combiner_from_dict
from hms_core.ensemble.members import MemberError, load_members
from hms_core.ensemble.nested import cv_predict, nested_cv, select_members
from hms_core.ensemble.testing import constructed_members, write_member_outputs
from hms_core.ensemble.uncertainty import bootstrap_mean, kl_by_vote_bucket, review_list, vote_floor
from hms_core.metrics import kl_divergence, kl_divergence_rows

KINDS = ["mean", "log_linear", "stacking"]


def _kl(y, p):
    return kl_divergence(y, p)


def test_log_linear_recovers_known_weights_and_bias():
    rng = np.random.default_rng(0)
    n, m = 3000, 3
    member_logits = rng.normal(0, 1.5, (m, n, 6))
    p = softmax(member_logits, axis=2)
    w_true, b_true = np.array([0.7, 0.0, 1.3]), np.array([0.4, -0.2, 0.0, 0.1, -0.5, 0.2])
    y = softmax(np.tensordot(w_true, log_softmax(member_logits, axis=2), axes=1) + b_true, axis=1)
    c = LogLinearCombiner(members=["a", "b", "c"]).fit(p, y)
    np.testing.assert_allclose(c.weights, w_true, atol=0.02)
    np.testing.assert_allclose(c.bias, b_true - b_true.mean(), atol=0.02)
    assert _kl(y, c.predict(p)) < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_blend_never_worse_than_its_best_member_on_its_training_data(seed):
    d = constructed_members(600, scales=[0.9, 0.5, 0.3, 1.4], noises=[1.0, 1.5, 0.5, 2.5], seed=seed)
    p, y = d["members"], d["targets"]
    best = min(_kl(y, q) for q in p)
    assert _kl(y, LogLinearCombiner(members=list("abcd")).fit(p, y).predict(p)) <= best + 1e-9
    # greedy selection starts from the best member: its CV KL is never worse than that member's alone
    names = list("abcd")
    sel = select_members("log_linear", p, y, d["fold"], names)
    alone = min(_kl(y, cv_predict("log_linear", p, y, d["fold"], names, [j])) for j in range(4))
    assert sel.cv_kl <= alone + 1e-12


def test_combiners_round_trip_through_json():
    d = constructed_members(300, scales=[0.8, 0.5], noises=[1.0, 1.2])
    p, y = d["members"], d["targets"]
    for c in (MeanCombiner(members=["a", "b"]), LogLinearCombiner(members=["a", "b"]),
              StackingCombiner(members=["a", "b"], l2=0.05)):  # fmt: skip
        c.fit(p, y)
        back = combiner_from_dict(json.loads(json.dumps(c.to_dict())))
        assert type(back) is type(c) and back.members == ["a", "b"]
        np.testing.assert_allclose(back.predict(p), c.predict(p), rtol=1e-12)
    with pytest.raises(ValueError, match="Invalid value for the 'kind' parameter"):
        combiner_from_dict({"kind": "median"})


def test_nested_cv_never_fits_on_the_rows_it_scores():
    d = constructed_members(450, scales=[0.8, 0.5, 0.4], noises=[1.0, 1.3, 0.8], n_folds=4)
    res = nested_cv(d["members"], d["targets"], d["fold"], ["a", "b", "c"], KINDS)
    scored = np.concatenate([o.scored_rows for o in res.outer])
    assert np.array_equal(np.sort(scored), np.arange(450))  # every row scored exactly once
    for o in res.outer:
        assert not set(o.fit_rows) & set(o.scored_rows)
        assert set(o.fit_rows) | set(o.scored_rows) == set(range(450))
        assert set(d["fold"][o.scored_rows]) == {o.fold}
        assert set(o.inner_kl) == set(KINDS)


def test_a_member_that_leaks_on_one_fold_is_not_rewarded_by_nested_cv():
    """``leak`` is perfect on fold 0 and uninformative elsewhere. Fitted on all rows, the blend puts weight on it
    and fold 0 looks much better; nested CV fits fold 0's blend on the other folds only, so fold 0 gains nothing."""
    d = constructed_members(600, scales=[0.8, 0.5], noises=[1.0, 1.3], n_folds=3, seed=3)
    y, folds = d["targets"], d["fold"]
    rng = np.random.default_rng(1)
    leak = np.where((folds == 0)[:, None], y, rng.dirichlet(np.ones(6), len(y)))
    honest = d["members"]
    leaky = np.concatenate([honest, leak[None]])
    f0 = folds == 0
    in_sample = LogLinearCombiner(members=["a", "b", "leak"]).fit(leaky, y).predict(leaky)
    base = nested_cv(honest, y, folds, ["a", "b"], ["log_linear"], calibrate=False).pred
    nested = nested_cv(leaky, y, folds, ["a", "b", "leak"], ["log_linear"], calibrate=False)
    kl_base, kl_nested, kl_in = (_kl(y[f0], q[f0]) for q in (base, nested.pred, in_sample))
    assert kl_in < kl_base - 0.05  # the leak would be rewarded if the figure were not nested
    assert kl_nested > kl_base - 0.01  # nested: no gain from the leak on the fold it leaks on
    assert "leak" not in next(o for o in nested.outer if o.fold == 0).members


def test_useless_member_is_dropped_and_named(tmp_path):
    cfg = load_config("tiny", overrides={"workspace": {"root": str(tmp_path)}})
    names = cfg.ensemble_members()
    scales = [0.9, 0.6, 0.5, *([0.0] * (len(names) - 3))]  # the last members predict noise only
    write_member_outputs(tmp_path, names, n_rows=360, n_folds=3, scales=scales,
                         noises=[1.0, 1.2, 1.1, *([3.0] * (len(names) - 3))])  # fmt: skip
    out = build_ensemble(cfg)
    m = out.metrics
    assert set(names[3:]) <= set(m["dropped_members"])
    assert m["check_not_worse_than_best"] and m["ensemble_kl"] < m["best_member_kl"]
    assert set(m["nested_kl_by_combiner"]) == set(cfg.ensemble.combiners)
    for name in names:
        assert {"kl", "kl_low", "kl_high", "kl_high_votes", "per_fold"} <= set(m["members"][name])
        lo, mid, hi = (m["members"][name][k] for k in ("kl_low", "kl", "kl_high"))
        assert lo <= mid <= hi
    # files: JSON combiner loadable without pickle, predictions, review list
    ens = load_ensemble(out.out_dir)
    assert ens.members == m["kept_members"]
    oof = pd.read_parquet(out.paths["oof"])
    assert len(oof) == 360 and {"eeg_label_offset_seconds", *VOTE_COLUMNS} <= set(oof.columns)
    np.testing.assert_allclose(oof[list(VOTE_COLUMNS)].sum(axis=1), 1, atol=1e-9)
    test = pd.read_parquet(out.paths["test_pred"])
    mp = load_members(cfg.models_dir, names, 3)
    np.testing.assert_allclose(test[list(VOTE_COLUMNS)].to_numpy(), ens.predict(dict(zip(names, mp.test))))
    review = pd.read_csv(out.paths["review_list"])
    assert list(review.columns[:5]) == ["rank", "eeg_id", "offset_s", "patient_id", "votes"]
    assert len(review) == cfg.ensemble.review_list_size and review["why"].str.len().min() > 10
    high = m["members"][names[0]]["kl_high_votes"]
    y, p = mp.targets, mp.member(names[0])
    hv = mp.votes >= HIGH_VOTE_THRESHOLD
    assert high == pytest.approx(kl_divergence(y[hv], p[hv]))


def test_members_that_do_not_line_up_are_refused(tmp_path):
    write_member_outputs(tmp_path, ["a", "b"], n_rows=120, n_folds=3)
    (tmp_path / "models" / "b" / "fold_1" / "oof.parquet").unlink()
    with pytest.raises(MemberError, match=r"'b' model has no oof.parquet for fold_1.*hms run --stage models"):
        load_members(tmp_path / "models", ["a", "b"], 3)
    write_member_outputs(tmp_path, ["a", "b"], n_rows=120, n_folds=3)
    path = tmp_path / "models" / "b" / "fold_2" / "oof.parquet"
    pd.read_parquet(path).iloc[1:].to_parquet(path)
    with pytest.raises(MemberError, match="'b' and 'a' predict different out-of-fold rows"):
        load_members(tmp_path / "models", ["a", "b"], 3)


def test_temperature_calibration_undoes_overconfidence():
    d = constructed_members(2000, scales=[1.0], noises=[0.0])
    z, y = d["z"], softmax(d["z"], axis=1)
    over = softmax(2.5 * z, axis=1)  # a temperature of 1/2.5 too sharp
    cal = Calibrator.fit(over, y)
    assert cal.temperature == pytest.approx(2.5, rel=0.05)
    after = cal.predict(over)
    assert expected_calibration_error(after, y) < expected_calibration_error(over, y) / 3
    assert _kl(y, after) < _kl(y, over)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(back.predict(over), after)


def test_uncertainty_figures_and_review_list():
    y = np.array([[1, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0.25, 0.75, 0]], float)
    assert vote_floor(y, np.array([3, 2, 10, 4])).tolist() == [0.0, 0.25, 0.0, 1 / 8]
    p = np.full((4, 6), 1 / 6)
    p[0] = [0.01, 0.95, 0.01, 0.01, 0.01, 0.01]  # confidently wrong: the largest disagreement
    p[2] = [0.0, 0.0, 0.9, 0.02, 0.04, 0.04]
    rows = pd.DataFrame({"eeg_id": [10, 11, 12, 13], "eeg_label_offset_seconds": [0.0, 2.0, 4.0, 6.0],
                         "patient_id": [1, 1, 2, 3], "total_votes": [3, 2, 10, 4]})  # fmt: skip
    rl = review_list(rows, y, p, size=3)
    assert rl["eeg_id"].iloc[0] == 10 and rl["why"].iloc[0].startswith("disagrees with the raters")
    assert rl["why"].str.startswith("unsure").any() and len(rl) == 3 and rl["eeg_id"].is_unique
    assert CLASSES[1] in rl["predicted"].iloc[0]
    buckets = kl_by_vote_bucket(y, p, rows["total_votes"].to_numpy(), rows["patient_id"].to_numpy(), 50)
    assert buckets["rows"].sum() == 4
    hit = buckets[buckets["votes"] == "10-19"].iloc[0]
    assert hit["kl"] == pytest.approx(kl_divergence_rows(y[2:3], p[2:3])[0])


def test_patient_bootstrap_interval():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    values = rng.normal(0, 1, 40)[groups] + rng.normal(0, 0.1, 200)  # rows of a patient are correlated
    mean, lo, hi = bootstrap_mean(values, groups, 500)
    assert lo < mean < hi
    naive = 1.96 * values.std() / np.sqrt(len(values))  # treats the 200 rows as independent
    assert hi - lo > 1.5 * 2 * naive  # resampling patients gives the honest, wider interval


def test_ensemble_config_section():
    cfg = load_config("demo")
    assert cfg.ensemble.combiners == KINDS and cfg.ensemble_members() == cfg.enabled_models()
    with pytest.raises(ConfigError, match="ensemble.method: unknown key"):
        load_config("tiny", overrides=parse_override("ensemble.method=lbfgs"))
    with pytest.raises(ConfigError, match="ensemble.combiners.0"):
        load_config("tiny", overrides=parse_override("ensemble.combiners=[median]"))
    with pytest.raises(ConfigError, match=r"ensemble.members: \['nope'\] are not enabled models"):
        load_config("tiny", overrides=parse_override("ensemble.members=[nope]"))
    # the registry and gate keys do not change the ensemble's code version
    a = load_config("tiny")
    b = load_config("tiny", overrides=parse_override("ensemble.quality_gate=false"))
    assert a.result_hash("ensemble") == b.result_hash("ensemble")
    c = load_config("tiny", overrides=parse_override("ensemble.min_member_gain=0.01"))
    assert a.result_hash("ensemble") != c.result_hash("ensemble")


def test_calibration_is_kept_only_when_its_own_cv_says_it_helps():
    from hms_core.ensemble.nested import fit_calibration

    d = constructed_members(900, scales=[1.0], noises=[0.0], n_folds=3)
    y, z, groups = softmax(d["z"], axis=1), d["z"], d["fold"]
    assert fit_calibration(softmax(z, axis=1), y, groups) is None  # already calibrated: nothing to gain
    cal = fit_calibration(softmax(2.5 * z, axis=1), y, groups)
    assert cal is not None and cal.temperature == pytest.approx(2.5, rel=0.05)
