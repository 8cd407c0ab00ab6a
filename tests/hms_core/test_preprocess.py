"""The streaming partition builder and the single-record serving path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_core.config import PreprocessingConfig
from hms_core.constants import EEG_FILE_COLUMNS, SFREQ, SPEC_COLUMNS, VOTE_COLUMNS
from hms_core.eeg_io import RecordError
from hms_core.preprocess import (
    QUALITY_COLUMNS,
    build_partition,
    load_partition,
    partition_checks,
    preprocess_record,
    process_windows,
)


def _cfg(**spec: object) -> PreprocessingConfig:
    cfg = PreprocessingConfig()
    cfg.workers = 1
    cfg.spectrogram.types = spec.pop("types", ["stft", "mel"])  # type: ignore[assignment]
    return cfg


def _eeg(rng: np.random.Generator, seconds: int = 60) -> np.ndarray:
    n = seconds * SFREQ
    f = np.fft.rfftfreq(n, 1 / SFREQ)
    f[0] = f[1]
    spec = (rng.normal(size=(20, f.size)) + 1j * rng.normal(size=(20, f.size))) / np.sqrt(f)
    x = np.fft.irfft(spec, n)
    x = 25 * x / x.std(-1, keepdims=True) + 10 * np.sin(2 * np.pi * 10 * np.arange(n) / SFREQ)
    return x.T.astype(np.float32)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("raw")
    (root / "eegs").mkdir()
    (root / "specs").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        x = _eeg(rng)
        x[3000:3100, 2] = np.nan  # 0.5-s gap: interpolated
        if i == 1:
            x[:, 5] = np.nan  # a whole missing channel (T3)
        pd.DataFrame(x, columns=list(EEG_FILE_COLUMNS)).to_parquet(root / "eegs" / f"{10 + i}.parquet")
        sp = pd.DataFrame(rng.gamma(2.0, size=(320, 400)).astype(np.float32), columns=list(SPEC_COLUMNS))
        sp.insert(0, "time", np.arange(1, 641, 2))
        sp.to_parquet(root / "specs" / f"{20 + i}.parquet")
        for off in (0.0, 6.0):
            votes = rng.integers(0, 4, 6)
            rows.append({"eeg_id": 10 + i, "eeg_sub_id": int(off), "eeg_label_offset_seconds": off,
                         "spectrogram_id": 20 + i, "spectrogram_label_offset_seconds": off * 2, "label_id": len(rows),
                         "patient_id": 100 + i // 2, "expert_consensus": "Other",
                         **dict(zip(VOTE_COLUMNS, votes.tolist())), "total_votes": int(votes.sum()), "fold": 1})  # fmt: skip
    return {"root": root, "rows": pd.DataFrame(rows)}


def test_build_partition_layout_and_checks(raw: dict, tmp_path: Path) -> None:
    root, rows = raw["root"], raw["rows"]
    cfg = _cfg(types=["stft", "multitaper", "wavelet", "mel"])
    seen: list[tuple[int, int]] = []
    m = build_partition(rows, root / "eegs", root / "specs", tmp_path / "p", cfg, batch_size=4,
                        progress=lambda d, n: seen.append((d, n)))  # fmt: skip
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    d = m.to_dict()
    assert d["n_rows"] == 6 and d["shapes"]["bipolar"] == [6, 16, 10000]
    assert d["shapes"]["spec_stft"][:3] == [6, 4, 127] and d["shapes"]["spec_kaggle"] == [6, 4, 100, 300]
    assert len(d["frequency_axes"]["mel"]) == d["shapes"]["spec_mel"][2]
    assert d["n_flagged_channels"] == 2 and d["folds"] == [1]  # T3 missing in the 2 windows of eeg 11
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["config"]["eeg"]["filter_low"] == 0.5
    assert not (tmp_path / "p" / ".partial").exists()

    part = load_partition(tmp_path / "p")
    assert len(part) == 6 and part.bipolar.dtype == np.float16 and isinstance(part.bipolar, np.memmap)
    assert part.referential.shape == (6, 19, 10000) and part.ekg.shape == (6, 10000)
    assert part.quality.shape == (6, 16) and part.quality.dtype == bool
    assert set(part.spectrograms) == {"stft", "multitaper", "wavelet", "mel", "kaggle"}
    idx = part.index
    assert list(idx["eeg_id"]) == list(rows["eeg_id"]) and set(QUALITY_COLUMNS) <= set(idx.columns)
    assert idx["was_interpolated"].all()
    t3 = idx["eeg_id"] == 11
    assert (idx.loc[t3, "flagged_channels"] == "T3").all() and (idx.loc[t3, "n_flagged_bipolar"] == 2).all()
    assert not part.quality[t3.to_numpy()][:, [1, 2]].any()  # F7-T3, T3-T5
    feats = part.features()
    assert feats.height == 6 and feats["row"].to_list() == list(range(6)) and "LL_periodicity" in feats.columns

    checks = partition_checks(tmp_path / "p", cfg, fold=1, patient_folds={100: 1, 101: 1})
    assert all(ok for ok, _ in checks.values()), checks
    ok, detail = partition_checks(tmp_path / "p", cfg, patient_folds={100: 1, 101: 0})["patients_in_fold"]
    assert not ok and detail["patients_not_in_their_fold"] == [101]
    assert not partition_checks(tmp_path / "p", cfg, fold=0)["patients_in_fold"][0]
    strict = cfg.model_copy(update={"max_flagged_fraction": 0.01})
    assert not partition_checks(tmp_path / "p", strict)["flagged_fraction"][0]


def test_serving_path_matches_batch_path(raw: dict, tmp_path: Path) -> None:
    root, rows = raw["root"], raw["rows"]
    cfg = _cfg()
    cfg.eeg.dtype = "float32"
    build_partition(rows, root / "eegs", None, tmp_path / "p", cfg, batch_size=3)
    part = load_partition(tmp_path / "p")
    assert "spec_kaggle" not in part.arrays
    eeg = pd.read_parquet(root / "eegs" / "11.parquet").to_numpy()
    out = preprocess_record(eeg, cfg, record_id="11", offset_s=6.0)
    i = 3  # eeg 11, offset 6
    for key in ("bipolar", "referential", "ekg", "quality", "spec_stft", "spec_mel"):
        np.testing.assert_allclose(out[key], part.arrays[key][i], atol=1e-4, err_msg=key)
    assert out["features"].height == 1


def test_resume_after_interruption(raw: dict, tmp_path: Path) -> None:
    root, rows = raw["root"], raw["rows"]
    cfg = _cfg(types=["stft"])

    class Stop(Exception):
        pass

    def interrupt(done: int, n: int) -> None:
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        build_partition(rows, root / "eegs", None, tmp_path / "p", cfg, batch_size=2, progress=interrupt)
    assert not (tmp_path / "p" / "bipolar.npy").exists() and not (tmp_path / "p" / "manifest.json").exists()
    assert json.loads((tmp_path / "p" / ".partial" / "progress.json").read_text())["done_batches"] == [0]
    m = build_partition(rows, root / "eegs", None, tmp_path / "p", cfg, batch_size=2)
    assert m.resumed_from == 2
    cfg2 = cfg.model_copy(deep=True)
    cfg2.workers = 2  # worker threads give the same arrays
    build_partition(rows, root / "eegs", None, tmp_path / "q", cfg2, batch_size=1)
    a, b = load_partition(tmp_path / "p"), load_partition(tmp_path / "q")
    for k in a.arrays:
        np.testing.assert_allclose(a.arrays[k].astype(np.float32), b.arrays[k].astype(np.float32), atol=2e-3, err_msg=k)
    pd.testing.assert_frame_equal(a.index, b.index)


def test_bad_inputs_name_the_record() -> None:
    cfg = _cfg(types=["stft"])
    rng = np.random.default_rng(5)
    eeg = _eeg(rng, 50)
    with pytest.raises(RecordError, match=r"'rec-a' is sampled at 256 Hz.*expects 200 Hz"):
        preprocess_record(eeg, cfg, sfreq=256, record_id="rec-a")
    with pytest.raises(RecordError, match=r"'rec-b' is too short: 1000 samples \(5.0 s\)"):
        preprocess_record(eeg[:1000], cfg, record_id="rec-b")
    bad = eeg.copy()
    bad[:, :19] = np.nan
    with pytest.raises(RecordError, match=r"\['rec-c'\] are all NaN"):
        preprocess_record(bad, cfg, record_id="rec-c")
    with pytest.raises(RecordError, match=r"'rec-d'.*\(n_times, 20\).*got \(10000, 19\)"):
        preprocess_record(eeg[:, :19], cfg, record_id="rec-d")
    with pytest.raises(RecordError, match=r"'rec-e' is too short.*\[0, 10000\)"):
        preprocess_record(eeg[:9000], cfg, record_id="rec-e", offset_s=0.0)


def test_build_partition_reports_missing_file_and_columns(raw: dict, tmp_path: Path) -> None:
    root, rows = raw["root"], raw["rows"]
    cfg = _cfg(types=["stft"])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['fold'\]"):
        build_partition(rows.drop(columns=["fold"]), root / "eegs", None, tmp_path / "p", cfg, batch_size=2)
    bad = rows.copy()
    bad.loc[3, "eeg_id"] = 999
    with pytest.raises(RecordError, match=r"999\.parquet' does not exist"):
        build_partition(bad, root / "eegs", None, tmp_path / "p", cfg, batch_size=2)
    late = rows.copy()
    late.loc[5, "eeg_label_offset_seconds"] = 30.0  # 30 + 50 s > 60 s file
    with pytest.raises(RecordError, match=r"12\.parquet \(row 5, offset 30.0 s\)' is too short"):
        build_partition(late, root / "eegs", None, tmp_path / "p", cfg, batch_size=2)


def test_quality_flags_and_scaling_in_process_windows() -> None:
    rng = np.random.default_rng(6)
    x = np.stack([_eeg(rng, 50) for _ in range(2)])
    x[0, :, 0] = 3.0  # Fp1 flat
    x[1, 2000:2600, 4] = np.nan  # F7: 3-s gap > max_gap_s and 6 % of the window (kept: below max_nan_fraction)
    x[1, :, 8] += 2000  # Fz: DC offset is removed by the band-pass, not flagged
    out = process_windows(x, _cfg(types=["stft"]), ["a", "b"])
    assert out.window_quality["flagged_channels"].tolist() == ["Fp1", ""]
    assert out.quality[0].sum() == 14 and out.quality[1].all()  # Fp1-F7, Fp1-F3 unusable
    assert out.window_quality["nan_fraction"][1] == pytest.approx(600 / 10000 / 19)
    med = np.median(out.bipolar[1], -1)
    q75, q25 = np.percentile(out.bipolar[1], [75, 25], -1)
    np.testing.assert_allclose(med, 0, atol=0.05)  # quantiles are estimated on every 4th sample
    np.testing.assert_allclose(q75 - q25, 1, atol=0.05)
    assert np.isfinite(out.spectrograms["stft"]).all() and out.features.height == 2


def test_all_nan_window_can_be_kept_flagged() -> None:
    cfg = _cfg(types=["stft"])
    cfg.eeg.all_nan_windows = "flag"
    rng = np.random.default_rng(6)
    bad = _eeg(rng, 50)
    bad[:, :19] = np.nan
    out = preprocess_record(bad, cfg, record_id="rec-f")
    assert np.isfinite(out["bipolar"]).all() and np.all(out["bipolar"] == 0)
    assert not out["quality"].any()
    assert out["window_quality"]["n_missing_channels"] == 19
