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
