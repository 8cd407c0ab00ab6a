"""Bad and hostile input that the issue lists and that no other test covered, as one parametrized matrix; every
case ends in a clear message naming the problem (file, field, value) or is handled as documented, and nothing
already stored is lost. Already covered elsewhere (not repeated here): truncated / non-parquet EEG, missing
columns and wrong dtypes, NaN-only channels, all-zero votes, duplicate label ids, train.csv rows pointing at
missing files, offsets past the end (tests/hms_core/test_validation.py, test_labels.py); EDF with a wrong rate,
missing channels, zero length, a corrupt header, truncated (test_recording.py, test_eeg_io.py); config unknown
keys (test_config.py, test_cli.py); service malformed multipart, wrong content type, oversized bodies, a path-like
name on a multipart parquet, JSON of the wrong shape inside the object, inf, too long recordings
(test_serving_app.py, test_serving_inputs.py); slow clients (test_service_load.py)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from hms_core.config import ServingConfig
from hms_core.constants import EEG_FILE_COLUMNS
from tests.hms_core.test_serving_inputs import clinical_edf, hms_parquet
from tests.hms_core.test_validation import write_raw_dir
from tests.reliability import tally

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _counted(case: str):
    tally.add(f"matrix:{case}", bad_inputs_tried=1)
    return lambda: tally.add(f"matrix:{case}", bad_inputs_rejected_cleanly=1)


# --- the raw data directory (hms validate, the data stage) -------------------------------------------------------
def _set_train(raw: Path, col: str, row: int, value) -> None:
    df = pl.read_csv(raw / "train.csv")
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(col)).alias(col)
    )
    df.write_csv(raw / "train.csv")


def _rewrite_eeg(raw: Path, eeg_id: int, fn) -> None:
    path = raw / f"train_eegs/{eeg_id}.parquet"
    pq.write_table(fn(pq.read_table(path)), path)


def _col(t: pa.Table, name: str, fn) -> pa.Table:
    i = t.schema.get_field_index(name)
    return t.set_column(i, name, pa.array(fn(t.column(name).to_numpy().copy())))


RAW_CASES = {
    # case: (damage, "error"|"warning", file, field, message needle)
    "negative vote": (lambda r: _set_train(r, "seizure_vote", 3, -2), "error", "train.csv", "seizure_vote",
                      "votes must be >= 0, got -2"),
    "fractional vote": (lambda r: _set_train(r, "lpd_vote", 4, 1.5), "error", "train.csv", "lpd_vote",
                        "expected integer"),
    "inf samples": (lambda r: _rewrite_eeg(r, 102, lambda t: _col(t, "C3", lambda a: np.where(np.arange(a.size) < 5,
                    np.inf, a))), "warning", "train_eegs/102.parquet", "C3", "infinite"),
    "lower-case column names": (lambda r: _rewrite_eeg(r, 103, lambda t: t.rename_columns(
                                [c.lower() if c == "Fp1" else c for c in t.column_names])), "error",
                                "train_eegs/103.parquet", "Fp1", "missing"),
    "0-row EEG file": (lambda r: _rewrite_eeg(r, 104, lambda t: t.slice(0, 0)), "error", "train_eegs/104.parquet",
                       "row", "got 0"),
    "non-integer patient id": (lambda r: _set_train(r, "patient_id", 2, "-"), "error", "train.csv", "patient_id",
                            "'-'"),
}  # fmt: skip


@pytest.mark.parametrize("case", RAW_CASES)
def test_raw_directory_damage_is_named(tmp_path, case):
    from hms_core.validation import validate_raw_dir

    done = _counted(case)
    damage, kind, file, field, needle = RAW_CASES[case]
    raw = write_raw_dir(tmp_path / "raw")
    damage(raw)
    before = {p.name: p.read_bytes() for p in (raw / "train_eegs").iterdir()}
    report = validate_raw_dir(raw)
    found = [p for p in (report.errors if kind == "error" else report.warnings)
             if p.file == file and field in p.field]  # fmt: skip
    assert found, f"{case}: no {kind} for {file}/{field} in {report.format()}"
    assert needle in found[0].message, found[0].message
    if kind == "warning":
        assert report.ok, report.format()  # a warning does not stop the data stage
    assert {p.name: p.read_bytes() for p in (raw / "train_eegs").iterdir()} == before  # validation writes nothing
    done()


def test_reordered_columns_read_the_same(tmp_path):
    from hms_core.eeg_io import read_hms_eeg
    from hms_core.validation import validate_raw_dir

    done = _counted("reordered columns")
    raw = write_raw_dir(tmp_path / "raw")
    path = raw / "train_eegs/101.parquet"
    want = read_hms_eeg(path)
    t = pq.read_table(path)
    pq.write_table(t.select(list(reversed(t.column_names))), path)
    np.testing.assert_array_equal(read_hms_eeg(path), want)  # columns are read by name, not position
    assert validate_raw_dir(raw).ok
    done()


# --- configs -----------------------------------------------------------------------------------------------------
CONFIG_CASES = {
    "wrong type": ({"training": {"epochs": "two"}}, "training.epochs", "'two'"),
    "impossible folds": ({"dataset": {"n_folds": 1}}, "dataset.n_folds", "greater than or equal to 2"),
    "zero epochs": ({"training": {"epochs": 0}}, "training.epochs", "got 0"),
    "negative batch": ({"training": {"batch_size": -4}}, "training.batch_size", "got -4"),
    "port out of range": ({"serving": {"port": 70000}}, "serving.port", "65535"),
    "band-pass inverted": ({"preprocessing": {"eeg": {"filter_low": 40.0, "filter_high": 20.0}}},
                           "filter_low", "must be below filter_high"),
    "unknown model key": ({"models": {"lightgbm": {"n_estimator": 5}}}, "n_estimator", "lightgbm"),
    "negative model value": ({"models": {"lightgbm": {"n_estimators": -1}}}, "n_estimators", "-1"),
    "unknown source": ({"dataset": {"source": "ftp"}}, "dataset.source", "'ftp'"),
    "section not a mapping": ({"training": []}, "training", "valid dictionary"),
}  # fmt: skip


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_errors_name_key_and_value(tmp_path, case):
    import yaml

    from hms_core.config import ConfigError, load_config

    done = _counted(case)
    sections, key, needle = CONFIG_CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": "tiny", **sections}))
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert str(path) in msg and key in msg and needle in msg, msg
    assert "Traceback" not in msg
    done()


@pytest.mark.parametrize(("text", "needle"), [("training: [epochs\n", "not valid YAML"),
                                              ("- a\n- b\n", "must be a mapping")])  # fmt: skip
def test_unreadable_config_files_are_named(tmp_path, text, needle):
    from hms_core.config import ConfigError, load_config

    done = _counted(f"config file {needle}")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as ei:
        load_config(path)
    assert str(path) in str(ei.value)
    done()


# --- the service -------------------------------------------------------------------------------------------------
SETTINGS = ServingConfig(max_request_mb=3.0, max_files=3, max_concurrency=2, queue_timeout_s=30.0,
                         log_predictions=False)  # fmt: skip


@pytest.fixture(scope="module")
def client(quiet_predictor):
    from hms_core.serving.app import create_app

    app = create_app(predictor=quiet_predictor, settings=SETTINGS)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _parquet_with(fn) -> bytes:
    rng = np.random.default_rng(11)
    cols = {c: (20 * rng.standard_normal(10_000)).astype(np.float32) for c in EEG_FILE_COLUMNS}
    fn(cols)
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def _json(body) -> dict:
    return {"content": body if isinstance(body, bytes) else json.dumps(body).encode(),
            "headers": {"Content-Type": "application/json"}}  # fmt: skip


NAN_LITERAL = json.dumps({"sampling_rate": 200, "channels": list(EEG_FILE_COLUMNS),
                          "data": [[float("nan")] * 10_000 if c == "O2" else
                                   list(np.round(np.random.default_rng(5).normal(0, 20, 10_000), 1))
                                   for c in EEG_FILE_COLUMNS]}).encode()  # fmt: skip

REFUSALS = {
    # case: (request kwargs, path, status, needle in the message)
    "JSON body is a list": (_json([1, 2, 3]), "/predict", 422, "object"),
    "JSON body is a string": (_json("recording"), "/predict", 422, "object"),
    "JSON body is null": (_json(None), "/predict", 422, "object"),
    "JSON numbers beyond float": (_json(b'{"sampling_rate": 1e999, "channels": ["Fp1"], "data": [[1]]}'),
                                  "/predict", 422, "sampling"),
    "batch recordings not a list": (_json({"recordings": "x"}), "/predict/batch", 400, "recordings"),
    "empty body": ({"content": b"", "headers": {"Content-Type": "application/vnd.apache.parquet"}}, "/predict",
                   400, ""),
    "multipart without boundary": ({"content": b"x", "headers": {"Content-Type": "multipart/form-data"}},
                                   "/predict", 400, ""),
}  # fmt: skip


def _error(resp, status: int, needle: str) -> dict:
    assert resp.status_code == status, resp.text[:400]
    err = resp.json()["error"]
    assert set(err) == {"status", "code", "message", "field"} and err["status"] == status
    assert needle.lower() in err["message"].lower(), err["message"]
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return err


@pytest.mark.parametrize("case", REFUSALS)
def test_service_refusals_name_the_problem(client, case):
    done = _counted(case)
    kwargs, path, status, needle = REFUSALS[case]
    _error(client.post(path, **kwargs), status, needle)
    done()


def _answered(resp) -> dict:
    assert resp.status_code == 200, resp.text[:400]
    body = resp.json()
    for w in body["windows"]:
        p = w["probabilities"]
        if p is None:  # no confident answer from a window the preprocessing could not judge: the reason says why
            assert w.get("reason"), w
        else:
            assert all(math.isfinite(v) and v >= 0 for v in p.values()) and abs(sum(p.values()) - 1) < 1e-5
    return body


def test_absurd_amplitudes_and_constant_channels_are_answered_with_flags(client):
    done = _counted("absurd amplitudes")
    huge = _parquet_with(lambda c: c.update({k: v * 1e7 for k, v in c.items()}))  # ~2e8 uV: 200 V
    body = _answered(client.post("/predict", files={"file": ("huge.parquet", huge, None)}))
    q = body["windows"][0]["quality"]
    assert body["windows"][0]["probabilities"] is None or q["clipped_fraction"] > 0 or q["n_noisy"] > 0, q
    done()

    done = _counted("constant channel")
    flat = _parquet_with(lambda c: c["Cz"].fill(37.0))
    body = _answered(client.post("/predict", files={"file": ("flat.parquet", flat, None)}))
    q = body["windows"][0]["quality"]
    assert q["n_flat"] >= 1 or "Cz" in q["flagged_channels"], q
    done()


def test_a_file_is_read_by_its_bytes_not_its_name(client, tmp_path):
    done = _counted("EDF bytes named .parquet")
    edf = clinical_edf(tmp_path / "r.edf", seconds=50)
    body = _answered(client.post("/predict", files={"file": ("r.parquet", edf, None)}))
    assert body["kind"] == "edf"
    done()


def test_nan_payloads_count_as_missing_channels(client):
    done = _counted("NaN literal payload")
    body = _answered(client.post("/predict", **_json(NAN_LITERAL)))
    assert "O2" in body["missing_channels"], body["missing_channels"]
    done()


@pytest.mark.parametrize("name", ["../../etc/passwd", "..\\..\\boot.ini", "/etc/shadow", "a/../../b.edf", "\x00x"])
def test_path_like_names_are_only_labels(client, tmp_path, name):
    done = _counted(f"path-like name {name!r}")
    data = hms_parquet(seed=9)
    raw = client.post("/predict", content=data, headers={"Content-Type": "application/vnd.apache.parquet",
                                                          "X-Filename": name.replace("\x00", "")})  # fmt: skip
    body = _answered(raw)
    assert "/" not in body["source"] and "\\" not in body["source"] and ".." not in body["source"].strip(".")
    edf = clinical_edf(tmp_path / "x.edf", seconds=50)
    resp = client.post("/predict", files={"file": (name, edf, "application/octet-stream")})
    assert resp.status_code in (200, 400, 415), resp.text[:300]  # an EDF by its bytes, or refused by its name
    assert "Traceback" not in resp.text
    assert not Path("/etc/passwd.edf").exists() and not (tmp_path.parent / "b.edf").exists()
    done()


def test_wrong_method_and_unknown_path_are_json_errors(client):
    done = _counted("wrong method / unknown path")
    _error(client.get("/predict"), 405, "")
    _error(client.get("/nope"), 404, "")
    done()
