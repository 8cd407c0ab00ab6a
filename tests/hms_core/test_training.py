"""Training engine: outputs, learning, two stages, determinism, kill -9 resume, inputs from the partition layout,
loss and schedule. (DDP and the asset/torchrun parity: test_ddp.py.)"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hms_core.config import TrainingConfig
from hms_core.constants import VOTE_COLUMNS, bipolar_flip_index
from hms_core.metrics import kl_divergence
from hms_core.models.registry import create_model, list_models
from hms_core.partition import PartitionError, load_partition
from hms_core.training import PRED_COLUMNS, TARGET_COLUMNS, load_trained, train_fold
from hms_core.training.inputs import infer_input_spec
from hms_core.training.testing import make_folds, make_partition

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "resnet1d_gru": {"initial_filters": 8, "num_blocks": [1, 1], "gru_hidden": 8},
    "efficientnet": {"model_name": "test_efficientnet", "pretrained": False, "spectrograms": ["stft", "mel"]},
    "sparcnet": {"block_layers": 2, "growth_rate": 8, "bn_size": 2, "input_downsample": 4},
    "lightgbm": {
        "n_estimators": 60,
        "learning_rate": 0.1,
        "num_leaves": 4,
        "min_child_samples": 5,
        "num_threads": 1,
    },
    "eeg_foundation": {"model_size": "tiny", "pretrained": False},
}


def tcfg(**kw: object) -> TrainingConfig:
    base = {
        "epochs": 2,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "warmup_epochs": 0.5,
        "torch_threads": 1,
        "seed": 0,
        "augment": {"flip": 0.5, "time_shift_s": 1.0, "channel_dropout": 0.1, "mixup_alpha": 0.4},
    }
    return TrainingConfig.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("processed")
    folds = make_folds(root, n_folds=3, rows_per_fold=36, n_test=6, seed=0)
    return folds, root / "windows" / "test"


@pytest.mark.parametrize("name", list_models())
def test_train_fold_writes_everything(name: str, data, tmp_path: Path) -> None:
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
    assert kl_divergence(oof[list(TARGET_COLUMNS)].to_numpy(), res.oof_pred) == pytest.approx(
        res.metrics["val_kl"]
    )
    assert len(pd.read_parquet(res.paths["test_pred"])) == 6
    cfg = json.loads((tmp_path / "final" / "config.json").read_text())
    assert cfg["model"]["name"] == name and cfg["training"]["epochs"] == 2 and cfg["preprocessing"]
    np.testing.assert_allclose(load_trained(tmp_path).predict(folds[2]), res.oof_pred, rtol=1e-5, atol=1e-7)
    if name != "lightgbm":
        assert seen[-1] == (2, 2) and len(res.history) == 2
        assert not list(tmp_path.rglob(".*.tmp*"))  # no temporary files left behind


@pytest.mark.parametrize("name", ["lightgbm", "efficientnet"])
def test_models_beat_the_prior(name: str, data, tmp_path: Path) -> None:
    folds, _ = data
    res = train_fold(name, TINY[name], tcfg(epochs=5, learning_rate=5e-3), folds[:2], folds[2], None, tmp_path)
    m = res.metrics
    assert m["val_kl_high_votes"] < 0.7 * m["prior_kl_high_votes"] and m["val_kl"] < m["prior_kl"], m


def test_two_stage_schedule_and_low_vote_weights(data, tmp_path: Path) -> None:
    from hms_core.training.fold import plan_stages

    votes = np.array([3, 12, 5, 15])
    st = plan_stages(tcfg(epochs=2, stage2_epochs=1, low_vote_weight=0.25), votes)
    assert [(s.number, s.first_epoch, s.n_epochs) for s in st] == [(1, 0, 2), (2, 2, 1)]
    assert st[0].weights.tolist() == [0.25, 1, 0.25, 1] and st[1].mask.tolist() == [False, True, False, True]
    assert plan_stages(tcfg(low_vote_weight=0.0), votes)[0].mask.tolist() == [False, True, False, True]
    folds, _ = data
    res = train_fold("resnet1d_gru", TINY["resnet1d_gru"], tcfg(epochs=1, stage2_epochs=1), folds[:1], folds[2],
                     None, tmp_path)  # fmt: skip
    assert [h["stage"] for h in res.history] == [1, 2]


def test_seeded_runs_are_identical_and_finished_runs_are_reused(data, tmp_path: Path) -> None:
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


def test_kill_9_then_resume_matches_uninterrupted_run(data, tmp_path: Path) -> None:
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


def test_epoch_sampler_shards_cover_the_permutation() -> None:
    from hms_core.training.data import EpochSampler

    shards = [list(EpochSampler(10, epoch=2, seed=0, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(20, 30))
    assert list(EpochSampler(10, 3, 0)) != [k + 10 for k in EpochSampler(10, 2, 0)]


def test_augmentations_are_seeded_per_epoch_and_row(data) -> None:
    from hms_core.partition import load_partition
    from hms_core.training.data import AugmentParams, RowDataset, all_rows
    from hms_core.training.inputs import infer_input_spec

    p = load_partition(data[0][0])
    spec = infer_input_spec("raw", p, {})
    rows = all_rows(p)
    ds = RowDataset([p], rows, spec, augment=AugmentParams(flip=1.0, time_shift_s=0.0, channel_dropout=0.0))
    plain = RowDataset([p], rows, spec)
    x = plain[3][0]
    assert x.shape == (16, 2000)
    torch.testing.assert_close(ds[3][0], x[torch.as_tensor(bipolar_flip_index())])  # hemisphere flip
    noisy = RowDataset([p], rows, spec, augment=AugmentParams(0.5, 2.0, 0.3), seed=5)
    assert torch.equal(noisy[len(p) * 4 + 3][0], noisy[len(p) * 4 + 3][0])
    assert not torch.equal(noisy[len(p) * 4 + 3][0], noisy[len(p) * 5 + 3][0])
    np.testing.assert_allclose(plain[3][1].numpy(), p.votes[3] / p.votes[3].sum(), rtol=1e-6)


def test_raw_inputs_take_the_layout_segment_with_a_shorter_context(tmp_path: Path) -> None:
    """context_length 6000: the labelled segment is samples 2000-4000 (centred), not the raw window's 4000-6000."""
    from hms_core.partition import load_partition
    from hms_core.training.data import AugmentParams, RowDataset, all_rows
    from hms_core.training.inputs import infer_input_spec

    p = load_partition(make_partition(tmp_path / "p", 6, n_times=6000))
    assert p.layout.context_length == 6000 and p.layout.segment == slice(2000, 4000)
    spec = infer_input_spec("raw", p, {})
    assert spec.n_times == 2000 and not spec.use_context
    ds = RowDataset([p], all_rows(p), spec)
    bip = p.array("bipolar")
    for r in range(len(p)):
        np.testing.assert_array_equal(ds[r][0].numpy(), np.asarray(bip[r, :, 2000:4000], np.float32))
    # a time shift moves the window around the segment start, within the context
    shifted = RowDataset([p], all_rows(p), spec, augment=AugmentParams(time_shift_s=1.0), seed=3)
    x = shifted[0][0].numpy()
    starts = [s for s in range(4001) if np.array_equal(x, np.asarray(bip[0, :, s : s + 2000], np.float32))]
    assert len(starts) == 1 and abs(starts[0] - 2000) <= 200
    ctx = infer_input_spec("raw", p, {"use_context": True})
    assert ctx.n_times == 6000 and RowDataset([p], all_rows(p), ctx)[1][0].shape == (16, 6000)
    # a model trained on 2000-sample segments refuses a partition with another segment length
    q = load_partition(make_partition(tmp_path / "q", 2, n_times=6000, segment_length=1000))
    with pytest.raises(PartitionError, match=r"16 bipolar channels x 2000 samples.*segment_length=1000"):
        RowDataset([q], all_rows(q), spec)


