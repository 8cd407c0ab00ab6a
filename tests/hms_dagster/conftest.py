from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True, scope="session")
def _no_dagster_home_from_the_shell():
    """Tests choose their instance through the config; a DAGSTER_HOME exported in the shell would override it
    (the CLI honours the variable). Tests of that behaviour set it with monkeypatch."""
    saved = os.environ.pop("DAGSTER_HOME", None)
    yield
    if saved is not None:
        os.environ["DAGSTER_HOME"] = saved


def write_config(root: Path, **sections) -> Path:
    """A config that extends the tiny profile with its workspace under ``root``."""
    data = {"base": "tiny", "workspace": {"root": str(root / "ws")}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    path = root / "hms.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tiny_config(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return write_config(tmp_path)


@pytest.fixture(scope="session")
def _ui_server(trained_workspace, tmp_path_factory):
    from tests.conftest import copy_workspace
    from tests.hms_dagster.uiutil import UIServer

    root = tmp_path_factory.mktemp("ui_workspace")
    server = UIServer(copy_workspace(trained_workspace, root), root)
    yield server
    server.stop()


@pytest.fixture
def ui_server(_ui_server):
    """``hms ui`` running on one copy of the trained workspace, shared by the session's UI tests (test_browser,
    test_ui): started on first use, started again if a test stopped it (test_ui's SIGTERM check does)."""
    return _ui_server.ensure()
