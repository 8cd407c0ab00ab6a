"""The monitoring loop end to end: windows predicted by the exported deployment package are logged, the daily
assets judge each day against the reference stored in that package, shifted days fail their drift check with
ERROR while an unshifted day passes, labels dropped for a day give a quality figure, and the failing checks make
the retraining sensor request every fold of the models job."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from hms_core.config import load_config
from hms_core.constants import VOTE_COLUMNS
from hms_dagster.assets.monitoring import RETRAIN_SENSOR, monitor_cli, retrain_requests
from tests.hms_dagster.conftest import write_config

#: Windows per logged day: enough for the package's (tiny) reference to tell the shifts below from chance.
N_WINDOWS = 24
DAYS = {
    "2026-11-02": {},  # unshifted: drift passes; expert votes arrive for it
    "2026-11-03": {"amplitude": 2.5},  # another amplifier gain
    "2026-11-04": {"noise_uv": 20.0},  # noisier electrodes (independent noise per electrode)
    "2026-11-05": {"class_probs": [0.0, 0.5, 0.5, 0.0, 0.0, 0.0]},  # periodic discharges only (LPD, GPD)
}


def _evaluations(cfg, day: str) -> dict[str, dg.AssetCheckEvaluation]:
    from hms_dagster.assets.monitoring import run_monitoring_day

    result = run_monitoring_day(cfg, day)
    assert result.success
    return {ev.check_name: ev for ev in result.get_asset_check_evaluations()}


def test_a_day_without_predictions_is_not_judged_and_requests_nothing(tmp_path):
    from hms_dagster.instance import prepare_instance

    cfg = load_config(write_config(tmp_path, monitoring={"start_date": "2026-11-01"}))
    code, text = monitor_cli(cfg, "2026-11-05")
    assert code == 0 and text.count(": insufficient") == 2 and "nothing was logged on 2026-11-05" in text
    instance = prepare_instance(cfg)
    key = dg.AssetCheckKey(dg.AssetKey("prediction_drift"), "drift_within_limits")
    (rec,) = [r for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
              if isinstance(r.evaluation, dg.AssetCheckEvaluation)]  # fmt: skip
    assert rec.evaluation.metadata["day"].value == "2026-11-05" and not rec.evaluation.passed
    assert (
        rec.evaluation.severity == dg.AssetCheckSeverity.WARN and rec.evaluation.metadata["retrain"].value is False
    )
    reqs, cursor, _ = retrain_requests(instance, cfg, 0)
    assert reqs == [] and cursor >= rec.id
    code, text = monitor_cli(cfg, "2026-10-01")
    assert code == 2 and "Invalid value for the 'day' parameter" in text


def log_days(deployment_package, tmp):
    """A workspace under ``tmp`` holding a copy of the exported package and four logged days (see DAYS); the
    checks of each day."""
    from hms_core.export import load_package
    from hms_core.monitoring.log import PredictionLog, prediction_rows
    from hms_core.monitoring.testing import shift_windows, synthetic_windows
    from hms_core.preprocess import process_windows

    cfg = load_config(write_config(tmp, monitoring={"start_date": "2026-11-01", "drift": {"min_windows": 20},
                                                    "quality": {"min_labelled": 20}}))  # fmt: skip
    dest = cfg.models_dir / "deployments" / deployment_package.name
    shutil.copytree(deployment_package, dest)
    pkg = load_package(dest)
    base = synthetic_windows(N_WINDOWS, seed=101)
    log = PredictionLog.from_config(cfg)
    labels = None
    for i, (day, shift) in enumerate(DAYS.items()):
        if "class_probs" in shift:
            windows = synthetic_windows(N_WINDOWS, seed=102, class_probs=np.asarray(shift["class_probs"])).windows
        else:
            windows = shift_windows(base.windows, seed=i, **shift) if shift else base.windows
        ts = datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)
        for r, start in enumerate(range(0, N_WINDOWS, 8)):  # requests of 8 windows
            out = process_windows(windows[start : start + 8], pkg.preprocessing)
            pred = pkg.predict_batch(out)
            rows = prediction_rows(
                pred.probs, out, package_version=pkg.version, input_kind="synthetic", source="predict",
                request_id=f"{day}-{r}", disagreement=pred.disagreement, timestamp=ts,
            )  # fmt: skip
            assert log.append(rows)
            if not shift:
                votes = base.votes[start : start + 8]
                part = pd.DataFrame(
                    {"window_id": rows["window_id"]} | {c: votes[:, k] for k, c in enumerate(VOTE_COLUMNS)}
                )
                labels = part if labels is None else pd.concat([labels, part])
    assert log.close() and log.health()["written_rows"] == N_WINDOWS * len(DAYS)
    lab = cfg.path(cfg.monitoring.quality.labels_dir)
    lab.mkdir(parents=True)
    labels.to_csv(lab / "expert_votes_2026-11-02.csv", index=False)
    return cfg, {day: _evaluations(cfg, day) for day in DAYS}


@pytest.fixture(scope="module")
def monitored(deployment_package, tmp_path_factory):
    return log_days(deployment_package, tmp_path_factory.mktemp("monitoring"))


def test_shifted_days_fail_the_drift_check_and_the_unshifted_day_passes(monitored):
    _, evs = monitored
    same = evs["2026-11-02"]["drift_within_limits"]
    assert same.passed, same.metadata["reason"].value
    for day in list(DAYS)[1:]:
        ev = evs[day]["drift_within_limits"]
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR, (day, ev.metadata["reason"].value)
        assert ev.metadata["retrain"].value is True
    amp = evs["2026-11-03"]["drift_within_limits"].metadata["reason"].value
    assert "_abs" in amp or "hjorth_activity" in amp  # the amplitude shows in absolute powers, not relative ones


def test_labels_dropped_for_a_day_give_a_quality_figure(monitored):
    import json

    cfg, evs = monitored
    q = evs["2026-11-02"]["quality_within_limits"]
    assert q.metadata["status"].value != "insufficient", q.metadata["reason"].value
    report = json.loads((cfg.path(cfg.monitoring.root) / "reports" / "quality" / "2026-11-02.json").read_text())
    (summary,) = report["versions"].values()
    assert summary["n_labelled"] == N_WINDOWS and 0 < summary["kl"] < 10 and 0 <= summary["ece"] <= 1
    assert summary["expected_kl"] is not None  # compared with the package's out-of-fold KL
    assert evs["2026-11-03"]["quality_within_limits"].metadata["status"].value == "insufficient"  # no votes


def test_failing_checks_request_the_retraining_cascade_once(monitored):
    from hms_dagster.definitions import build_definitions
    from hms_dagster.instance import prepare_instance

    cfg, _ = monitored
    sensor = build_definitions(cfg).get_sensor_def(RETRAIN_SENSOR)
    instance = prepare_instance(cfg)
    first = sensor(dg.build_sensor_context(instance=instance))
    assert sorted(r.partition_key for r in first.run_requests) == cfg.fold_names
    assert {r.job_name for r in first.run_requests} == {"models_job"}
    again = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert not again.run_requests  # each failing evaluation asks once
    assert (cfg.path(cfg.monitoring.root) / "reports" / "drift" / "trend.png").stat().st_size > 1000
