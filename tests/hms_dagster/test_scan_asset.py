"""The scan stage in Dagster: the folder sensor adds each new recording once (cursor + run keys), and the
``scan_timeline`` asset materializes one dynamic partition with its plot, burden table and paths as metadata."""

from __future__ import annotations

import os
import time

import dagster as dg
import pytest

from tests.hms_core.test_scan_engine import write_edf

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _settled(path):
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


def _scan_cfg(cfg, tmp_path):
    scan = {"recordings_dir": str(tmp_path / "recordings"), "out_dir": str(tmp_path / "scans"), "engine": "ensemble",
            "stride_s": 10.0}  # fmt: skip
    return cfg.model_copy(update={"scan": cfg.scan.model_copy(update=scan)})


def test_sensor_adds_each_new_recording_once(tmp_path):
    from hms_core.config import load_config
    from hms_dagster.assets.scan import build_scan_sensor
    from hms_dagster.stages import RECORDINGS_PARTITIONS, SCAN_TIMELINE

    cfg = _scan_cfg(load_config("tiny"), tmp_path)
    folder = tmp_path / "recordings"
    folder.mkdir()
    job = dg.define_asset_job("scan_job", selection=[SCAN_TIMELINE])
    sensor = build_scan_sensor(cfg, job)
    with dg.instance_for_test() as inst:
        assert sensor(dg.build_sensor_context(instance=inst)).skip_reason
        _settled(write_edf(folder / "bed1.edf", duration_s=60))
        (folder / "notes.txt").write_text("not a recording")
        (folder / "copying.edf").write_bytes(b"0" * 10)  # modified just now: may still be copying in
        res = sensor(dg.build_sensor_context(instance=inst))
        assert [r.partition_key for r in res.run_requests] == ["bed1.edf"]
        assert res.dynamic_partitions_requests[0].partition_keys == ["bed1.edf"]
        inst.add_dynamic_partitions(RECORDINGS_PARTITIONS, ["bed1.edf"])
        # the same folder again, with the cursor: nothing new
        again = sensor(dg.build_sensor_context(instance=inst, cursor=res.cursor))
        assert again.skip_reason and not again.run_requests
        # a second recording: only it is requested and added
        _settled(folder / "copying.edf")
        _settled(write_edf(folder / "bed2.edf", duration_s=60))
        later = sensor(dg.build_sensor_context(instance=inst, cursor=res.cursor))
        assert sorted(r.partition_key for r in later.run_requests) == ["bed2.edf", "copying.edf"]
        assert sorted(later.dynamic_partitions_requests[0].partition_keys) == ["bed2.edf", "copying.edf"]
        assert len({r.run_key for r in [*res.run_requests, *later.run_requests]}) == 3


def test_scan_asset_materializes_a_recording_partition(trained_workspace, deployment_package, tmp_path):
    from hms_dagster.assets.scan import build_scan_definitions
    from hms_dagster.resources import WorkspaceResource
    from hms_dagster.stages import ENSEMBLE_MODEL, RECORDINGS_PARTITIONS

    cfg = _scan_cfg(trained_workspace.cfg, tmp_path)
    (tmp_path / "recordings").mkdir()
    write_edf(tmp_path / "recordings" / "bed1.edf", duration_s=120)
    assets, jobs, sensors = build_scan_definitions(cfg, {ENSEMBLE_MODEL})
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(RECORDINGS_PARTITIONS, ["bed1.edf"])
        res = dg.materialize(assets, partition_key="bed1.edf", instance=inst, selection=["scan_timeline"],
                             resources={"workspace": WorkspaceResource.from_config(cfg)})  # fmt: skip
        assert res.success
        mat = res.asset_materializations_for_node("scan_timeline")[0]
        meta = mat.metadata
        assert "data:image/png;base64," in meta["timeline"].value
        assert "| Seizure |" in meta["burden"].value
        assert meta["windows"].value == 12 and 0 < meta["windows_evaluated"].value < 12
        for name in ("timeline_csv", "events", "annotations", "summary", "plot"):
            assert os.path.isfile(meta[f"path_{name}"].value), name
        assert str(tmp_path / "scans" / "bed1") in meta["path_summary"].value
        assert meta["package_version"].value in str(deployment_package)  # the newest package of the workspace
    assert set(jobs) == {"scan_job", "scan_model_job"} and sensors[0].name == "scan_recordings_sensor"


