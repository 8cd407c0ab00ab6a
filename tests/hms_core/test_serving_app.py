"""The prediction service end to end with FastAPI's TestClient on the exported ``deployment_package``: real HMS
parquet, clinical-name EDF (256 Hz) and JSON inputs, the same numbers as the training preprocessing + package,
every bad input a 4xx naming the problem, auth, size limits, overload, /ready, the monitoring log, ``hms predict``.
One app per module (the package is loaded and verified once)."""

from __future__ import annotations

import csv
import io
import json
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from hms_core.config import ServingConfig
from hms_core.constants import CLASSES, EEG_CHANNELS, EEG_FILE_COLUMNS
from tests.hms_core.test_serving_inputs import clinical_edf, eeg_json, hms_parquet

SETTINGS = ServingConfig(max_request_mb=3.0, max_files=3, max_concurrency=1, queue_timeout_s=0.0)
PARQUET = "application/vnd.apache.parquet"


@pytest.fixture(scope="module")
def predictor(deployment_package):
    from hms_core.serving.predictor import Predictor

    return Predictor.from_path(deployment_package, SETTINGS)


@pytest.fixture(scope="module")
def client(predictor):
    from hms_core.serving.app import create_app

    with TestClient(create_app(predictor=predictor, settings=SETTINGS), raise_server_exceptions=False) as c:
        yield c


def _error(resp, status: int, *needles: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"status", "code", "message", "field"} and body["error"]["status"] == status
    for needle in needles:
        assert needle in body["error"]["message"], body["error"]["message"]
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return body["error"]


def _without_ids(windows: list[dict]) -> list[dict]:
    return [{k: v for k, v in w.items() if k != "window_id"} for w in windows]


def _check_windows(body: dict, pkg) -> None:
    assert body["package_version"] == pkg.version
    for w in body["windows"]:
        p = w["probabilities"]
        assert list(p) == list(CLASSES) and abs(sum(p.values()) - 1) < 1e-5 and min(p.values()) >= 0
        assert w["predicted_class"] == max(p, key=p.get)
        assert w["uncertainty"]["entropy"] >= 0 and w["uncertainty"]["disagreement"] >= 0
        assert {"bad_window", "flagged_channels", "n_missing_channels", "nan_fraction"} <= set(w["quality"])


