"""Data-parallel pretraining: ``torchrun --nproc_per_node=2 -m hms_core.foundation.job`` (gloo on CPU) builds the
corpus once on rank 0, trains both ranks in step and writes one encoder, like a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from tests.hms_core.test_foundation import _raw_dir

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_ranks_pretrain_one_encoder(tmp_path):
    ws = tmp_path / "ws"
    raw = _raw_dir(tmp_path)
    (ws / "data").mkdir(parents=True)
    raw.rename(ws / "data" / "raw")
    cfg = tmp_path / "hms.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": "tiny", "workspace": {"root": str(ws)}, "logging": {"wandb_mode": "disabled",
                                                                   "mlflow_tracking_uri": None},
        "foundation": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 2, "eval_windows": 4,
                       "device": "cpu", "torch_threads": 1},
    }))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "hms_core.foundation.job", "--config", str(cfg)]  # fmt: skip
    out = subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    enc = ws / "foundation" / "encoder"
    state = torch.load(enc / "weights.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())
    metrics = json.loads((ws / "foundation" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["loss"])
    curve = (ws / "foundation" / "loss_curve.jsonl").read_text().splitlines()
    assert [json.loads(c)["step"] for c in curve] == [2, 4]
    assert json.loads((ws / "foundation" / "recordings.json").read_text())[0] == ["train", 1]