def test_fold_partitions_must_share_one_layout(data, tmp_path: Path) -> None:
    folds, _ = data
    other = make_partition(tmp_path / "short", 8, n_times=6000)
    with pytest.raises(PartitionError, match=r"different layouts \(context_length: 10000 vs 6000; segment_start"):
        train_fold("resnet1d_gru", TINY["resnet1d_gru"], tcfg(), [folds[0], other], folds[2], None, tmp_path / "o")


def test_trainer_is_chosen_by_the_spec_framework() -> None:
    from hms_core.models.specs import MODEL_SPECS
    from hms_core.training import gbm_trainer, torch_trainer
    from hms_core.training.engine import TRAINERS, get_trainer

    assert {s.framework for s in MODEL_SPECS.values()} <= set(TRAINERS)
    assert get_trainer("pytorch") is torch_trainer.fit and get_trainer("lightgbm") is gbm_trainer.fit
    with pytest.raises(ValueError, match=r"'framework' parameter. Allowed values are 'pytorch', 'lightgbm'"):
        get_trainer("xgboost")


def test_factories_and_epoch_functions_return_metrics(data) -> None:
    from hms_core.training import torch_trainer as tt
    from hms_core.training.data import RowDataset, all_rows, make_loader
    from hms_core.training.fold import load_fold_data

    folds, _ = data
    cfg = tcfg(ema_decay=0.5)
    fd = load_fold_data(folds[:1], folds[2], None, cfg)
    assert fd.total_epochs == 2 and fd.rows.shape == (36, 2) and fd.stage_at(1).number == 1
    model = create_model("resnet1d_gru", **TINY["resnet1d_gru"], n_chans=16, n_times=2000)
    opt = tt.create_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == cfg.weight_decay
    fd, plan = tt.plan_fold_schedule(fd, cfg)
    assert plan.factor == 1.0 and fd.total_epochs == 2  # min_steps 0: the schedule as configured
    sched, ema = tt.create_scheduler(opt, plan), tt.create_ema(model, cfg)
    assert ema is not None and tt.create_ema(model, tcfg(ema_decay=None)) is None
    spec = infer_input_spec("raw", fd.train[0], TINY["resnet1d_gru"])
    t = tt._Trainable(model, model, opt, sched, torch.amp.GradScaler("cuda", enabled=False), ema,
                      torch.device("cpu"), False)  # fmt: skip
    loader = make_loader(RowDataset(fd.train, fd.rows, spec), cfg.batch_size, 0, cfg.seed, True, 0, drop_last=True)
    tr = tt.train_one_epoch(t, loader, 0, cfg)
    assert tr["train_samples"] == 32 and np.isfinite(tr["train_loss"]) and tr["lr"] > 0
    assert sched.t == 1.0  # the schedule ends the epoch at t = epoch + 1
    ev, probs = tt.evaluate(t.eval_model, RowDataset([fd.val], all_rows(fd.val), spec), fd.val.targets,
                            fd.val_high_votes, cfg, t.device, False)  # fmt: skip
    assert probs.shape == (36, 6) and ev["val_kl"] == pytest.approx(kl_divergence(fd.val.targets, probs))


