"""Experiment tracking for training runs: MLflow (sqlite by default) and Weights & Biases (offline by default).

Every logger has the callback interface the training engine calls (only on rank 0)::

    on_start(params)                 # once, with the flattened model + training config
    on_epoch_end(epoch, metrics)     # after every epoch (LightGBM: every boosting round's validation loss)
    on_end(summary, artifacts)       # final metrics and the files written (weights, config, predictions)

MLflow: one run per (model, fold) through ``mlflow.MlflowClient``; the experiment is created with an explicit
``artifact_location`` under the workspace, so nothing lands relative to the working directory. The run id is
stored in ``state_file`` so a resumed training keeps logging into the same run.
W&B: ``mode='offline'`` (default) or ``'disabled'``; files under ``dir``; never touches the network unless a
user sets ``mode='online'`` explicitly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hms_core.checks import check_option
from hms_core.io import write_json, write_text

#: Where a training's MLflow run id is kept while it runs (in the training's output folder), so a resumed
#: training logs into the same run.
MLFLOW_STATE_FILE = "mlflow_run.json"
#: W&B modes: ``offline`` writes local runs (``wandb sync`` uploads them), ``disabled`` writes nothing.
WANDB_MODES: tuple[str, ...] = ("offline", "online", "disabled")

log = logging.getLogger(__name__)


@runtime_checkable
class TrainingLogger(Protocol):
    def on_start(self, params: Mapping[str, Any]) -> None: ...
    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None: ...
    def on_end(self, summary: Mapping[str, Any], artifacts: Sequence[str | os.PathLike[str]] = ()) -> None: ...


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def _param_str(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s[:6000]


@contextlib.contextmanager
def _sqlite_store_lock(tracking_uri: str):
    """An exclusive ``flock`` beside a ``sqlite:///`` tracking database (a no-op for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class MLflowLogger:
    """One MLflow run per training; params, per-epoch metrics, final metrics and artifacts."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | os.PathLike[str],
                 run_name: str, tags: Mapping[str, str] | None = None,
                 state_file: str | os.PathLike[str] | None = None) -> None:  # fmt: skip
        self._client: Any = None
        self.tracking_uri = tracking_uri
        self.artifact_location = Path(artifact_location).resolve()
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.state_file = Path(state_file) if state_file else None
        self.run_id: str | None = None

    @property
    def client(self) -> Any:
        """The ``mlflow.MlflowClient`` (created on first use: opening a sqlite store runs its migrations)."""
        if self._client is None:
            from mlflow import MlflowClient

            # Steps of one Dagster run train in parallel processes: opening a new sqlite store runs its schema
            # migrations, which race ("duplicate column name") unless serialised by a file lock.
            with _sqlite_store_lock(self.tracking_uri):
                self._client = MlflowClient(tracking_uri=self.tracking_uri)
                self._client.search_experiments(max_results=1)
        return self._client

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        self.artifact_location.mkdir(parents=True, exist_ok=True)
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location.as_uri()
            )
        except Exception:  # created concurrently by another process
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def on_start(self, params: Mapping[str, Any]) -> None:
        prev = None
        if self.state_file and self.state_file.exists():
            prev = json.loads(self.state_file.read_text()).get("mlflow_run_id")
        if prev:
            try:
                run = self.client.get_run(prev)
                if run.info.status != "FINISHED":
                    self.run_id = prev
                    self.client.update_run(prev, status="RUNNING")
                    return
            except Exception as e:  # noqa: BLE001 - stale id (store reset, run deleted): start a new run
                log.info(
                    "MLflow run %s from %s cannot be resumed (%s); starting a new run", prev, self.state_file, e
                )
        run = self.client.create_run(self._experiment_id(), run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        if self.state_file:
            write_json(self.state_file, {"mlflow_run_id": self.run_id})
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, v, ts, int(epoch)) for k, v in _finite_metrics(metrics).items()]
        if ms:
            self.client.log_batch(self.run_id, metrics=ms)

    def on_end(self, summary: Mapping[str, Any], artifacts: Sequence[str | os.PathLike[str]] = ()) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(f"final_{k}", v, ts, 0) for k, v in _finite_metrics(summary).items()]
        if ms:
            self.client.log_batch(self.run_id, metrics=ms)
        for a in artifacts:
            if Path(a).is_file():
                self.client.log_artifact(self.run_id, str(a))
        self.client.set_terminated(self.run_id, status="FINISHED")
        if self.state_file:
            self.state_file.unlink(missing_ok=True)

    def fail(self) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status="FAILED")


class WandbLogger:
    """A W&B run per training, offline by default (``WANDB_MODE=offline`` semantics), files under ``dir``."""

    def __init__(self, project: str, run_name: str, dir: str | os.PathLike[str], mode: str = "offline",
                 group: str | None = None, tags: Sequence[str] = ()) -> None:  # fmt: skip
        check_option("mode", mode, WANDB_MODES)
        self.project, self.run_name, self.dir, self.mode = project, run_name, Path(dir), mode
        self.group, self.tags = group, list(tags)
        self.run: Any = None

    def on_start(self, params: Mapping[str, Any]) -> None:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        if self.mode != "online":
            os.environ["WANDB_MODE"] = self.mode
        self.run = wandb.init(project=self.project, name=self.run_name, dir=str(self.dir), mode=self.mode,
                              group=self.group, tags=self.tags, config=dict(params), reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))  # fmt: skip

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.run.log({"epoch": int(epoch), **_finite_metrics(metrics)})

    def on_end(self, summary: Mapping[str, Any], artifacts: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.run.summary.update(_finite_metrics(summary))
        for a in artifacts:
            if Path(a).is_file() and Path(a).suffix in (".json", ".parquet", ".txt"):
                self.run.save(str(a), base_path=str(Path(a).parent), policy="now")
        self.run.finish()

    @property
    def run_dir(self) -> Path | None:
        return Path(self.run.dir).parent if self.run is not None else None


class JSONLinesLogger:
    """Per-epoch metrics as JSON lines (``logs/metrics/<run>.jsonl``); readable without any tracking server."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lines: list[str] = []

    def _flush(self) -> None:
        write_text(self.path, "".join(self.lines))

    def on_start(self, params: Mapping[str, Any]) -> None:
        if self.path.exists():  # resumed: keep earlier epochs
            self.lines = [ln + "\n" for ln in self.path.read_text().splitlines() if ln]
        self.lines.append(json.dumps({"event": "start", "params": dict(params)}, default=str) + "\n")
        self._flush()

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.lines.append(json.dumps({"event": "epoch", "epoch": epoch, **_finite_metrics(metrics)}) + "\n")
        self._flush()

    def on_end(self, summary: Mapping[str, Any], artifacts: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.lines.append(json.dumps({"event": "end", **_finite_metrics(summary),
                                      "artifacts": [str(a) for a in artifacts]}) + "\n")  # fmt: skip
        self._flush()


def build_loggers(
    cfg: Any,
    run_name: str,
    tags: Mapping[str, str],
    group: str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> list[TrainingLogger]:
    """The loggers of one training from a :class:`~hms_core.config.PlatformConfig` (its ``logging`` section).

    JSON lines under ``<logs>/metrics/<run_name>.jsonl`` always; an MLflow run (``logging.mlflow_tracking_uri``,
    artifacts under ``<root>/mlflow_artifacts``, run id kept in ``state_dir`` while running) unless the URI is
    null; a W&B run under ``<root>/wandb`` unless ``logging.wandb_mode`` is ``disabled``. The Dagster model asset
    and the ``torchrun`` entry point both build their loggers here.
    """
    tags = {k: str(v) for k, v in tags.items()}
    loggers: list[TrainingLogger] = [JSONLinesLogger(cfg.logs_dir / "metrics" / f"{run_name}.jsonl")]
    if cfg.mlflow_uri is not None:
        state = Path(state_dir) / MLFLOW_STATE_FILE if state_dir is not None else None
        loggers.append(MLflowLogger(cfg.mlflow_uri, cfg.logging.mlflow_experiment, cfg.root / "mlflow_artifacts",
                                    run_name, tags=tags, state_file=state))  # fmt: skip
    if cfg.logging.wandb_mode != "disabled":
        loggers.append(WandbLogger(cfg.logging.wandb_project, run_name, cfg.root, cfg.logging.wandb_mode,
                                   group=group, tags=[f"{k}:{v}" for k, v in tags.items()]))  # fmt: skip
    return loggers
