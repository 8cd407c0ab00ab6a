"""Training engine: outputs, learning, two stages, determinism, kill -9 resume, DDP on gloo, loss and schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hms_core.config import TrainingConfig
from hms_core.constants import VOTE_COLUMNS, bipolar_flip_index
from hms_core.metrics import kl_divergence
from hms_core.models.registry import list_models
from hms_core.training import PRED_COLUMNS, TARGET_COLUMNS, load_trained, train_fold
from hms_core.training.testing import make_folds

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "resnet1d_gru": {"initial_filters": 8, "num_blocks": [1, 1], "gru_hidden": 8},
    "efficientnet": {"model_name": "test_efficientnet", "pretrained": False, "spectrograms": ["stft", "mel"]},
    "sparcnet": {"block_layers": 2, "growth_rate": 8, "bn_size": 2, "input_downsample": 4},
    "lightgbm": {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 4, "min_child_samples": 5, "num_threads": 1},
}


def tcfg(**kw: object) -> TrainingConfig:
    base = dict(epochs=2, batch_size=16, learning_rate=3e-3, warmup_epochs=0.5, torch_threads=1, seed=0,
                augment={"flip": 0.5, "time_shift_s": 1.0, "channel_dropout": 0.1, "mixup_alpha": 0.4})  # fmt: skip
    return TrainingConfig.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("processed")
    folds = make_folds(root, n_folds=3, rows_per_fold=36, n_test=6, seed=0)
    return folds, root / "windows" / "test"


@pytest.mark.parametrize("name", list_models())
def test_train_fold_writes_everything(name: str, data, tmp_path: Path) -> None:  # noqa: ANN001
    folds, test = data
    seen: list[tuple[int, int]] = []
    res = train_fold(name, TINY[name], tcfg(), folds[:2], folds[2], test, tmp_path, progress=lambda a, b: seen.append((a, b)),
                     preprocessing={"filter_low": 0.5})  # fmt: skip
    assert res.oof_pred.shape == (36, 6) and np.allclose(res.oof_pred.sum(1), 1)
    assert res.test_pred is not None and res.test_pred.shape == (6, 6)
    for k in ("val_kl", "val_kl_high_votes", "prior_kl", "accuracy", "auroc_Seizure", "epochs", "best_epoch",
              "seconds", "n_params", "train_samples_per_s"):  # fmt: skip
        assert k in res.metrics and np.isfinite(res.metrics[k]) or k.startswith("auroc"), k
    oof = pd.read_parquet(res.paths["oof"])
    assert list(oof["eeg_id"]) == list(res.val_index["eeg_id"])
    np.testing.assert_allclose(oof[list(PRED_COLUMNS)].to_numpy(), res.oof_pred)
    assert set(TARGET_COLUMNS) <= set(oof.columns)
    assert kl_divergence(oof[list(TARGET_COLUMNS)].to_numpy(), res.oof_pred) == pytest.approx(res.metrics["val_kl"])
    assert len(pd.read_parquet(res.paths["test_pred"])) == 6
    cfg = json.loads((tmp_path / "final" / "config.json").read_text())
    assert cfg["model"]["name"] == name and cfg["training"]["epochs"] == 2 and cfg["preprocessing"]
    np.testing.assert_allclose(load_trained(tmp_path).predict(folds[2]), res.oof_pred, rtol=1e-5, atol=1e-7)
    if name != "lightgbm":
        assert seen[-1] == (2, 2) and len(res.history) == 2
        assert not list(tmp_path.rglob(".*.tmp*"))  # no temporary files left behind


@pytest.mark.parametrize("name", ["lightgbm", "efficientnet"])
def test_models_beat_the_prior(name: str, data, tmp_path: Path) -> None:  # noqa: ANN001
    folds, _ = data
    res = train_fold(name, TINY[name], tcfg(epochs=5, learning_rate=5e-3), folds[:2], folds[2], None, tmp_path)
    m = res.metrics
    assert m["val_kl_high_votes"] < 0.7 * m["prior_kl_high_votes"] and m["val_kl"] < m["prior_kl"], m


def test_two_stage_schedule_and_low_vote_weights(data, tmp_path: Path) -> None:  # noqa: ANN001
    from hms_core.training.engine import _stages

    votes = np.array([3, 12, 5, 15])
    st = _stages(tcfg(epochs=2, stage2_epochs=1, low_vote_weight=0.25), votes)
    assert [(s[0], s[1]) for s in st] == [(0, 2), (2, 1)]
    assert st[0][3].tolist() == [0.25, 1, 0.25, 1] and st[1][2].tolist() == [False, True, False, True]
    assert _stages(tcfg(low_vote_weight=0.0), votes)[0][2].tolist() == [False, True, False, True]
    folds, _ = data
    res = train_fold("resnet1d_gru", TINY["resnet1d_gru"], tcfg(epochs=1, stage2_epochs=1), folds[:1], folds[2],
                     None, tmp_path)  # fmt: skip
    assert [h["stage"] for h in res.history] == [1, 2]


def test_seeded_runs_are_identical_and_finished_runs_are_reused(data, tmp_path: Path) -> None:  # noqa: ANN001
    folds, _ = data
    a = train_fold("resnet1d_gru", TINY["resnet1d_gru"], tcfg(), folds[:1], folds[2], None, tmp_path / "a")
    b = train_fold("resnet1d_gru", TINY["resnet1d_gru"], tcfg(), folds[:1], folds[2], None, tmp_path / "b")
    np.testing.assert_array_equal(a.oof_pred, b.oof_pred)
    again = train_fold("resnet1d_gru", TINY["resnet1d_gru"], tcfg(), folds[:1], folds[2], None, tmp_path / "a")
    np.testing.assert_array_equal(a.oof_pred, again.oof_pred)
    assert again.history == a.history
    c = train_fold("resnet1d_gru", TINY["resnet1d_gru"], tcfg(seed=1), folds[:1], folds[2], None, tmp_path / "a")
    assert not np.array_equal(a.oof_pred, c.oof_pred)  # another config: the old checkpoint is not reused


_KILL_SCRIPT = """
import json, sys, time
from pathlib import Path
from hms_core.config import TrainingConfig
from hms_core.training import train_fold
a = json.loads(sys.argv[1])
def slow(epoch, total):
    time.sleep(3)  # give the parent time to SIGKILL us after the first checkpoint
