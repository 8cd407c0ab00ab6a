from __future__ import annotations

from pathlib import Path

import pytest
import yaml


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