def test_scan_model_asset_distils_the_package_and_the_scan_uses_it(
    trained_workspace, deployment_package, tmp_path
):
    """scan_model writes the distilled model under its own workspace (atomically: no temporary folder left), records
    the held-out KL beside the class prior's, size and speed, and scan_timeline (engine auto) then scans with it."""
    import json

    from hms_dagster.assets.scan import BEATS_PRIOR_CHECK, build_scan_definitions
    from hms_dagster.resources import WorkspaceResource
    from hms_dagster.stages import DEPLOYMENT_PACKAGE, RAW_DATASET, RECORDINGS_PARTITIONS, SCAN_MODEL

    base = trained_workspace.cfg
    # a workspace of its own (the shared one stays read-only) reading the shared raw data and package
    cfg = base.model_copy(update={
        "workspace": base.workspace.model_copy(update={"root": str(tmp_path / "ws")}),
        "dataset": base.dataset.model_copy(update={"raw_data_path": str(base.raw_dir)}),
        "scan": base.scan.model_copy(update={
            "package": str(deployment_package), "engine": "auto", "stride_s": 10.0,
            "recordings_dir": str(tmp_path / "recordings"),
            "distill": base.scan.distill.model_copy(update={  # seconds, not minutes; plus an unlabelled recording;
                "epochs": 4, "max_windows": 120, "stride_s": 1.0, "recordings_dir": str(tmp_path / "unlabelled"),
                "context_s": 4.0, "time_bins": 3}),  # the scan then reads 4 s of context frames on either side
        }),
    })  # fmt: skip
    for folder in ("recordings", "unlabelled"):
        (tmp_path / folder).mkdir()
        write_edf(tmp_path / folder / "bed1.edf", duration_s=120)
    assets, jobs, _ = build_scan_definitions(cfg, {DEPLOYMENT_PACKAGE, RAW_DATASET})
    model_asset = next(a for a in assets if a.key.to_user_string() == SCAN_MODEL)
    assert {d.to_user_string() for d in model_asset.asset_deps[model_asset.key]} == {
        DEPLOYMENT_PACKAGE,
        RAW_DATASET,
    }
    resources = {"workspace": WorkspaceResource.from_config(cfg)}
    with dg.instance_for_test() as inst:
        res = dg.materialize([model_asset], instance=inst, resources=resources, selection=[SCAN_MODEL])
        assert res.success
        meta = res.asset_materializations_for_node(SCAN_MODEL)[0].metadata
        kl, prior = meta["kl_heldout_vs_ensemble"].value, meta["kl_heldout_constant_prior"].value
        assert 0 <= kl < 5 and 0 < prior < 5 and 0 <= meta["top1_agreement_heldout"].value <= 1
        assert meta["parameters"].value > 1000 and meta["model_bytes"].value > 10_000
        assert meta["windows_per_s"].value > 0 and meta["teacher_windows_per_s"].value > 0
        (check,) = res.get_asset_check_evaluations()
        assert check.check_name == BEATS_PRIOR_CHECK and check.passed == (kl < prior)
        folder = tmp_path / "ws" / "models" / "scanning"
        (made,) = list(folder.iterdir())  # one model folder, no temporary or old folder beside it
        assert str(made) == meta["path"].value and made.name in str(deployment_package)
        assert {p.name for p in made.iterdir()} == {"model.onnx", "distill.json", "manifest.json"}
        doc = json.loads((made / "distill.json").read_text())
        metrics = doc["metrics"]
        assert doc["n_frames"] == 20 + 2 * 8  # the segment's 20 STFT frames and 4 s (8 hops) on either side
        assert metrics["kl_heldout"] == kl
        assert metrics["unlabelled_recording_windows"] > 20  # distill.recordings_dir's windows are teacher windows
        # the scan asset now takes the distilled model by default
        inst.add_dynamic_partitions(RECORDINGS_PARTITIONS, ["bed1.edf"])
        scan = dg.materialize(assets, partition_key="bed1.edf", instance=inst, resources=resources,
                              selection=["scan_timeline"])  # fmt: skip
        assert scan.success
        assert scan.asset_materializations_for_node("scan_timeline")[0].metadata["engine"].value == "cascade"
    assert "scan_model_job" in jobs


def _write_bad_files(folder):
    import numpy as np
    import pyedflib

    good = write_edf(folder / "good.edf", duration_s=60)
    data = good.read_bytes()
    (folder / "truncated.edf").write_bytes(data[: len(data) // 2])
    (folder / "empty.edf").write_bytes(b"")

    def edf(name, labels, sfreq):
        w = pyedflib.EdfWriter(str(folder / name), len(labels), file_type=pyedflib.FILETYPE_EDFPLUS)
        w.setSignalHeaders([{"label": lab, "dimension": "uV", "sample_frequency": sfreq, "physical_max": 500,
                             "physical_min": -500, "digital_max": 32767, "digital_min": -32768} for lab in labels])  # fmt: skip
        w.writeSamples([np.zeros(60 * sfreq) for _ in labels])
        w.close()

    edf("no_eeg.edf", ["ECG", "Resp", "SpO2"], 200)
    edf("wrong_rate.edf", [f"EEG {c}-REF" for c in ("Fp1", "F3", "C3", "P3")], 10)
    return good


def test_hms_scan_writes_every_output_and_names_bad_files(trained_workspace, deployment_package, tmp_path):
    from typer.testing import CliRunner

    from hms_dagster.cli import app

    good = _write_bad_files(tmp_path)
    bad = ["truncated.edf", "empty.edf", "no_eeg.edf", "wrong_rate.edf"]
    args = ["scan", str(good), *(str(tmp_path / b) for b in bad), "--config", str(trained_workspace.config_path),
            "--out", str(tmp_path / "out"), "--engine", "ensemble", "--package", str(deployment_package)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    for name in ("timeline.csv", "timeline.parquet", "events.tsv", "events.edf", "summary.json", "timeline.png"):
        assert (tmp_path / "out" / "good" / name).is_file(), name
    text = " ".join(res.output.split())
    for b in bad:
        assert str(tmp_path / b) in text.replace(" ", "") or b in text, b
    assert "4 of 5 recording(s) could not be scanned" in text
    assert not (tmp_path / "out" / "truncated").exists()