train_fold("resnet1d_gru", a["model"], TrainingConfig.model_validate(a["train"]), [Path(p) for p in a["train_dirs"]],
           Path(a["val"]), None, Path(a["out"]), progress=slow)
"""


def test_kill_9_then_resume_matches_uninterrupted_run(data, tmp_path: Path) -> None:  # noqa: ANN001
    folds, _ = data
    cfg = tcfg(epochs=3, ema_decay=0.9)
    ref = train_fold("resnet1d_gru", TINY["resnet1d_gru"], cfg, folds[:1], folds[2], None, tmp_path / "ref")
    out = tmp_path / "killed"
    args = {"model": TINY["resnet1d_gru"], "train": cfg.model_dump(mode="json"),
            "train_dirs": [str(folds[0])], "val": str(folds[2]), "out": str(out)}  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, json.dumps(args)], env=env)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 60
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL  # killed mid-training, not finished
    ck = torch.load(last, weights_only=False)
    assert 1 <= ck["state"]["next_epoch"] < 3 and not (out / "final").exists()
    res = train_fold("resnet1d_gru", TINY["resnet1d_gru"], cfg, folds[:1], folds[2], None, out, resume=True)
    np.testing.assert_array_equal(res.oof_pred, ref.oof_pred)
    assert [h["val_kl"] for h in res.history] == [h["val_kl"] for h in ref.history]
    w_ref = torch.load(ref.paths["weights"], weights_only=True)
    w_res = torch.load(res.paths["weights"], weights_only=True)
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)


def test_ddp_two_cpu_processes_gloo(data, tmp_path: Path) -> None:  # noqa: ANN001
    folds, _ = data
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hms_core.training.ddp", "--model", "resnet1d_gru", "--train", str(folds[0]), str(folds[1]),
           "--val", str(folds[2]), "--out", str(out), "--backend", "gloo",
           "--model-cfg", json.dumps(TINY["resnet1d_gru"]),
           "--train-cfg", json.dumps(tcfg().model_dump(mode="json"))]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("RESULT ") == 1  # only rank 0 reports and writes
    assert (out / "final" / "weights.pt").exists() and (out / "oof.parquet").exists()
    hist = [json.loads(json.dumps(h)) for h in torch.load(out / "checkpoints" / "last.pt", weights_only=False)["state"]["history"]]
    assert len(hist) == 2 and all(np.isfinite(h["val_kl"]) for h in hist)
    oof = pd.read_parquet(out / "oof.parquet")
    np.testing.assert_allclose(load_trained(out).predict(folds[2]), oof[list(PRED_COLUMNS)].to_numpy(), rtol=1e-5)


def test_epoch_sampler_shards_cover_the_permutation() -> None:
    from hms_core.training.data import EpochSampler

    shards = [list(EpochSampler(10, epoch=2, seed=0, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(20, 30))
    assert list(EpochSampler(10, 3, 0)) != [k + 10 for k in EpochSampler(10, 2, 0)]


def test_augmentations_are_seeded_per_epoch_and_row(data) -> None:  # noqa: ANN001
    from hms_core.training.data import AugmentParams, RowDataset, infer_input_spec, load_partition

    p = load_partition(data[0][0])
    spec = infer_input_spec("raw", p, {})
    rows = np.stack([np.zeros(len(p), int), np.arange(len(p))], 1)
    ds = RowDataset([p], rows, spec, augment=AugmentParams(flip=1.0, time_shift_s=0.0, channel_dropout=0.0))
    plain = RowDataset([p], rows, spec)
    x = plain[3][0]
    assert x.shape == (16, 2000)
    torch.testing.assert_close(ds[3][0], x[torch.as_tensor(bipolar_flip_index())])  # hemisphere flip
    noisy = RowDataset([p], rows, spec, augment=AugmentParams(0.5, 2.0, 0.3), seed=5)
    assert torch.equal(noisy[len(p) * 4 + 3][0], noisy[len(p) * 4 + 3][0])
    assert not torch.equal(noisy[len(p) * 4 + 3][0], noisy[len(p) * 5 + 3][0])
    np.testing.assert_allclose(plain[3][1].numpy(), p.votes[3] / p.votes[3].sum(), rtol=1e-6)


def test_soft_kl_loss_is_the_competition_metric() -> None:
    from hms_core.training.augment import soft_kl_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 6, generator=g)
    y = torch.softmax(torch.randn(8, 6, generator=g) * 2, 1)
    y[0] = torch.tensor([1.0, 0, 0, 0, 0, 0])
    ref = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(logits, 1), y)
    torch.testing.assert_close(soft_kl_loss(logits, y), ref)
    assert float(soft_kl_loss(logits, y)) == pytest.approx(kl_divergence(y.numpy(), torch.softmax(logits, 1).numpy()), rel=1e-5)
    w = torch.tensor([1.0] * 4 + [0.0] * 4)
    torch.testing.assert_close(soft_kl_loss(logits, y, w), soft_kl_loss(logits[:4], y[:4]))


def test_warmup_cosine_and_ema() -> None:
    from hms_core.training.schedule import EMA, WarmupCosine

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    s = WarmupCosine(opt, total_epochs=10, warmup_epochs=2)
    lrs = [s.set(t) for t in np.linspace(0, 10, 41)]
    assert lrs[8] == pytest.approx(1.0) and lrs[4] == pytest.approx(0.5)
    assert all(a <= b for a, b in zip(lrs[:8], lrs[1:9])) and all(a >= b for a, b in zip(lrs[8:], lrs[9:]))
    assert lrs[-1] == pytest.approx(0.01)
    m = torch.nn.Linear(1, 1)
    ema = EMA(m, 0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    for _ in range(50):
        ema.update(m)
    assert float(ema.module.weight) == pytest.approx(1.0, abs=1e-6)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hms_core.training import checkpoint as ck

    ck.save_checkpoint(tmp_path / "last.pt", {"epoch": 1})

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "last.pt", {"epoch": 2})
    assert ck.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_partition_errors_name_the_file(tmp_path: Path, data) -> None:  # noqa: ANN001
    from hms_core.training.data import PartitionError, load_partition

    with pytest.raises(PartitionError, match="index.parquet does not exist"):
        load_partition(tmp_path)
    p = load_partition(data[0][0])
    with pytest.raises(PartitionError, match=r"referential.npy does not exist; this partition has arrays"):
        p.array("referential")
    assert set(VOTE_COLUMNS) <= set(p.index.columns)