def test_hms_parquet_gets_its_central_window_with_the_training_preprocessing(client, predictor):
    from hms_core.preprocess import process_windows

    data = hms_parquet(seed=3)
    resp = client.post("/predict", files={"file": ("1234.parquet", data, "application/octet-stream")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    _check_windows(body, predictor.pkg)
    assert body["kind"] == "hms_parquet" and body["source"] == "1234.parquet" and body["n_windows"] == 1
    assert (body["windows"][0]["start_s"], body["windows"][0]["end_s"]) == (20.0, 30.0)
    # the same numbers as the training transform (every output of the package's config) + the package, called
    # directly: the service computes only what the members read, and that part identically
    eeg = pq.read_table(io.BytesIO(data)).select(list(EEG_FILE_COLUMNS)).to_pandas().to_numpy(np.float32)
    pkg = predictor.pkg
    full = process_windows(eeg[None], pkg.preprocessing)
    direct = pkg.predict_batch(full)  # every packaged member
    got = np.array([list(body["windows"][0]["probabilities"].values())])
    np.testing.assert_array_equal(got, direct.probs)
    # the service runs the blend's members only (the ensemble's selection, from package.json's combiner) and
    # preprocesses only what they read; its disagreement is over those members
    assert predictor.members == [n for n in pkg.member_names if n in pkg.blend_members]
    served = pkg.predict_batch(full, members=predictor.members)
    assert body["windows"][0]["uncertainty"]["disagreement"] == float(served.disagreement[0])
    assert sorted(served.members) == sorted(pkg.blend_members)
    records = [m for m in pkg.meta["members"] if m["name"] in predictor.members]
    read = {t for m in records for t in (m.get("input_spec") or {}).get("spectrograms", [])}
    assert read <= set(predictor.run_preprocessing.spectrogram.types) <= read | {"mel"}
    logged = predictor._log_sink is not None and predictor.settings.log_predictions  # drift reads the features
    features = any(m["input_kind"] == "features" for m in records) or logged
    assert predictor.run_preprocessing.features.enabled == (features and pkg.preprocessing.features.enabled)
    with pytest.raises(ValueError, match="include the blend"):  # a member list without the blend's is refused
        pkg.predict_batch(full, members=[n for n in pkg.member_names if n not in pkg.blend_members][:1])
    nan = body["windows"][0]["quality"]["nan_fraction"]  # the 2-s NaN stretch of Fp1, over 19 channels
    assert abs(nan - 400 / 10_000 / len(EEG_CHANNELS)) < 1e-6
    # a raw parquet body says the same
    raw = client.post("/predict", content=data, headers={"Content-Type": PARQUET, "X-Filename": "1234.parquet"})
    assert _without_ids(raw.json()["windows"]) == _without_ids(body["windows"])
    rid = body["request_id"]  # window i of a request is <request_id>:i (the monitoring log's window_id)
    assert rid and [w["window_id"] for w in body["windows"]] == [f"{rid}:{w['index']}" for w in body["windows"]]
    # and so does the same recording as JSON (channels x samples at 200 Hz)
    short = [[None if np.isnan(v) else float(str(v)) for v in eeg[:, j]] for j in range(20)]  # float32 str: exact
    obj = {"sampling_rate": 200, "channels": list(EEG_FILE_COLUMNS), "data": short}
    js = client.post("/predict", json=obj)
    assert js.status_code == 200 and js.json()["kind"] == "json"
    assert js.json()["windows"][0]["probabilities"] == body["windows"][0]["probabilities"]


def test_clinical_edf_at_256_hz_gives_consecutive_windows(client, predictor, tmp_path):
    data = clinical_edf(tmp_path / "clinical.edf", seconds=72, fs=256)
    resp = client.post("/predict", files={"file": ("clinical.edf", data, "application/octet-stream")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    _check_windows(body, predictor.pkg)
    assert body["kind"] == "edf" and body["original_sampling_rate"] == 256 and body["missing_channels"] == []
    assert [(w["start_s"], w["end_s"]) for w in body["windows"]] == [(20.0, 30.0), (30.0, 40.0), (40.0, 50.0)]


def test_missing_channels_beyond_the_package_limit_get_422_naming_them(client, predictor, tmp_path):
    allowed = predictor.pkg.max_missing_channels
    drop = EEG_CHANNELS[: allowed + 1]
    data = clinical_edf(tmp_path / "few.edf", seconds=50, drop=drop)
    err = _error(client.post("/predict", files={"file": ("few.edf", data, None)}), 422, str(list(drop)))
    assert err["field"] == "channels" and f"allows at most {allowed}" in err["message"]
    nan = hms_parquet(nan_channels=drop)  # NaN throughout counts as missing too
    _error(client.post("/predict", files={"file": ("nan.parquet", nan, None)}), 422, str(list(drop)))
    if allowed:  # within the limit: answered, the missing channels reported
        ok = client.post("/predict", files={"file": ("one.parquet", hms_parquet(nan_channels=drop[:1]), None)})
        assert ok.status_code == 200 and ok.json()["missing_channels"] == list(drop[:1])


def test_bad_inputs_get_4xx_naming_the_problem(client):
    pqt = hms_parquet()
    short = hms_parquet(n_rows=5000)
    all_nan = hms_parquet(nan_channels=EEG_CHANNELS)
    inf = eeg_json(n=400)
    inf["data"][2][10] = float("inf")
    cases = [
        ({"files": {"file": ("s.parquet", short, None)}}, 422, "too short: 5000 samples"),
        ({"files": {"file": ("n.parquet", all_nan, None)}}, 422, "NaN in every sample of every EEG channel"),
        ({"content": json.dumps(inf), "headers": {"Content-Type": "application/json"}}, 422, "infinite values"),
        ({"json": eeg_json(n=400, rate=20.0)}, 422, "sampling rate 20.0 Hz is outside"),
        ({"json": eeg_json(channels=["A", "B"], n=100)}, 422, "none of the 19 EEG channels"),
        ({"files": {"file": ("t.parquet", pqt[: len(pqt) // 3], None)}}, 400, "truncated parquet"),
        ({"files": {"file": ("x.png", pqt, "image/png")}}, 415, "content type 'image/png' is not accepted"),
        ({"content": b"plain text", "headers": {"Content-Type": "text/plain"}}, 415, "'text/plain'"),
        ({"files": {"other": ("a.parquet", pqt, None)}}, 400, "form field 'file'"),
        ({"content": b"--xx\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=xx"}}, 400, ""),
        (
            {"content": b'{"sampling_rate": 2', "headers": {"Content-Type": "application/json"}},
            400,
            "not valid JSON",
        ),
    ]
    for kwargs, status, needle in cases:
        _error(client.post("/predict", **kwargs), status, needle)
    # a path-like name is only ever a label
    resp = client.post("/predict", files={"file": ("../../etc/passwd", pqt, None)})
    assert resp.status_code == 200 and resp.json()["source"] == "passwd"


def test_oversized_bodies_get_413_by_length_and_while_streaming(client):
    big = b"\0" * int(3.5 * 1024 * 1024)
    _error(client.post("/predict", content=big, headers={"Content-Type": PARQUET}), 413, "limit is 3 MiB")

    def chunks():
        for _ in range(8):
            yield b"\0" * (512 * 1024)

    # no Content-Length: counted as it streams
    _error(client.post("/predict", content=chunks(), headers={"Content-Type": PARQUET}), 413, "streamed")


def test_health_ready_metadata_and_docs(client, predictor):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["package_verified"] is True
    meta = client.get("/metadata").json()
    assert meta["package_version"] == predictor.pkg.version and meta["classes"] == list(CLASSES)
    assert [m["name"] for m in meta["members"]] == predictor.pkg.member_names
    assert meta["preprocessing"]["eeg"]["context_length"] == predictor.pkg.layout.context_length
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/health", "/ready", "/metadata"} <= set(paths)


def test_batch_answers_each_file(client):
    files = [("files", ("a.parquet", hms_parquet(seed=5), None)), ("files", ("b.parquet", b"PAR1broken", None))]
    resp = client.post("/predict/batch", files=files)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["status"] for r in results] == [200, 400] and results[0]["n_windows"] == 1
    assert "truncated parquet" in results[1]["error"]["message"]
    too_many = [("files", (f"{i}.parquet", b"PAR1", None)) for i in range(4)]
    _error(client.post("/predict/batch", files=too_many), 413, "at most 3")
    js = client.post("/predict/batch", json={"recordings": [eeg_json(seed=1), {"sampling_rate": 200}]})
    assert [r["status"] for r in js.json()["results"]] == [200, 422]


def test_saturated_slots_answer_503_quickly_and_show_on_ready(client, predictor, monkeypatch):
    release = threading.Event()
    real = predictor.predict_bytes

    def slow(*args, **kwargs):
        release.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict_bytes", slow)
    data = hms_parquet(seed=7)
    first: dict = {}
    worker = threading.Thread(
        target=lambda: first.update(r=client.post("/predict", files={"file": ("a.parquet", data, None)}))
    )
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while client.get("/ready").status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "saturated"
        t = time.perf_counter()
        _error(
            client.post("/predict", files={"file": ("b.parquet", data, None)}), 503, "prediction slots are busy"
        )
        assert time.perf_counter() - t < 2.0
    finally:
        release.set()
        worker.join(30)
    assert first["r"].status_code == 200
    assert client.get("/ready").json()["slots"]["rejected"] >= 1


def test_internal_errors_are_json_with_an_id_and_no_traceback(client, predictor, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(predictor, "predict_bytes", boom)
    err = _error(
        client.post("/predict", files={"file": ("a.parquet", hms_parquet(), None)}), 500, "internal error"
    )
    assert "secret internal detail" not in err["message"]


def test_api_key_auth(predictor, monkeypatch):
    from hms_core.serving.app import create_app

    monkeypatch.setenv("HMS_TEST_SERVING_KEY", "s3cret-key")
    settings = SETTINGS.model_copy(update={"api_key_env": "HMS_TEST_SERVING_KEY"})
    with TestClient(create_app(predictor=predictor, settings=settings)) as c:
        assert c.get("/health").status_code == 200  # probes stay open
        assert c.get("/ready").json()["auth"] is True
        _error(c.get("/metadata"), 401, "API key is required")
        _error(c.get("/metadata", headers={"X-API-Key": "wrong"}), 401, "not valid")
        _error(c.post("/predict", files={"file": ("a.parquet", b"PAR1", None)}), 401, "API key")
        assert c.get("/metadata", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.get("/metadata", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200


def test_predictions_reach_the_monitoring_log_and_its_failure_shows_on_ready(predictor, tmp_path):
    from hms_core.monitoring.log import PredictionLog, logged_days, read_predictions
    from hms_core.serving.app import create_app

    try:
        log = PredictionLog(tmp_path / "predictions", flush_interval_s=60)
        with TestClient(create_app(predictor=predictor, settings=SETTINGS, prediction_log=log)) as c:
            body = c.post("/predict", files={"file": ("a.parquet", hms_parquet(seed=9), None)}).json()
            assert log.flush(30)
            (day,) = logged_days(tmp_path / "predictions")
            rows = read_predictions(tmp_path / "predictions", day)
            assert len(rows) == 1 and rows["package_version"].iloc[0] == predictor.pkg.version
            assert rows["prob_seizure"].iloc[0] == body["windows"][0]["probabilities"]["Seizure"]
            assert rows["window_id"].iloc[0] == body["windows"][0]["window_id"]  # the answer's id is the log's
            assert c.get("/ready").json()["prediction_log"]["ok"] is True
        blocked = tmp_path / "a_file"
        blocked.write_text("not a folder")
        bad = PredictionLog(blocked / "predictions", flush_interval_s=60, retry_s=60)
        with TestClient(create_app(predictor=predictor, settings=SETTINGS, prediction_log=bad)) as c:
            resp = c.post("/predict", files={"file": ("a.parquet", hms_parquet(seed=9), None)})
            assert resp.status_code == 200  # the log's failure never fails a prediction
            bad.flush(5)
            ready = c.get("/ready").json()
            assert ready["status"] == "degraded" and ready["prediction_log"]["ok"] is False
            assert ready["prediction_log"]["problems"]
    finally:
        predictor.attach_log(None)  # the module's shared predictor logs nowhere again


def test_hms_predict_csv_rows_equal_the_service_json(client, deployment_package, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from hms_core.serving.predictor import result_rows
    from hms_dagster.cli import app

    edf = tmp_path / "clinical.edf"
    clinical_edf(edf, seconds=62, fs=256, seed=4)
    pqt = tmp_path / "4321.parquet"
    pqt.write_bytes(hms_parquet(seed=4))
    cfg = tmp_path / "hms.yaml"
    cfg.write_text(yaml.safe_dump({"base": "tiny", "workspace": {"root": str(tmp_path / "ws")}}))
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(
        app,
        ["predict", str(edf), str(pqt), "--package", str(deployment_package), "--out", str(out), "-c", str(cfg)],
    )
    assert res.exit_code == 0, res.output
    with out.open() as f:
        rows = list(csv.DictReader(f))
    expected = []
    for path in (edf, pqt):
        body = client.post("/predict", files={"file": (path.name, path.read_bytes(), None)}).json()
        expected += result_rows(body)
    assert len(rows) == len(expected) == 3
    ids = {"request_id", "window_id"}  # the CLI's requests are other requests than the client's
    for got, want in zip(rows, expected, strict=True):
        assert list(got) == list(want)
        for k, v in want.items():
            if k not in ids:
                assert got[k] == ("" if v is None else str(v)), k
        assert got["request_id"] and got["window_id"] == f"{got['request_id']}:{got['window']}"
    assert len({r["window_id"] for r in rows}) == len(rows)  # one id per row: what a labels CSV refers to
    # a bad file: named on stderr, exit 1; no package: exit 2
    (tmp_path / "bad.edf").write_bytes(b"0       garbage")
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "bad.edf"), "--package", str(deployment_package),
                                   "-c", str(cfg)])  # fmt: skip
    assert res.exit_code == 1 and "bad.edf" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["predict", str(pqt), "-c", str(cfg)])
    assert res.exit_code == 2 and "hms run --stage export" in res.output


def test_hms_serve_refuses_a_missing_or_tampered_package(deployment_package, tmp_path):
    import shutil

    import yaml
    from typer.testing import CliRunner

    from hms_dagster.cli import app

    cfg = tmp_path / "hms.yaml"
    cfg.write_text(yaml.safe_dump({"base": "tiny", "workspace": {"root": str(tmp_path / "ws")}}))
    res = CliRunner().invoke(app, ["serve", "--package", str(tmp_path / "nowhere"), "-c", str(cfg)])
    assert res.exit_code == 2 and "nowhere" in res.output and "does not exist" in res.output
    copy = tmp_path / "pkg"
    shutil.copytree(deployment_package, copy)
    card = copy / "model_card.md"
    card.write_text(card.read_text() + "\nedited after export\n")
    res = CliRunner().invoke(app, ["serve", "--package", str(copy), "-c", str(cfg)])
    assert res.exit_code == 2 and "model_card.md" in res.output and "Traceback" not in res.output


def test_concurrent_requests_share_the_cores_without_oversubscribing_them(deployment_package):
    """``hms serve`` gives each of ``serving.max_concurrency`` requests cores // slots threads (torch, BLAS and
    every onnxruntime session alike): 2 cores and 2 slots are 1 thread per request, not 2 x 2."""
    from hms_core.serving.commands import request_threads
    from hms_core.serving.predictor import Predictor

    assert [request_threads(n, cores=2) for n in (1, 2, 3)] == [2, 1, 1]
    assert request_threads(2, cores=8) == 4
    pred = Predictor.from_path(deployment_package, SETTINGS, threads=1)
    pred.pkg.warm_up("fp32", members=pred.members)
    sessions = [s for s in pred.pkg._sessions.values() if s is not None]
    assert sessions and all(s.get_session_options().intra_op_num_threads == 1 for s in sessions)
    assert {k[0] for k in pred.pkg._sessions} == set(pred.members)  # only the served members' engines are opened
    assert pred.metadata()["threads"]["onnxruntime_intra_op"] == 1


def test_openapi_documents_every_request_body(client):
    spec = client.get("/openapi.json").json()["paths"]
    one = spec["/predict"]["post"]["requestBody"]
    many = spec["/predict/batch"]["post"]["requestBody"]
    assert one["required"] and set(one["content"]) == {"multipart/form-data", "application/json",
                                                        "application/octet-stream"}  # fmt: skip
    rec = one["content"]["application/json"]["schema"]
    assert rec["required"] == ["sampling_rate", "channels", "data"]
    assert many["content"]["application/json"]["schema"]["properties"]["recordings"]["items"] == rec