def test_soft_kl_loss_is_the_competition_metric() -> None:
    from hms_core.training.augment import soft_kl_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 6, generator=g)
    y = torch.softmax(torch.randn(8, 6, generator=g) * 2, 1)
    y[0] = torch.tensor([1.0, 0, 0, 0, 0, 0])
    ref = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(logits, 1), y)
    torch.testing.assert_close(soft_kl_loss(logits, y), ref)
    assert float(soft_kl_loss(logits, y)) == pytest.approx(
        kl_divergence(y.numpy(), torch.softmax(logits, 1).numpy()), rel=1e-5
    )
    w = torch.tensor([1.0] * 4 + [0.0] * 4)
    torch.testing.assert_close(soft_kl_loss(logits, y, w), soft_kl_loss(logits[:4], y[:4]))


def test_warmup_cosine_and_ema() -> None:
    from hms_core.training.schedule import EMA, WarmupCosine

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    s = WarmupCosine(opt, total_epochs=10, warmup_epochs=2)
    lrs = [s.set(t) for t in np.linspace(0, 10, 41)]
    assert lrs[8] == pytest.approx(1.0) and lrs[4] == pytest.approx(0.5)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:9])) and all(
        a >= b for a, b in itertools.pairwise(lrs[8:])
    )
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


def test_partition_errors_name_the_file(tmp_path: Path, data) -> None:
    folds, _ = data
    with pytest.raises(PartitionError, match=r"no manifest.json.*hms run --stage preprocessing"):
        train_fold("lightgbm", TINY["lightgbm"], tcfg(), folds[:1], tmp_path / "missing", None, tmp_path / "o")
    p = load_partition(folds[0])
    with pytest.raises(PartitionError, match=r"referential.npy does not exist; this partition has arrays"):
        p.array("referential")
    assert set(VOTE_COLUMNS) <= set(p.index.columns) and p.manifest["n_rows"] == len(p)


def test_a_small_fold_trains_min_steps_and_monitors_every_row(data, tmp_path: Path) -> None:
    """36 training rows at batch 16 make 2 steps an epoch: 2 epochs (4 steps) are stretched to min_steps=12 (6
    epochs); the 36-row validation fold has fewer than MIN_MONITOR_ROWS high-vote rows: all rows are monitored."""
    folds, _ = data
    cfg = tcfg(min_steps=12, early_stopping_patience=50)
    res = train_fold("resnet1d_gru", TINY["resnet1d_gru"], cfg, folds[:1], folds[2], None, tmp_path)
    assert res.metrics["epochs"] == 6 and len(res.history) == 6
    best = min(range(6), key=lambda i: res.history[i]["val_kl"])
    assert res.metrics["best_epoch"] == best
