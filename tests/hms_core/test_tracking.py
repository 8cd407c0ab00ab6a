"""Tracking: MLflow runs (sqlite, explicit artifact location, resume into the same run), W&B offline, JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hms_core.tracking import JSONLinesLogger, MLflowLogger, TrainingLogger, WandbLogger, build_loggers


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module (creating its tables takes seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def _drive(lg: TrainingLogger, artifact: Path, epochs: range = range(3)) -> None:
    lg.on_start({"model": "resnet1d_gru", "train.epochs": 3, "model.num_blocks": [2, 2]})
    for e in epochs:
        lg.on_epoch_end(e, {"val_kl": 1.0 / (e + 1), "train_loss": 2.0, "nan_metric": float("nan")})
    lg.on_end({"val_kl": 0.33, "note": "text is skipped"}, [artifact])


def test_mlflow_logger_records_params_metrics_and_artifacts(tmp_path: Path, uri: str) -> None:
    art = tmp_path / "metrics.json"
    art.write_text("{}")
    lg = MLflowLogger(uri, "hms-test", tmp_path / "mlruns", "resnet1d_gru-fold_0", tags={"fold": "fold_0"})
    assert isinstance(lg, TrainingLogger)
    _drive(lg, art)
    run = lg.client.get_run(lg.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fold"] == "fold_0"
    assert run.data.params["model.num_blocks"] == "[2, 2]"
    hist = lg.client.get_metric_history(lg.run_id, "val_kl")
    assert [(m.step, round(m.value, 4)) for m in hist] == [(0, 1.0), (1, 0.5), (2, 0.3333)]
    assert "nan_metric" not in run.data.metrics and run.data.metrics["final_val_kl"] == 0.33
    exp = lg.client.get_experiment_by_name("hms-test")
    assert exp.artifact_location == (tmp_path / "mlruns").resolve().as_uri()
    assert list((tmp_path / "mlruns").rglob("metrics.json"))


def test_mlflow_resumed_training_continues_the_same_run(tmp_path: Path, uri: str) -> None:
    state = tmp_path / "fold" / "tracking_state.json"
    first = MLflowLogger(uri, "hms-resume", tmp_path / "mlruns", "r", state_file=state)
    first.on_start({"a": 1})
    first.on_epoch_end(0, {"val_kl": 1.0})  # ... then the process is killed
    second = MLflowLogger(uri, "hms-resume", tmp_path / "mlruns", "r", state_file=state)
    second.on_start({"a": 1})
    second.on_epoch_end(1, {"val_kl": 0.5})
    second.on_end({"val_kl": 0.5})
    assert second.run_id == first.run_id and not state.exists()
    assert len(second.client.get_metric_history(second.run_id, "val_kl")) == 2
    third = MLflowLogger(uri, "hms-resume", tmp_path / "mlruns", "r", state_file=state)
    third.on_start({"a": 1})  # a finished run is never reopened
    assert third.run_id != first.run_id


def test_wandb_logger_offline_writes_a_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")
    art = tmp_path / "config.json"
    art.write_text("{}")
    lg = WandbLogger("hms-test", "efficientnet-fold_1", tmp_path / "ws", mode="offline", group="efficientnet")
    _drive(lg, art)
    runs = list((tmp_path / "ws" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (runs[0] / "files" / "config.json").exists()
    with pytest.raises(ValueError, match="Allowed values are 'offline', 'online', 'disabled', but got 'cloud'"):
        WandbLogger("p", "r", tmp_path, mode="cloud")


def test_jsonl_logger_keeps_epochs_across_a_resume(tmp_path: Path) -> None:
    art = tmp_path / "a.txt"
    art.write_text("x")
    p = tmp_path / "logs" / "m.jsonl"
    lg = JSONLinesLogger(p)
    lg.on_start({"x": 1})
    lg.on_epoch_end(0, {"val_kl": 1.0})
    again = JSONLinesLogger(p)
    _drive(again, art, range(1, 3))
    events = [json.loads(line) for line in p.read_text().splitlines()]
    assert [e.get("epoch") for e in events if e["event"] == "epoch"] == [0, 1, 2]
    assert events[-1]["event"] == "end" and events[-1]["val_kl"] == 0.33


def test_build_loggers_from_the_platform_config(tmp_path: Path) -> None:
    from hms_core.config import load_config

    cfg = load_config("tiny", overrides={"workspace": {"root": str(tmp_path)}})
    out = tmp_path / "models" / "lightgbm" / "fold_0"
    loggers = build_loggers(cfg, "lightgbm-fold_0", {"model": "lightgbm", "fold": "fold_0"}, group="lightgbm",
                            state_dir=out)  # fmt: skip
    assert [type(lg).__name__ for lg in loggers] == ["JSONLinesLogger", "MLflowLogger", "WandbLogger"]
    jl, mlf, wb = loggers
    assert jl.path == cfg.logs_dir / "metrics" / "lightgbm-fold_0.jsonl"
    assert mlf.tracking_uri == cfg.mlflow_uri and mlf.experiment == cfg.logging.mlflow_experiment
    assert mlf.artifact_location == (tmp_path / "mlflow_artifacts").resolve()
    assert mlf.state_file == out / "mlflow_run.json" and mlf.tags == {"model": "lightgbm", "fold": "fold_0"}
    assert wb.dir == cfg.root and wb.mode == cfg.logging.wandb_mode and wb.group == "lightgbm"
    assert wb.tags == ["model:lightgbm", "fold:fold_0"]
    off = load_config("tiny", overrides={"workspace": {"root": str(tmp_path)},
                                         "logging": {"mlflow_tracking_uri": None, "wandb_mode": "disabled"}})  # fmt: skip
    assert [type(lg).__name__ for lg in build_loggers(off, "r", {})] == ["JSONLinesLogger"]


def test_train_fold_drives_the_loggers(tmp_path: Path, uri: str) -> None:
    from hms_core.config import TrainingConfig
    from hms_core.training import train_fold
    from hms_core.training.testing import make_folds

    folds = make_folds(tmp_path / "data", n_folds=2, rows_per_fold=24, n_test=2)
    out = tmp_path / "models" / "resnet1d_gru" / "fold_1"
    mlf = MLflowLogger(
        uri, "hms-train", tmp_path / "mlruns", "resnet1d_gru-fold_1", state_file=out / "tracking_state.json"
    )
    jl = JSONLinesLogger(tmp_path / "logs" / "run.jsonl")
    res = train_fold("resnet1d_gru", {"initial_filters": 4, "num_blocks": [1], "gru_hidden": 8},
                     TrainingConfig(epochs=2, batch_size=8, torch_threads=1), folds[:1], folds[1], None, out,
                     loggers=[mlf, jl])  # fmt: skip
    run = mlf.client.get_run(mlf.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model"] == "resnet1d_gru"
    assert [m.step for m in mlf.client.get_metric_history(mlf.run_id, "val_kl")] == [0, 1]
    assert run.data.metrics["final_val_kl"] == pytest.approx(res.metrics["val_kl"])
    names = {Path(a.path).name for a in mlf.client.list_artifacts(mlf.run_id)}
    assert {"config.json", "oof.parquet", "metrics.json"} <= names


def test_mlflow_store_created_by_parallel_processes(tmp_path: Path) -> None:
    """Steps of one Dagster run start in parallel processes; the first touch of a new sqlite store must not race."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import sys; from hms_core.tracking import MLflowLogger; "
        f"lg = MLflowLogger({uri!r}, 'exp', {str(tmp_path / 'art')!r}, run_name=sys.argv[1]); "
        "lg.on_start({'a': 1}); lg.on_end({'val_kl': 0.5})"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, f"r{i}"], stderr=subprocess.PIPE, text=True)
             for i in range(3)]  # fmt: skip
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    import mlflow

    mlflow.set_tracking_uri(uri)
    assert set(mlflow.search_runs(experiment_names=["exp"])["tags.mlflow.runName"]) == {"r0", "r1", "r2"}
