import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

#: Fake credentials planted in the environment while the shared workspace and its package are built; no file the
#: pipeline writes may contain them (tests/reliability/test_secrets.py).
PLANTED_SECRETS = {
    "KAGGLE_USERNAME": "planted-user-7f3a91",
    "KAGGLE_KEY": "planted0kaggle0key0d41d8cd98f00b204e9800998ecf8427e",
    "WANDB_API_KEY": "planted0wandb0key0e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
}


class _planted_secrets:
    """Set :data:`PLANTED_SECRETS` (and drop DAGSTER_HOME: the workspace's own instance) for a block."""

    def __enter__(self):
        keys = [*PLANTED_SECRETS, "DAGSTER_HOME"]
        self._saved = {k: os.environ.get(k) for k in keys}
        os.environ.pop("DAGSTER_HOME", None)
        os.environ.update(PLANTED_SECRETS)

    def __exit__(self, *exc):
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Workspace:
    """A workspace on disk: its config file, the loaded config and the workspace root."""

    config_path: Path
    cfg: object  # hms_core.config.PlatformConfig (imported lazily: collecting tests stays cheap)
    root: Path


def _write_workspace_config(dest: Path, **sections) -> Path:
    """A config extending the tiny profile with its workspace root at ``dest/ws``."""
    # synthetic: the planted Kaggle credentials must not send source 'auto' to Kaggle
    data = {"base": "tiny", "workspace": {"root": str(dest / "ws")}, "dataset": {"source": "synthetic"}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "hms.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _load(config_path: Path) -> Workspace:
    from hms_core.config import load_config

    cfg = load_config(config_path)
    return Workspace(config_path=config_path, cfg=cfg, root=cfg.root)


def copy_workspace(ws: Workspace, dest: Path) -> Workspace:
    """A private copy of ``ws`` under ``dest`` (the whole workspace, its Dagster instance included) with a config
    pointing at the copy. Tests that modify a shared workspace copy it first.

    The Dagster instance's storage (sqlite) records absolute paths only in run/asset metadata, so the copy is
    a usable instance: statuses, staleness and later runs work on it; paths in old metadata name the original."""
    dest = Path(dest)
    src_cfg = yaml.safe_load(Path(ws.config_path).read_text())
    src_cfg["workspace"] = {**src_cfg.get("workspace", {}), "root": str(dest / "ws")}
    shutil.copytree(ws.root, dest / "ws", symlinks=True)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "hms.yaml"
    path.write_text(yaml.safe_dump(src_cfg))
    return _load(path)


#: basetemp folders of the session fixtures (kept for the whole session).
SESSION_DIRS = ("trained_workspace", "ui_workspace")


@pytest.fixture(scope="module", autouse=True)
def _remove_module_temp_dirs(tmp_path_factory):
    """Delete the folders a module's fixtures made under basetemp (``tmp_path_factory.mktemp``) when the module
    ends, so the suite's disk use is the largest module's, not the sum (the CI disk filled once at ~3.5 GB).
    A test's own ``tmp_path`` (named ``test_*``) follows ``tmp_path_retention_policy``: kept when it failed."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    for path in set(base.iterdir()) - before:
        if path.is_dir() and not path.name.startswith(("test_", *SESSION_DIRS)):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory) -> Workspace:
    """A tiny-profile workspace trained once per test session through the real pipeline: every stage of
    ``hms run --stage all`` up to the ensemble (data, preprocessing, foundation, the enabled classifiers on every
    fold, the ensemble), one ``run_pipeline`` per stage. The export stage runs in :func:`deployment_package` (on
    this workspace, in place), so tests that need only trained models do not pay for it. Read-only for tests:
    copy it with :func:`copy_workspace` before modifying it.

    ``HMS_TEST_WORKSPACE=<config path>`` (development only) uses a workspace trained earlier instead, e.g. the
    ``trained_workspace*/hms.yaml`` of a previous session under pytest's basetemp; its export stage runs only when
    missing or stale (``resume``)."""
    from hms_dagster.runner import run_pipeline
    from hms_dagster.stages import ENSEMBLE, STAGE_ORDER, stage_plan

    reuse = os.environ.get("HMS_TEST_WORKSPACE")
    if reuse:  # development only: a workspace trained by an earlier session (its config path), used as is
        return _load(Path(reuse))
    with _planted_secrets():  # the workspace's own instance, not the shell's; fake keys that must not leak
        ws = _load(_write_workspace_config(tmp_path_factory.mktemp("trained_workspace")))
        plan = stage_plan(ws.cfg)
        for stage in STAGE_ORDER[: STAGE_ORDER.index(ENSEMBLE) + 1]:
            if plan[stage]:
                report = run_pipeline(ws.cfg, stage)
                if not report.ok:
                    pytest.fail(f"the shared trained workspace failed to build ({stage}): {report.failed}")
    return ws


@pytest.fixture(scope="session")
def deployment_package(trained_workspace) -> Path:
    """The deployment package exported from :func:`trained_workspace` by its export stage (``hms run --stage
    export``: the onnx_engines and deployment_package assets with their checks): the versioned folder under
    ``<root>/models/deployments/``. The export's outputs are added to ``trained_workspace`` in place."""
    from hms_core.export import latest_package
    from hms_dagster.runner import run_pipeline

    with _planted_secrets():
        report = run_pipeline(trained_workspace.cfg, "export", resume=bool(os.environ.get("HMS_TEST_WORKSPACE")))
        if not report.ok:
            pytest.fail(f"the shared deployment package failed to build: {report.failed}")
    return latest_package(trained_workspace.cfg.models_dir / "deployments")
