"""PostgreSQL instance storage (dagster-postgres): a real local server started by the test, the data stage run on
an instance whose ``dagster.yaml`` hms wrote from ``operations.instance_storage: postgres``.

The server runs as the ``postgres`` user (PostgreSQL refuses root) in a temporary folder it owns; skipped, with
the reason, only where no server can start (no PostgreSQL binaries, no ``postgres`` user, not root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest
import yaml

from hms_dagster.stages import FOLDS
from tests.conftest import copy_workspace
from tests.hms_dagster.uiutil import free_port

PG_ENV = "HMS_TEST_PG_URL"


def _run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def postgres_url():
    missing = [b for b in ("initdb", "pg_ctl", "runuser") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"no PostgreSQL server can start here: {', '.join(missing)} not on PATH")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no PostgreSQL server can start here: no 'postgres' user to run it as")
    if os.geteuid() != 0:
        pytest.skip("no PostgreSQL server can start here: runuser -u postgres needs root")
    root = Path(tempfile.mkdtemp(prefix="hms-pg-"))  # not under pytest's 0700 tmp: postgres must reach it
    os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    init = _run("runuser", "-u", "postgres", "--", "initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
    if init.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    start = _run("runuser", "-u", "postgres", "--", "pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "log"),
                 "-w", "start")  # fmt: skip
    if start.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"pg_ctl start failed: {start.stderr.strip()[-300:]}")
    try:
        # psycopg2 named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        _run("runuser", "-u", "postgres", "--", "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_data_stage_on_postgres_instance_storage(trained_workspace, tmp_path, monkeypatch, postgres_url):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from hms_core.config import load_config
    from hms_dagster.instance import prepare_instance
    from hms_dagster.runner import run_pipeline

    ws = copy_workspace(trained_workspace, tmp_path / "copy")  # raw data on disk: no generation here
    data = yaml.safe_load(ws.config_path.read_text())
    data["workspace"]["dagster_home"] = str(tmp_path / "pg_home")  # a new instance: hms writes its dagster.yaml
    data["operations"] = {"instance_storage": "postgres", "postgres_url_env": PG_ENV}
    ws.config_path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(PG_ENV, postgres_url)
    cfg = load_config(ws.config_path)

    report = run_pipeline(cfg, "data")
    assert report.ok, report.failed
    written = yaml.safe_load((tmp_path / "pg_home" / "dagster.yaml").read_text())
    assert written["storage"] == {"postgres": {"postgres_url": {"env": PG_ENV}}}
    assert postgres_url not in (tmp_path / "pg_home" / "dagster.yaml").read_text()  # the URL stays in the env

    instance = prepare_instance(cfg)  # a new connection: what is stored is in the server, not in a process
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    run_ids = {rid for _, rid, _ in report.done}
    ev = instance.get_latest_materialization_event(dg.AssetKey(FOLDS))
    assert ev is not None and ev.run_id in run_ids
    assert {r.run_id for r in instance.get_runs()} >= run_ids
    assert not list((tmp_path / "pg_home").glob("**/*.db"))  # no SQLite file was written instead
