"""The foundation stage through Dagster on the tiny profile: `hms run --stage foundation` pretrains the encoder
(metadata: recordings used, no labels read, loss curve, reconstruction plot), then the models stage fine-tunes
``eeg_foundation`` from it on one fold."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pandas as pd
import torch
import yaml
from typer.testing import CliRunner

from hms_core.config import load_config
from hms_dagster.cli import app
from hms_dagster.definitions import build_definitions
from hms_dagster.instance import prepare_instance
from hms_dagster.runner import run_pipeline
from tests.conftest import copy_workspace
from tests.hms_dagster.conftest import write_config

ONLY_FOUNDATION = {m: {"enabled": False} for m in ("resnet1d_gru", "efficientnet", "sparcnet", "lightgbm")}


def test_lineage_pretrained_classifier_depends_on_the_encoder(tmp_path):
    cfg = load_config(write_config(tmp_path, models={"eeg_foundation": {"pretrained": True}}))
    graph = build_definitions(cfg).resolve_asset_graph()
    enc = graph.get(dg.AssetKey("foundation_encoder"))
    assert enc.group_name == "foundation" and not enc.is_partitioned
    assert dg.AssetKey("raw_dataset") in enc.parent_keys
    assert dg.AssetKey("foundation_encoder") in graph.get(dg.AssetKey("model_eeg_foundation")).parent_keys
    scratch = load_config(write_config(tmp_path, models={"eeg_foundation": {"pretrained": False}}))
    g2 = build_definitions(scratch).resolve_asset_graph()
    assert dg.AssetKey("foundation_encoder") not in g2.get(dg.AssetKey("model_eeg_foundation")).parent_keys
    off = load_config(write_config(tmp_path, foundation={"enabled": False},
                                   models={"eeg_foundation": {"pretrained": False}}))  # fmt: skip
    keys = {k.to_user_string() for k in build_definitions(off).resolve_asset_graph().get_all_asset_keys()}
    assert "foundation_encoder" not in keys


def test_foundation_stage_then_fine_tuned_classifier(trained_workspace, tmp_path):
    """On a copy of the shared workspace (data and preprocessing done there): the foundation stage from the CLI
    pretrains the encoder again (its previous files removed first), then eeg_foundation is fine-tuned from it."""
    ws = copy_workspace(trained_workspace, tmp_path)
    data = yaml.safe_load(ws.config_path.read_text())
    data["models"] = {**ONLY_FOUNDATION, "eeg_foundation": {"pretrained": True}}
    path = tmp_path / "pretrained.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    inst = prepare_instance(cfg)
    before = inst.get_latest_materialization_event(dg.AssetKey("foundation_encoder"))
    shutil.rmtree(cfg.root / "foundation")  # only this test's run can leave the files checked below
    (cfg.logs_dir / "metrics" / "foundation_encoder.jsonl").unlink(missing_ok=True)
    out = CliRunner().invoke(app, ["run", "--stage", "foundation", "--config", str(path)])
    assert out.exit_code == 0, out.output

    event = inst.get_latest_materialization_event(dg.AssetKey("foundation_encoder"))
    assert before is None or event.run_id != before.run_id, "the CLI materialized the encoder again"
    meta = event.asset_materialization.metadata
    assert meta["labels_read"].value is False
    n_train = pd.read_csv(cfg.raw_dir / "train.csv")["eeg_id"].nunique()  # every tiny recording is >= 50 s
    recs = json.loads((cfg.root / "foundation" / "recordings.json").read_text())
    assert meta["n_recordings"].value == len(recs) > 0 and {s for s, _ in recs} == {"train", "test"}
    assert meta["n_train_recordings"].value == n_train
    assert meta["recording_hours"].value > 0 and meta["steps"].value == cfg.foundation.steps
    assert "data:image/png;base64" in meta["loss_curve"].value
    assert "data:image/png;base64" in meta["reconstruction"].value
    enc = cfg.root / "foundation" / "encoder"
    saved = torch.load(enc / "weights.pt", weights_only=True)
    assert json.loads((enc / "config.json").read_text())["corpus"]["labels_read"] is False
    assert list((cfg.logs_dir / "metrics").glob("foundation_encoder.jsonl"))

    report = run_pipeline(cfg, "models", fold=0)
    assert report.ok, report.failed
    m = inst.get_latest_materialization_event(dg.AssetKey("model_eeg_foundation")).asset_materialization.metadata
    assert 0 < m["val_kl"].value < 20
    final = json.loads((cfg.models_dir / "eeg_foundation" / "fold_0" / "final" / "config.json").read_text())
    assert final["model"]["pretrained"] is True and final["model"]["encoder_path"] == str(enc)
    assert saved["patch_embed.0.weight"].shape == (32, 200)
