"""The EEG foundation model: encoder (channel subsets through the key-padding mask), masking, objectives, the
corpus over whole recordings (no label read), pretraining with exact resume after a real SIGKILL, and the
fine-tuned classifier (pretrained weights, linear probe, layer-wise learning-rate decay)."""

from __future__ import annotations

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

from hms_core.config import FoundationConfig, PreprocessingConfig, load_config
from hms_core.constants import EEG_FILE_COLUMNS, SFREQ, bipolar_names
from hms_core.foundation.data import (
    ID_COLUMN,
    WindowSampler,
    block_starts,
    build_corpus,
    list_recordings,
    select_recordings,
)
from hms_core.foundation.masking import augment_view, random_patch_mask
from hms_core.foundation.model import CHANNELS, MODEL_SIZES, EEGEncoder, channel_index
from hms_core.foundation.objectives import info_nce, log_amplitude_spectrum, masked_mse
from hms_core.foundation.pretrain import load_encoder, pretrain
from hms_core.models.registry import create_model

REPO = Path(__file__).resolve().parents[2]


# --- encoder --------------------------------------------------------------------------------------------------
def test_masked_channel_is_left_out_of_attention_not_zero_filled():
    torch.manual_seed(0)
    enc = EEGEncoder.from_size("tiny", dropout=0.0).eval()
    x = torch.randn(2, 16, 2000)
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[:, 5] = False
    with torch.no_grad():
        masked = enc(x, keep)
        x2 = x.clone()
        x2[:, 5] = 100 * torch.randn(2000)  # whatever a flagged channel holds never reaches the others
        again = enc(x2, keep)
        # the same window with the channel removed and the others keeping their embeddings
        others = [c for c in range(16) if c != 5]
        subset = enc(x[:, others], None, torch.as_tensor(others))
        zeros = x.clone()
        zeros[:, 5] = 0
        zero_filled = enc(zeros, torch.ones(2, 16, dtype=torch.bool))
    torch.testing.assert_close(masked[:, others], again[:, others])
    torch.testing.assert_close(masked[:, others], subset, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked[:, others], zero_filled[:, others], atol=1e-3)
    assert masked.shape == (2, 16, 10, MODEL_SIZES["tiny"]["d_model"])


def test_zero_channels_are_masked_by_default_and_18_channels_share_the_vocabulary():
    enc = EEGEncoder.from_size("tiny", dropout=0.0).eval()
    x = torch.randn(1, 18, 1000)
    x[0, 3] = 0
    assert EEGEncoder.default_channel_mask(x).tolist()[0] == [c != 3 for c in range(18)]
    assert enc(x).shape == (1, 18, 5, 32)
    assert list(CHANNELS[:16]) == list(bipolar_names(False)) and len(CHANNELS) == 18
    with pytest.raises(ValueError, match="channel"):
        channel_index(["Fp1-XX"])


def test_base_size_is_a_few_million_parameters():
    n = sum(p.numel() for p in EEGEncoder.from_size("base").parameters())
    assert 2e6 < n < 10e6


# --- masking and objectives -----------------------------------------------------------------------------------
def test_patch_mask_hits_the_ratio_on_usable_channels_only():
    usable = torch.ones(4, 16, dtype=torch.bool)
    usable[1, :6] = False
    m = random_patch_mask(usable, 10, 0.5, torch.Generator().manual_seed(0))
    assert m.shape == (4, 16, 10)
    assert m[0].sum() == 80 and m[1].sum() == 50
    assert not m[1, :6].any()
    m2 = random_patch_mask(usable, 10, 0.5, torch.Generator().manual_seed(1))
    assert not torch.equal(m, m2)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(usable, 10, 1.0, torch.Generator())


def test_views_drop_channels_through_the_mask_and_keep_one():
    x = torch.randn(8, 16, 2000)
    usable = torch.zeros(8, 16, dtype=torch.bool)
    usable[:, 2] = True
    v, keep = augment_view(x, usable, torch.Generator().manual_seed(0), channel_drop=0.99)
    assert keep[:, 2].all() and keep.sum() == 8 and v.shape == x.shape and not torch.equal(v, x)


