"""No secret leaks: Kaggle and W&B keys planted in the environment of the shared trained workspace's build (every
stage from data to the deployment package, run by ``tests/conftest.py``) appear in no file it wrote: logs,
Dagster's instance storage (event logs, run configs, asset metadata), the MLflow database and artifacts, W&B's
offline runs, the package and its model card."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import PLANTED_SECRETS


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_planted_keys_appear_in_no_written_file(trained_workspace, deployment_package) -> None:
    files = _files(trained_workspace.root)
    assert len(files) > 100, f"expected the whole workspace under {trained_workspace.root}"
    kinds = {p.suffix for p in files}
    assert {".db", ".json", ".onnx", ".parquet"} <= kinds, kinds  # instance/MLflow sqlite, metadata, engines
    leaks = []
    for p in files:
        data = p.read_bytes()
        leaks += [f"{p.relative_to(trained_workspace.root)}: {name}" for name, value in PLANTED_SECRETS.items()
                  if value.encode() in data]  # fmt: skip
    assert not leaks, "planted secrets found in:\n" + "\n".join(leaks)
