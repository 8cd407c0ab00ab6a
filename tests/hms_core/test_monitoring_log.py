"""The prediction log: day partitions read back, privacy (no identifiers, no arrays), and that nothing on the disk
side (an unwritable folder, a full disk, a full queue) ever raises into the caller or loses rows silently."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import polars as pl
import pytest

from hms_core.constants import CLASSES
from hms_core.monitoring import log as mlog
from hms_core.monitoring.log import (
    PROB_COLUMNS,
    PredictionLog,
    logged_days,
    monitored_feature_columns,
    prediction_rows,
    read_predictions,
)


def _rows(n: int, ts: datetime | None = None, request_id: str | None = None, **kw) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    p = rng.dirichlet(np.ones(len(CLASSES)), size=n)
    feats = pl.DataFrame(
        {c: rng.random(n) for c in monitored_feature_columns()[:6]} | {"LL_kurtosis": rng.random(n)}
    )
    wq = {"nan_fraction": np.zeros(n, np.float32), "bad_window": np.zeros(n, bool),
          "n_flagged_channels": np.ones(n, np.int16), "flagged_channels": np.array(["Fp1"] * n, dtype=object)}  # fmt: skip
    batch = SimpleNamespace(features=feats, window_quality=wq)
    return prediction_rows(
        p, batch, package_version="v1", input_kind="parquet", latency_s=0.25, request_id=request_id,
        timestamp=ts, **kw,
    )  # fmt: skip


def test_rows_hold_predictions_quality_and_monitored_features_only():
    df = _rows(3, identifiers={"record_name": "patient_42.edf"})
    assert list(df["window_id"]) == [f"{df['request_id'][0]}:{i}" for i in range(3)]
    np.testing.assert_allclose(df[list(PROB_COLUMNS)].sum(axis=1), 1.0)
    assert (df["entropy"] > 0).all() and set(df["predicted_class"]) <= set(CLASSES)
    assert "n_flagged_channels" in df and "flagged_channels" not in df  # channel names are not kept
    assert monitored_feature_columns()[0] in df and "LL_kurtosis" not in df  # only the monitored features
    with pytest.raises(ValueError, match="shaped"):
        prediction_rows(np.ones((2, 5)), package_version="v", input_kind="x")


def test_a_day_reads_back_without_identifiers_or_arrays(tmp_path):
    day1 = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    log = PredictionLog(tmp_path / "pred", flush_interval_s=0.05)
    a = _rows(4, day1, identifiers={"record_name": "secret.edf", "patient_id": 7})
    a["signal"] = [np.zeros(10)] * 4  # an array column (raw EEG) must never be written
    assert log.append(a)
    assert log.append(_rows(2, day1 + timedelta(minutes=2)))  # the next UTC day
    assert log.flush(10)
    assert logged_days(tmp_path / "pred") == ["2026-12-01", "2026-12-02"]
    got = read_predictions(tmp_path / "pred", "2026-12-01")
    assert len(got) == 4 and list(got["window_id"]) == list(a["window_id"])
    assert not {"record_name", "patient_id", "signal"} & set(got.columns)
    np.testing.assert_allclose(got[list(PROB_COLUMNS)].to_numpy(), a[list(PROB_COLUMNS)].to_numpy())
    assert len(read_predictions(tmp_path / "pred", "2026-12-02")) == 2
    assert read_predictions(tmp_path / "pred", "2026-11-30").empty
    with pytest.raises(ValueError, match="'day' parameter"):
        read_predictions(tmp_path / "pred", "yesterday")
    assert log.close() and log.health()["ok"]
    kept = PredictionLog(tmp_path / "kept", store_identifiers=True, flush_interval_s=0.05)
    kept.append(_rows(1, day1, identifiers={"record_name": "secret.edf"}))
    kept.close()
    assert read_predictions(tmp_path / "kept", day1)["record_name"].tolist() == ["secret.edf"]


def test_an_unwritable_folder_is_reported_and_never_raises(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    log = PredictionLog(blocker / "pred", flush_interval_s=0.05, retry_s=0.05)
    assert log.append(_rows(3)) is True  # queued: the request never sees the disk
    assert log.flush(5) is False
    h = log.health()
    assert not h["ok"] and "cannot write" in h["problems"][0] and h["queued_rows"] == 3 and h["written_rows"] == 0
    assert "cannot write" in caplog.text
    assert log.close(5) is False  # rows that could not be written at close are counted, not hidden
    assert log.health()["dropped_rows"] == 3
    assert log.append(_rows(1)) is False  # a closed log refuses quietly


def test_a_full_disk_keeps_rows_queued_until_space_returns(tmp_path, monkeypatch):
    free = {"mb": 10.0}
    monkeypatch.setattr(PredictionLog, "_free_mb", lambda self: free["mb"])
    log = PredictionLog(tmp_path / "pred", min_free_mb=50, flush_interval_s=0.05, retry_s=0.05)
    log.append(_rows(5))
    assert log.flush(5) is False
    assert "MB free" in log.problems[0] and log.health()["queued_rows"] == 5
    free["mb"] = 1e6
    assert log.flush(5) is True
    assert log.health()["ok"] and log.health()["written_rows"] == 5
    log.close()


def test_a_full_queue_drops_and_counts(tmp_path, monkeypatch):
    gate = threading.Event()
    real_write = PredictionLog._write
    monkeypatch.setattr(PredictionLog, "_write", lambda self, batch: (gate.wait(10), real_write(self, batch))[1])
    log = PredictionLog(tmp_path / "pred", max_queue_rows=10, flush_rows=1, flush_interval_s=0.05)
    results = [log.append(_rows(4)) for _ in range(5)]  # 20 rows into a queue of 10 while the writer is stuck
    assert results.count(True) == 2 and results.count(False) == 3
    h = log.health()
    assert h["dropped_rows"] == 12 and "queue full" in h["problems"][0]
    gate.set()
    assert log.flush(10) and log.health()["written_rows"] == 8 and log.health()["ok"]
    log.close()


def test_concurrent_appends_lose_nothing(tmp_path):
    log = PredictionLog(tmp_path / "pred", flush_rows=25, flush_interval_s=0.05)
    ts = datetime(2026, 12, 2, 12, tzinfo=UTC)

    def worker(k: int) -> None:
        for j in range(20):
            assert log.append(_rows(3, ts, request_id=f"w{k}r{j}"))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.close(10)
    got = read_predictions(tmp_path / "pred", ts)
    assert len(got) == 8 * 20 * 3 and got["window_id"].is_unique
    assert log.health()["written_rows"] == 480 and log.health()["files_written"] > 1


def test_bad_rows_are_dropped_and_reported_not_raised(tmp_path):
    log = PredictionLog(tmp_path / "pred", flush_interval_s=0.05)
    assert log.append(object()) is False  # not rows at all
    assert "could not queue" in log.problems[0]
    assert mlog._safe_len(object()) == 0
    log.close()
