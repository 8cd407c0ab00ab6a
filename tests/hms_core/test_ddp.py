"""The torchrun entry point builds its call like the Dagster asset (fold_job + build_loggers): same artifacts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hms_core.config import load_config
from hms_core.tracking import build_loggers
from hms_core.training import PRED_COLUMNS, fold_job, load_trained, train_job
from hms_core.training.ddp import build_parser, job_from_args
from hms_core.training.testing import make_folds

REPO = Path(__file__).resolve().parents[2]
MODEL = "resnet1d_gru"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-profile config with small partitions under its processed folder (3 folds + test)."""
    root = tmp_path_factory.mktemp("ddp")
    path = root / "hms.yaml"
    path.write_text(yaml.safe_dump({
        "base": "tiny", "workspace": {"root": str(root / "ws")}, "logging": {"wandb_mode": "disabled"},
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "warmup_epochs": 0.5, "torch_threads": 1,
                     "augment": {"flip": 0.5, "time_shift_s": 1.0, "channel_dropout": 0.1}},
        "models": {MODEL: {"initial_filters": 8, "num_blocks": [1, 1], "gru_hidden": 8}},
    }))  # fmt: skip
    cfg = load_config(path)
    make_folds(cfg.processed_dir, n_folds=cfg.dataset.n_folds, rows_per_fold=36, n_test=6, seed=0)
    return path


def test_command_line_resolves_the_same_job_as_the_asset(workspace: Path, tmp_path: Path) -> None:
    cfg = load_config(workspace)
    ap = build_parser()
    _, job = job_from_args(ap.parse_args(["--config", str(workspace), "--model", MODEL, "--fold", "fold_1"]), ap)
    assert job == fold_job(cfg, MODEL, "fold_1")
    w = cfg.processed_dir / "windows"
    assert job.train_dirs == (w / "fold_0", w / "fold_2") and job.val_dir == w / "fold_1"
    assert job.test_dir == w / "test" and job.out_dir == cfg.models_dir / MODEL / "fold_1"
    assert job.preprocessing == cfg.preprocessing.model_dump(mode="json") and job.run_name == f"{MODEL}-fold_1"
    _, moved = job_from_args(ap.parse_args(["--config", str(workspace), "--model", MODEL, "--fold", "fold_1",
                                            "--out", str(tmp_path / "o")]), ap)  # fmt: skip
    assert moved.out_dir == (tmp_path / "o").resolve() and moved.train_dirs == job.train_dirs
    _, explicit = job_from_args(ap.parse_args(["--config", str(workspace), "--model", MODEL, "--train",
                                               str(w / "fold_0"), "--val", str(w / "fold_2"), "--out",
                                               str(tmp_path / "e")]), ap)  # fmt: skip
    assert explicit.fold == "fold_2" and explicit.test_dir is None and explicit.model_cfg == job.model_cfg
    with pytest.raises(SystemExit) as e:
        job_from_args(ap.parse_args(["--config", str(workspace), "--model", MODEL, "--val", str(w)]), ap)
    assert e.value.code == 2
    with pytest.raises(ValueError, match=r"'fold' parameter. Allowed values are 'fold_0', 'fold_1', 'fold_2'"):
        fold_job(cfg, MODEL, "fold_7")


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def test_ddp_two_cpu_processes_match_the_asset_path(workspace: Path, tmp_path: Path) -> None:
    cfg = load_config(workspace)
    job = fold_job(cfg, MODEL, "fold_1")
    log = cfg.logs_dir / "metrics" / f"{job.run_name}.jsonl"
    # the asset path: fold_job + build_loggers (what hms_dagster's model asset and training_loggers call)
    loggers = build_loggers(cfg, job.run_name, {**job.tags, "dagster_run_id": "r1"}, group=job.model,
                            state_dir=job.out_dir)  # fmt: skip
    asset = train_job(job, loggers=loggers)
    asset_out, asset_log = tmp_path / "asset", tmp_path / "asset.jsonl"
    shutil.move(job.out_dir, asset_out)
    shutil.move(log, asset_log)

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hms_core.training.ddp", "--config", str(workspace), "--model", MODEL, "--fold", "fold_1",
           "--backend", "gloo"]  # fmt: skip
    p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("RESULT ") == 1  # only rank 0 reports and writes
    ddp_out = job.out_dir

    assert _files(ddp_out) == _files(asset_out)
    assert {"final/weights.pt", "final/config.json", "oof.parquet", "test_pred.parquet", "metrics.json",
            "checkpoints/last.pt", "checkpoints/best.pt"} <= _files(ddp_out)  # fmt: skip
    a_cfg = json.loads((asset_out / "final" / "config.json").read_text())
    d_cfg = json.loads((ddp_out / "final" / "config.json").read_text())
    assert a_cfg.pop("metrics").keys() == d_cfg.pop("metrics").keys()
    assert a_cfg == d_cfg  # model, input spec, training and preprocessing parameters, prior
    assert d_cfg["preprocessing"] == cfg.preprocessing.model_dump(mode="json")
    a_m = json.loads((asset_out / "metrics.json").read_text())
    d_m = json.loads((ddp_out / "metrics.json").read_text())
    assert a_m.keys() == d_m.keys() and a_m.keys() == asset.metrics.keys()
    hist = torch.load(ddp_out / "checkpoints" / "last.pt", weights_only=False)["state"]["history"]
    assert len(hist) == 2 and all(np.isfinite(h["val_kl"]) for h in hist)
    oof = pd.read_parquet(ddp_out / "oof.parquet")
    assert list(oof.columns) == list(pd.read_parquet(asset_out / "oof.parquet").columns)
    np.testing.assert_allclose(load_trained(ddp_out).predict(job.val_dir), oof[list(PRED_COLUMNS)].to_numpy(),
                               rtol=1e-5)  # fmt: skip

    # the same loggers: one JSON-lines log and one MLflow run each, with the same parameters
    starts = [json.loads(f.read_text().splitlines()[0]) for f in (asset_log, log)]
    assert starts[0] == starts[1] and starts[0]["params"]["train_dirs"] == [str(d) for d in job.train_dirs]
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.logging.mlflow_experiment])
    assert list(runs["tags.mlflow.runName"]) == [job.run_name] * 2 and (runs["status"] == "FINISHED").all()
    assert set(runs["tags.launcher"].fillna("asset")) == {"torchrun", "asset"}
    params = [c for c in runs.columns if c.startswith("params.")]
    assert len(params) > 10 and (runs[params].iloc[0] == runs[params].iloc[1]).all()