def test_reconstruction_loss_counts_masked_patches_only():
    pred, target = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    loss = masked_mse(pred, target, mask)
    pred2 = pred.clone()
    pred2[~mask] = 1000.0
    assert torch.isclose(loss, masked_mse(pred2, target, mask))
    assert torch.isclose(loss, ((pred[0, 1, 2] - target[0, 1, 2]) ** 2).mean())
    spec = log_amplitude_spectrum(torch.sin(2 * torch.pi * 10 * torch.arange(200) / SFREQ))
    assert spec.shape == (101,) and int(spec.argmax()) == 10


def test_info_nce_rewards_matching_views():
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    same = info_nce(z, z + 0.01 * torch.randn(16, 8), 0.2)
    shuffled = info_nce(z, z[torch.randperm(16)], 0.2)
    assert same < 0.5
    assert shuffled > 2.0
    assert abs(float(info_nce(torch.ones(4, 8), torch.ones(4, 8), 0.2)) - np.log(4)) < 1e-4


# --- corpus ---------------------------------------------------------------------------------------------------
def _raw_dir(root: Path, lengths_s=(120, 64, 30), n_test: int = 1, seed: int = 0) -> Path:
    """A raw HMS folder of whole recordings; train.csv carries only eeg_id (no label column at all)."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    for split, lens in (("train", lengths_s), ("test", (50,) * n_test)):
        (raw / f"{split}_eegs").mkdir(parents=True)
        ids = []
        for k, n in enumerate(lens):
            eid = 1000 * (split == "test") + k + 1
            t = np.arange(n * SFREQ) / SFREQ
            sig = 30 * np.sin(2 * np.pi * (4 + k) * t)[:, None] + 20 * rng.standard_normal((n * SFREQ, 20))
            pd.DataFrame(sig.astype(np.float32), columns=list(EEG_FILE_COLUMNS)).to_parquet(
                raw / f"{split}_eegs" / f"{eid}.parquet")  # fmt: skip
            ids += [eid, eid]  # several label rows per recording
        pd.DataFrame({ID_COLUMN: ids}).to_csv(raw / f"{split}.csv", index=False)
    return raw


def test_corpus_covers_whole_recordings_without_reading_labels(tmp_path):
    raw = _raw_dir(tmp_path)
    recs = list_recordings(raw)
    assert [(r.split, r.eeg_id, r.n_samples) for r in recs] == [
        ("train", 1, 24000), ("train", 2, 12800), ("train", 3, 6000), ("test", 1001, 10000)]  # fmt: skip
    assert block_starts(24000, 2000) == [0, 10000, 14000] and block_starts(12800, 2000) == [0, 2800]
    assert block_starts(11000, 2000) == [0] and block_starts(6000, 2000) == []
    corpus = build_corpus(recs, PreprocessingConfig(), tmp_path / "corpus", window=2000)
    m = corpus.manifest
    assert m["n_blocks"] == 3 + 2 + 1 and m["skipped_short_recordings"] == [3] and m["labels_read"] is False
    assert m["n_test_recordings"] == 1 and m["columns_read"]["train.csv"] == [ID_COLUMN]
    bip = corpus.shards[0].array("bipolar")
    assert bip.shape == (6, 18, 10000) and corpus.channels == CHANNELS
    # the same transform as the training partitions: process_windows with the platform's EEG parameters
    from hms_core.eeg_io import read_hms_eeg
    from hms_core.foundation.data import corpus_config
    from hms_core.preprocess import process_windows

    ccfg = corpus_config(PreprocessingConfig())
    assert ccfg.eeg.filter_low == PreprocessingConfig().eeg.filter_low and ccfg.eeg.scaling == "robust"
    eeg = read_hms_eeg(recs[0].path)
    # the recording's three blocks in one batch, as the corpus transforms them (scipy's FFT rounds a row by the
    # SIMD lane it gets in its batch, so a block alone can differ in the last float16 step)
    blocks = np.stack([eeg[a : a + 10000] for a in (0, 10000, 14000)])
    ref = process_windows(blocks, ccfg, compute_features=False)
    # equal up to one float16 step: scipy's FFT rounds a row by its SIMD lane, which differs between CPUs
    np.testing.assert_allclose(np.asarray(bip[:3], np.float32), ref.bipolar.astype(np.float16).astype(np.float32),
                               rtol=2.0**-10, atol=1e-4)  # fmt: skip
    assert np.abs(np.median(np.asarray(bip[0], np.float32), axis=1)).max() < 0.1
    again = build_corpus(recs, PreprocessingConfig(), tmp_path / "corpus", window=2000)
    assert again.manifest["seconds"] == m["seconds"]  # reused, not rebuilt
    assert len(select_recordings(recs, 2, None, 0)) == 2
    assert sum(r.n_samples for r in select_recordings(recs, None, 24000 / SFREQ / 3600, 0)) <= 24000


def test_window_sampler_is_a_function_of_seed_and_step(tmp_path):
    raw = _raw_dir(tmp_path)
    corpus = build_corpus(list_recordings(raw), PreprocessingConfig(), tmp_path / "c", window=2000)
    s = WindowSampler(corpus, 2000, 1000, seed=3)
    assert len(s.train_windows) + len(s.eval_windows) == 6 * 9
    np.testing.assert_array_equal(s.batch(7, 8), WindowSampler(corpus, 2000, 1000, seed=3).batch(7, 8))
    assert not np.array_equal(s.batch(7, 8), s.batch(8, 8))
    x, q = s.get(s.batch(0, 4))
    assert x.shape == (4, 18, 2000) and x.dtype == np.float32 and q.shape == (4, 18)


# --- pretraining ----------------------------------------------------------------------------------------------
FAST = {"steps": 12, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 2, "log_every": 2, "eval_windows": 4,
        "device": "cpu", "torch_threads": 1}  # fmt: skip


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "encoder" / "weights.pt", weights_only=True)


def test_pretraining_writes_encoder_curve_and_plot(tmp_path):
    raw = _raw_dir(tmp_path)
    corpus = build_corpus(list_recordings(raw), PreprocessingConfig(), tmp_path / "c", window=2000)
    cfg = FoundationConfig(**FAST)
    res = pretrain(corpus, cfg, tmp_path / "out", resume=False)
    assert [h["step"] for h in res.history] == [2, 4, 6, 8, 10, 12]
    assert all(np.isfinite(h["loss"]) and "contrastive" in h and "spectrum" in h for h in res.history)
    assert "eval_loss" in res.history[-1]
    enc, config = load_encoder(tmp_path / "out" / "encoder")
    assert config["architecture"]["d_model"] == 32 and config["channels"] == list(CHANNELS)
    assert config["corpus"]["labels_read"] is False and config["pretraining"]["mask_ratio"] == 0.5
    assert (tmp_path / "out" / "reconstruction.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "out" / "loss_curve.jsonl").read_text().splitlines()) == 6
    with pytest.raises(FileNotFoundError, match="hms run --stage foundation"):
        load_encoder(tmp_path / "nowhere")
    # the weights actually moved, and a different objective weighting gives a different encoder
    init = EEGEncoder.from_size("tiny", dropout=0.1)
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in enc.state_dict().items())
    only_recon = pretrain(corpus, FoundationConfig(**FAST, contrastive_weight=0.0, spectrum_target=False),
                          tmp_path / "out2", resume=False)  # fmt: skip
    assert "spectrum" not in only_recon.history[0]
    assert not torch.equal(_state(tmp_path / "out")["blocks.0.qkv.weight"],
                           _state(tmp_path / "out2")["blocks.0.qkv.weight"])  # fmt: skip


_CHILD = """
import sys, torch
from hms_core.config import FoundationConfig, PreprocessingConfig
from hms_core.foundation.data import build_corpus, list_recordings
from hms_core.foundation.pretrain import pretrain
corpus = build_corpus(list_recordings(sys.argv[1]), PreprocessingConfig(), sys.argv[2], window=2000)
pretrain(corpus, FoundationConfig(**eval(sys.argv[4])), sys.argv[3], resume=True)
"""


def test_resume_after_sigkill_is_exact(tmp_path):
    raw = _raw_dir(tmp_path)
    fast = {**FAST, "steps": 40}
    corpus = build_corpus(list_recordings(raw), PreprocessingConfig(), tmp_path / "c", window=2000)
    ref = pretrain(corpus, FoundationConfig(**fast), tmp_path / "ref", resume=False)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(raw), str(tmp_path / "c"), str(out), repr(fast)],
                            env=env, cwd=REPO)  # fmt: skip
    ckpt = out / "checkpoints" / "last.pt"
    step = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                step = int(torch.load(ckpt, weights_only=True)["step"])
            except Exception:  # noqa: BLE001 - the rename raced the read; try again
                step = 0
            if step >= 6:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    assert 6 <= step < 40 and not (out / "encoder").exists()

    res = pretrain(corpus, FoundationConfig(**fast), out, resume=True)
    assert res.resumed_from >= 6
    ref_w, got_w = _state(tmp_path / "ref"), _state(out)
    for k in ref_w:
        assert torch.equal(ref_w[k], got_w[k]), k
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]


# --- the fine-tuned classifier -----------------------------------------------------------------------------------
def _encoder_dir(tmp_path: Path) -> Path:
    from hms_core.foundation.pretrain import save_encoder

    torch.manual_seed(7)
    save_encoder(EEGEncoder.from_size("tiny"), tmp_path / "enc")
    return tmp_path / "enc"


def test_classifier_loads_the_pretrained_encoder_or_a_random_one(tmp_path):
    path = _encoder_dir(tmp_path)
    saved = torch.load(path / "weights.pt", weights_only=True)
    pre = create_model("eeg_foundation", pretrained=True, encoder_path=str(path), n_chans=16, n_times=2000)
    for k, v in pre.encoder.state_dict().items():
        assert torch.equal(v, saved[k]), k
    scratch = create_model("eeg_foundation", pretrained=False, n_chans=16, n_times=2000)
    assert not torch.equal(scratch.encoder.patch_embed[0].weight, saved["patch_embed.0.weight"])
    with pytest.raises(ValueError, match="model_size"):
        create_model("eeg_foundation", pretrained=True, model_size="base", encoder_path=str(path), n_chans=16,
                     n_times=2000)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="foundation"):
        create_model("eeg_foundation", pretrained=True, encoder_path=str(tmp_path / "none"), n_chans=16,
                     n_times=2000)  # fmt: skip


def test_linear_probe_freezes_the_encoder_and_layer_decay_orders_the_rates(tmp_path):
    from hms_core.training.torch_trainer import create_optimizer

    probe = create_model("eeg_foundation", pretrained=True, encoder_path=str(_encoder_dir(tmp_path)),
                         linear_probe=True, n_chans=16, n_times=2000).train()  # fmt: skip
    assert not probe.encoder.training and probe.head.training
    assert not any(p.requires_grad for p in probe.encoder.parameters())
    groups = probe.param_groups(1e-3, 0.01)
    assert {g["layer"] for g in groups} == {3}  # only the head
    ft = create_model("eeg_foundation", pretrained=False, layer_decay=0.5, n_chans=16, n_times=2000)
    lrs = {g["layer"]: g["lr"] for g in ft.param_groups(1e-3, 0.01)}
    assert lrs == {0: 1e-3 * 0.5**3, 1: 1e-3 * 0.5**2, 2: 1e-3 * 0.5, 3: 1e-3}
    tcfg = load_config("tiny").training
    opt = create_optimizer(ft, tcfg)
    want = {round(v / 1e-3 * tcfg.learning_rate, 10) for v in lrs.values()}
    assert {round(g["lr"], 10) for g in opt.param_groups} == want
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in ft.parameters())
    assert all(g["weight_decay"] == 0 for g in ft.param_groups(1e-3, 0.01) for p in g["params"] if p.ndim < 2)


def test_training_job_points_the_classifier_at_the_foundation_encoder(tmp_path):
    from hms_core.training.job import fold_job

    cfg = load_config(
        "tiny", {"workspace": {"root": str(tmp_path)}, "models": {"eeg_foundation": {"pretrained": True}}}
    )
    job = fold_job(cfg, "eeg_foundation", "fold_0")
    assert job.model_cfg["encoder_path"] == str(tmp_path / "foundation" / "encoder")
    assert json.dumps(job.model_cfg)
