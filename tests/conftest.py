import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


@dataclass(frozen=True)
class Workspace:
    """A workspace on disk: its config file, the loaded config and the workspace root."""

    config_path: Path
    cfg: object  # hms_core.config.PlatformConfig (imported lazily: collecting tests stays cheap)
    root: Path


def _write_workspace_config(dest: Path, **sections) -> Path:
    """A config extending the tiny profile with its workspace root at ``dest/ws``."""
    data = {"base": "tiny", "workspace": {"root": str(dest / "ws")}}
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


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory) -> Workspace:
    """A tiny-profile workspace trained once per test session through the real pipeline (every stage of
    ``hms run --stage all``: data, preprocessing, the enabled classifiers on every fold, the ensemble, and the
    stages built after it). Read-only for tests: copy it with :func:`copy_workspace` before modifying it."""
    from hms_dagster.runner import run_pipeline

    saved = os.environ.pop("DAGSTER_HOME", None)  # the workspace's own instance, not the shell's
    try:
        ws = _load(_write_workspace_config(tmp_path_factory.mktemp("trained_workspace")))
        report = run_pipeline(ws.cfg, "all")
        if not report.ok:
            pytest.fail(f"the shared trained workspace failed to build: {report.failed}")
    finally:
        if saved is not None:
            os.environ["DAGSTER_HOME"] = saved
    return ws
