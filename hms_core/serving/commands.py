"""What ``hms serve`` and ``hms predict`` do (the CLI bodies stay thin): find the package, open the prediction log,
run uvicorn, or predict files offline through the service's own :class:`~hms_core.serving.predictor.Predictor`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hms_core.serving.errors import ServingError
from hms_core.serving.predictor import Predictor, RecordingResult, result_columns, result_rows

if TYPE_CHECKING:
    from hms_core.config import PlatformConfig

__all__ = [
    "PackageNotFound",
    "available_cores",
    "limit_threads",
    "open_prediction_log",
    "package_errors",
    "predict_to_csv",
    "request_threads",
    "resolve_package",
    "serve",
    "write_csv",
]

_log = logging.getLogger(__name__)
#: Folder of the deployment packages under the workspace (its ``latest.json`` names the newest one).
DEPLOYMENTS_DIR = "models/deployments"


class PackageNotFound(FileNotFoundError):
    """No deployment package where one was looked for; the message says where and how to build one."""


def resolve_package(cfg: PlatformConfig, package: str | os.PathLike[str] | None = None) -> Path:
    """``package`` (relative to the working directory), else ``serving.package`` (relative to the workspace root),
    else the package ``<root>/models/deployments/latest.json`` points at (:func:`hms_core.export.latest_package`)."""
    if package is not None or cfg.serving.package is not None:
        path = Path(package).expanduser().resolve() if package is not None else cfg.path(cfg.serving.package)
        if not path.is_dir():
            raise PackageNotFound(f"deployment package folder '{path}' does not exist.")
        return path
    root = cfg.path(DEPLOYMENTS_DIR)
    from hms_core.export import PackageError, latest_package

    try:
        return latest_package(root)
    except PackageError as e:
        raise PackageNotFound(f"{e}; or pass --package PATH.") from None


def package_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "no usable package" (the CLI exits 2 on them, naming the file)."""
    errors: tuple[type[BaseException], ...] = (PackageNotFound, ValueError, OSError)
    try:
        from hms_core.export import PackageError

        errors = (*errors, PackageError)
    except ImportError:
        pass
    return errors


def open_prediction_log(cfg: PlatformConfig) -> Any | None:
    """The workspace's :class:`hms_core.monitoring.log.PredictionLog`, or None when logging is off or unavailable."""
    if not cfg.serving.log_predictions:
        return None
    try:
        from hms_core.monitoring.log import PredictionLog

        return PredictionLog.from_config(cfg)
    except Exception as e:  # noqa: BLE001 - predictions go on without the log; the warning says why
        _log.warning("prediction log unavailable, predictions are not logged: %s: %s", type(e).__name__, e)
        return None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: Environment variable overriding :func:`request_threads` (a positive integer), e.g. on a machine whose cores are
#: shared with other work.
THREADS_ENV = "HMS_SERVE_THREADS"


def request_threads(max_concurrency: int, cores: int | None = None) -> int:
    """Threads one request may use so that ``max_concurrency`` requests at once fill the cores without
    oversubscribing them: ``cores // max_concurrency``, at least 1 (2 cores, 2 slots: 1 thread each); the
    environment variable :data:`THREADS_ENV` overrides it."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"Invalid value for the {THREADS_ENV} environment variable: {env!r}. It must be a "
                             "positive integer (threads per request).")  # fmt: skip
        return int(env)
    return max(1, (available_cores() if cores is None else cores) // max(1, int(max_concurrency)))


def limit_threads(n: int) -> None:
    """Limit the compute pools every request shares to ``n`` threads: the BLAS/OpenMP pools numpy and LightGBM use
    (threadpoolctl), and torch's intra-op pool where something already imported torch (the prediction path does
    not: the transform is numpy + scipy.fft, the engines onnxruntime). onnxruntime's intra-op threads are set per
    session (``load_package(threads=...)``)."""
    import sys

    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    if _importable("threadpoolctl"):
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def serve(cfg: PlatformConfig, package: str | None, host: str | None, port: int | None) -> None:
    """Run the service under uvicorn: one process, at most ``serving.max_concurrency`` requests predicted at once
    (threads of the pool), each on :func:`request_threads` threads (torch, BLAS and onnxruntime alike), so the
    concurrent requests do not oversubscribe the cores."""
    import uvicorn

    from hms_core.serving.app import create_app

    settings = cfg.serving
    path = resolve_package(cfg, package)
    threads = request_threads(settings.max_concurrency)
    limit_threads(threads)
    predictor = Predictor.from_path(path, settings, threads=threads)
    _log.info("%d thread(s) per request: %d core(s), serving.max_concurrency %d", threads, available_cores(),
              settings.max_concurrency)  # fmt: skip
    app = create_app(settings=settings, predictor=predictor, prediction_log=open_prediction_log(cfg))
    uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_level="info", server_header=False)


def write_csv(results: Sequence[RecordingResult], out: str | os.PathLike[str]) -> Path:
    """One row per window of every result (:func:`~hms_core.serving.predictor.result_columns`), atomically."""
    from hms_core.io import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=result_columns())
        writer.writeheader()
        for res in results:
            writer.writerows(result_rows(res.to_dict()))
    return out


def predict_to_csv(
    cfg: PlatformConfig, files: Sequence[str | os.PathLike[str]], package: str | None, out: str | None
) -> tuple[list[RecordingResult], list[tuple[str, ServingError]]]:
    """``hms predict``: each file through the service's path (the CSV rows equal the service's JSON windows).

    Returns the results and, for the files that could not be scored, (file, error naming the problem)."""
    path = resolve_package(cfg, package)
    predictor = Predictor.from_path(path, cfg.serving)
    log = open_prediction_log(cfg)
    if log is not None:
        predictor.attach_log(log, "predict")
    results, errors = [], []
    try:
        for f in files:
            try:
                results.extend(predictor.predict_files([f]))
            except ServingError as e:
                errors.append((str(f), e))
    finally:
        if log is not None:
            log.close()
    if out is not None:
        write_csv(results, out)
    return results, errors
