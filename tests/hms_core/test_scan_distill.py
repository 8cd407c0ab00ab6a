"""The distilled scanning model's inputs (hms_core.scanning.frontend.distill_inputs) and their scan.distill keys."""

from __future__ import annotations

import numpy as np
import pytest

from hms_core.config import load_config
from hms_core.constants import SFREQ
from hms_core.scanning.config import DistillConfig, ScanConfig
from hms_core.scanning.frontend import distill_inputs, distill_n_frames, frame_power, prepare_chunk

SEG = 10 * SFREQ


def _log_power(fp, dcfg: DistillConfig, starts: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    """The inputs' log10 power, un-standardised with the window's own mean and spread (the scalars)."""
    ok = np.ones((len(starts), 16), bool) if ok is None else ok
    spec, scal = distill_inputs(fp, starts, distill_n_frames(dcfg, SEG), ok, dcfg)
    return spec * scal[:, 1, None, None, None] + scal[:, 0, None, None, None]


def _chirp_chunk():
    pp = load_config("tiny").preprocessing
    rng = np.random.default_rng(0)
    t = np.arange(120 * SFREQ) / SFREQ
    chirp = 40 * np.sin(2 * np.pi * (2 + t / 15) * t)  # the rhythm's frequency rises over the recording
    x = (chirp[:, None] * rng.uniform(0.5, 1.5, 20) + rng.normal(0, 5, (len(t), 20))).astype(np.float32)
    return prepare_chunk(x, 0, pp)


def test_context_frames_are_the_stft_frames_around_the_segment():
    chunk = _chirp_chunk()
    seg = np.array([40, 62]) * SFREQ
    plain, wide = DistillConfig(), DistillConfig(context_s=5.0)
    fp = frame_power(chunk, wide, int(seg.min()) - 5 * SFREQ, int(seg.max()) + SEG + 5 * SFREQ, 20.0)
    a, b = _log_power(fp, plain, seg), _log_power(fp, wide, seg)
    ctx = 5 * SFREQ // wide.hop
    assert b.shape[-1] == a.shape[-1] + 2 * ctx == SEG // wide.hop + 2 * ctx
    np.testing.assert_allclose(b[..., ctx:-ctx], a, atol=1e-4)  # the segment's own frames, unchanged
    # the first context frames are those of the segment 5 s earlier, the last those of the segment 5 s later
    np.testing.assert_allclose(
        b[..., : 2 * ctx], _log_power(fp, plain, seg - 5 * SFREQ)[..., : 2 * ctx], atol=1e-4
    )
    np.testing.assert_allclose(
        b[..., -2 * ctx :], _log_power(fp, plain, seg + 5 * SFREQ)[..., -2 * ctx :], atol=1e-4
    )
    assert np.abs(b[..., :ctx] - a[..., :ctx]).max() > 0.3  # the rhythm evolves: the context is other frames


def test_derivation_rows_are_each_derivations_log_power_and_a_bad_one_reads_its_chain():
    chunk = _chirp_chunk()
    seg = np.array([40, 40]) * SFREQ
    chains, ders = DistillConfig(), DistillConfig(spatial="derivations")
    fp = frame_power(chunk, ders, int(seg[0]), int(seg[0]) + SEG, 20.0)
    band = (fp.freqs >= 0.5 - 1e-9) & (fp.freqs <= 20.0 + 1e-9)
    power = fp.power[:16][:, : SEG // ders.hop][:, :, band].transpose(0, 2, 1)  # (16, F, T) of the segment
    ok = np.ones((2, 16), bool)
    ok[1, 5] = False  # the second window cannot use derivation 5 (chain 1's second)
    lp = _log_power(fp, ders, seg, ok)
    assert lp.shape == (2, 16, band.sum(), SEG // ders.hop)
    np.testing.assert_allclose(lp[0], np.log10(power + 1e-6), atol=1e-4)
    np.testing.assert_allclose(lp[1, 5], np.log10(power[[4, 6, 7]].mean(0) + 1e-6), atol=1e-4)
    np.testing.assert_allclose(np.delete(lp[1], 5, 0), np.delete(lp[0], 5, 0), atol=1e-4)
    by_chain = _log_power(fp, chains, seg, ok)
    assert by_chain.shape[1] == 4
    np.testing.assert_allclose(
        by_chain[0], np.log10(power.reshape(4, 4, *power.shape[1:]).mean(1) + 1e-6), atol=1e-4
    )
    np.testing.assert_allclose(by_chain[1, 1], lp[1, 5], atol=1e-4)  # the chain of its usable derivations


def test_context_must_fit_the_window_and_the_hop_grid():
    assert DistillConfig(context_s=20.0).context_s == 20.0
    with pytest.raises(ValueError, match="context_s"):
        DistillConfig(context_s=0.3)  # 60 samples: not a multiple of the 100-sample hop
    with pytest.raises(ValueError, match="at most 20"):
        ScanConfig(distill={"context_s": 25.0})


def test_synthetic_teacher_recordings_are_written_once_and_named_by_their_keys(tmp_path):
    from types import SimpleNamespace

    from hms_core.recording import open_recording
    from hms_core.scanning.distill import synthetic_recordings

    cfg = SimpleNamespace(root=tmp_path)
    dcfg = DistillConfig(synthetic_recordings=2, synthetic_hours=0.05, synthetic_seizure_share=0.5)
    paths = synthetic_recordings(cfg, dcfg)
    assert [p.name for p in paths] == ["teacher-s300-0.05h-sz0.5_eeg.edf", "teacher-s301-0.05h-sz0.5_eeg.edf"]
    assert all(p.parent == tmp_path / "distill" / "synthetic" for p in paths)
    with open_recording(paths[0]) as rec:
        assert rec.duration_s == pytest.approx(180, abs=1)
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert synthetic_recordings(cfg, dcfg) == paths and [p.stat().st_mtime_ns for p in paths] == stamps
    assert synthetic_recordings(cfg, DistillConfig()) == []  # 0 by default


def test_target_temperature_sharpens_the_teachers_probabilities():
    from hms_core.scanning.distill import sharpen

    p = np.array([[0.4, 0.32, 0.1, 0.08, 0.05, 0.05], [0.0, 0.0, 0.0, 0.0, 0.5, 0.5]])
    assert sharpen(p, 1.0) is p
    q = sharpen(p, 0.5)
    np.testing.assert_allclose(q, p**2 / (p**2).sum(1, keepdims=True), atol=1e-9)  # p^(1/T), renormalised
    assert q[0, 0] > 0.55 and q[0].argmax() == 0 and np.allclose(q[1, 4:], 0.5)
    with pytest.raises(ValueError, match="target_temperature"):
        DistillConfig(target_temperature=1.5)
