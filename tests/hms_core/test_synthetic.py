"""Synthetic HMS data: Kaggle layout and dtypes, determinism, resume, physics, raters, learnability."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from scipy.signal import welch

from hms_core.config import SyntheticConfig
from hms_core.constants import (
    BIPOLAR_PAIRS,
    CLASSES,
    EEG_CHANNELS,
    EEG_FILE_COLUMNS,
    SFREQ,
    SPEC_COLUMNS,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    VOTE_COLUMNS,
)
from hms_core.synthetic import generate_dataset, generate_sample, plan_dataset, render_session
from hms_core.synthetic.artifacts import (
    AMPLIFIER_KINDS,
    AMPLIFIER_RANGES_UV,
    DISCONNECTION_KINDS,
    TRANSIENT_KINDS,
    add_amplifier_artifacts,
    add_artifacts,
)
from hms_core.synthetic.background import aperiodic_shape, background, noise_freqs, spectral_noise
from hms_core.synthetic.raters import draw_n_raters
from hms_core.synthetic.spatial import CH_INDEX

ROOT = Path(__file__).resolve().parents[2]
SMALL = SyntheticConfig(n_patients=6, eegs_per_patient=(2, 4), n_test=2, seed=7, workers=1)
LEARN = SyntheticConfig(n_patients=40, eegs_per_patient=(6, 12), n_test=1, seed=0, workers=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_small")
    calls: list[tuple[int, int]] = []
    summary = generate_dataset(out, SMALL, progress=lambda d, t: calls.append((d, t)))
    summary["_progress"] = calls
    return out, summary


@pytest.fixture(scope="module")
def learn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_learn")
    return out, generate_dataset(out, LEARN)


def _bipolar(x: np.ndarray) -> np.ndarray:
    return np.stack([x[CH_INDEX[a]] - x[CH_INDEX[b]] for a, b in BIPOLAR_PAIRS])


# Layout ------------------------------------------------------------------------------------------------------------
def test_kaggle_layout_and_dtypes(small: tuple[Path, dict]) -> None:
    out, summary = small
    train = pl.read_csv(out / "train.csv")
    assert train.columns == list(TRAIN_COLUMNS)
    for c in TRAIN_COLUMNS:
        want = pl.Float64 if "offset" in c else pl.String if c == "expert_consensus" else pl.Int64
        assert train[c].dtype == want, c
    assert len(train) == summary["n_rows"] and train["label_id"].n_unique() == len(train)
    assert train["eeg_id"].n_unique() == summary["n_eegs"]
    assert train["spectrogram_id"].n_unique() == summary["n_spectrograms"] < summary["n_eegs"]
    assert train["eeg_id"].min() >= 10**8 and train["patient_id"].is_between(10_000, 99_999).all()
    assert set(train["expert_consensus"]) <= set(CLASSES)
    assert summary["class_counts"] == {c: int((train["expert_consensus"] == c).sum()) for c in CLASSES}
    # sub-windows: offsets 0, 2, 4 ...; spectrogram window shares the EEG window's centre and starts >= 0
    for (eeg_id,), g in train.group_by(["eeg_id"]):
        assert g["eeg_label_offset_seconds"].to_list() == [2.0 * i for i in range(len(g))]
        assert g["eeg_sub_id"].to_list() == list(range(len(g)))
        assert g.select(VOTE_COLUMNS).n_unique() == 1
        n = pq.read_metadata(out / "train_eegs" / f"{eeg_id}.parquet").num_rows
        assert n == SFREQ * (50 + 2 * (len(g) - 1))
    assert (train["spectrogram_label_offset_seconds"] >= 0).all()
    diffs = (train["spectrogram_label_offset_seconds"] - train["eeg_label_offset_seconds"]).to_numpy()
    for (sid,), g in train.group_by(["spectrogram_id"]):
        n_spec = pq.read_metadata(out / "train_spectrograms" / f"{sid}.parquet").num_rows
        assert n_spec >= 300
        assert (g["spectrogram_label_offset_seconds"] / 2 + 300 <= n_spec).all()
        assert g["spectrogram_sub_id"].to_list() == list(range(len(g)))
    assert np.all(diffs == np.round(diffs))

    eeg = pl.read_parquet(out / "train_eegs" / f"{train['eeg_id'][0]}.parquet")
    assert eeg.columns == list(EEG_FILE_COLUMNS) and all(d == pl.Float32 for d in eeg.dtypes)
    spec = pl.read_parquet(out / "train_spectrograms" / f"{train['spectrogram_id'][0]}.parquet")
    assert spec.columns == ["time", *SPEC_COLUMNS] and spec["time"].to_list()[:3] == [1, 3, 5]
    assert {"LL_4.1", "LL_3.13", "RP_15.63", "LP_16.6"} <= set(spec.columns)  # the real names, not LL_4.10
    assert not {"LL_4.10", "LL_3.12", "RP_15.62", "LP_16.60"} & set(spec.columns)
    vals = spec.select(SPEC_COLUMNS).to_numpy()
    assert np.nanmin(vals) > 0 and all(d == pl.Float32 for d in spec.select(SPEC_COLUMNS).dtypes)
    logv = np.log(vals[np.isfinite(vals)])
    assert 1.0 < logv.std() < 5.0  # spans orders of magnitude, roughly log-normal

    test = pl.read_csv(out / "test.csv")
    assert test.columns == list(TEST_COLUMNS) and len(test) == SMALL.n_test
    assert not set(test["eeg_id"]) & set(train["eeg_id"])
    for eeg_id, sid in zip(test["eeg_id"], test["spectrogram_id"]):
        assert pq.read_metadata(out / "test_eegs" / f"{eeg_id}.parquet").num_rows == 10_000
        assert pq.read_metadata(out / "test_spectrograms" / f"{sid}.parquet").num_rows == 300
    sub = pl.read_csv(out / "sample_submission.csv")
    assert sub.columns == ["eeg_id", *VOTE_COLUMNS]
    np.testing.assert_allclose(sub.select(VOTE_COLUMNS).to_numpy().sum(1), 1.0)
    manifest = json.loads((out / "synthetic_manifest.json").read_text())
    assert manifest["config"]["seed"] == SMALL.seed and manifest["n_rows"] == len(train)
    prog = summary["_progress"]
    assert prog[-1][0] == prog[-1][1] == summary["n_spectrograms"] + SMALL.n_test
    assert [d for d, _ in prog] == list(range(1, len(prog) + 1))


def test_deterministic_and_independent_of_workers(small: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = small
    other = generate_dataset(tmp_path, SMALL.model_copy(update={"workers": 2}))
    assert other["sessions_written"] > 0
    assert (tmp_path / "train.csv").read_bytes() == (out / "train.csv").read_bytes()
    assert (tmp_path / "test.csv").read_bytes() == (out / "test.csv").read_bytes()
    name = min(p.name for p in (out / "train_eegs").iterdir())
    assert (tmp_path / "train_eegs" / name).read_bytes() == (out / "train_eegs" / name).read_bytes()
    spec = min(p.name for p in (out / "train_spectrograms").iterdir())
    assert (tmp_path / "train_spectrograms" / spec).read_bytes() == (
        out / "train_spectrograms" / spec
    ).read_bytes()
    changed = plan_dataset(SMALL.model_copy(update={"seed": SMALL.seed + 1}))
    assert [e.votes for s in changed for e in s.eegs] != [e.votes for s in plan_dataset(SMALL) for e in s.eegs]


def test_resume_recreates_missing_file_only(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_patients=3, eegs_per_patient=(2, 3), n_test=1, seed=3, workers=1)
    generate_dataset(tmp_path, cfg)
    files = sorted((tmp_path / "train_eegs").iterdir())
    victim, keep = files[0], files[-1]
    original = victim.read_bytes()
    keep_mtime = keep.stat().st_mtime_ns
    victim.unlink()
    summary = generate_dataset(tmp_path, cfg)
    assert victim.read_bytes() == original
    assert keep.stat().st_mtime_ns == keep_mtime
    assert summary["sessions_written"] == 1 and summary["sessions_skipped"] == summary["n_spectrograms"]
    assert not list(tmp_path.rglob(".*.tmp*"))  # no leftover temporary files


def test_nans_occur(learn: tuple[Path, dict]) -> None:
    files = sorted((learn[0] / "train_eegs").iterdir())
    with_nan = [p for p in files if np.isnan(pl.read_parquet(p).select(EEG_CHANNELS).to_numpy()).any()]
    assert 0 < len(with_nan) < 0.5 * len(files)
    s = generate_sample("Other", 2, style_overrides={"nan_channel_p": 1.0})
    assert np.isnan(s.eeg).all(axis=1).sum() >= 1  # a whole channel missing
    assert not np.isnan(s.ekg).any()


# Physics -----------------------------------------------------------------------------------------------------------
QUIET = {
    "line_uv": 0.0, "rates": dict.fromkeys((*TRANSIENT_KINDS, *DISCONNECTION_KINDS), 0.0), "nan_channel_p": 0.0,
    "amplifier_rates": dict.fromkeys(AMPLIFIER_KINDS, 0.0), "dc_p": 0.0,
}  # fmt: skip


@pytest.mark.parametrize("rate", [0.7, 1.3, 1.9])
def test_lpd_rate_shows_in_autocorrelation(rate: float) -> None:
    s = generate_sample(
        "LPD", 5, pattern_overrides={"rate_hz": rate, "jitter": 0.03, "amp_uv": 200.0}, style_overrides=QUIET
    )
    ch = CH_INDEX[s.params["pattern"]["focus"]]
    x = s.eeg[ch, 5 * SFREQ : 45 * SFREQ].astype(np.float64)
    x -= x.mean()
    ac = np.correlate(x, x, "full")[x.size - 1 :]
    lo, hi = int(SFREQ / rate * 0.6), int(SFREQ / rate * 1.5)
    lag = lo + int(np.argmax(ac[lo:hi]))
    assert abs(lag / SFREQ - 1 / rate) < 0.12 / rate
    assert ac[lag] / ac[0] > 0.3


def test_seizure_evolves_and_lrda_is_lateralized() -> None:
    s = generate_sample(
        "Seizure", 4, pattern_overrides={"freqs_hz": [6.0, 4.5, 3.0], "generalized": False}, style_overrides=QUIET
    )
    ch = CH_INDEX[s.params["pattern"]["core"][0]]
    n = s.eeg.shape[1]
    a, b = int(s.label.span_s[0] * SFREQ), int(s.label.span_s[1] * SFREQ)
    thirds = np.array_split(np.arange(a, b), 3)
    peaks = []
    for idx in (thirds[0], thirds[2]):
        f, p = welch(s.eeg[ch, idx], fs=SFREQ, nperseg=min(len(idx), 800))
        band = (f > 2) & (f < 8)
        peaks.append(f[band][np.argmax(p[band])])
    assert peaks[0] > peaks[1] + 1.5 and n == 10_000
    lr = generate_sample("LRDA", 8, pattern_overrides={"contra_ratio": 0.0}, style_overrides=QUIET)
    side = lr.params["pattern"]["side"]
    left = [CH_INDEX[c] for c in ("Fp1", "F3", "F7", "T3")]
    right = [CH_INDEX[c] for c in ("Fp2", "F4", "F8", "T4")]
    pow_l, pow_r = (welch(lr.eeg[idx], fs=SFREQ, nperseg=800)[1][:, 2:12].sum() for idx in (left, right))
    assert (pow_l > 2 * pow_r) if side < 0 else (pow_r > 2 * pow_l)


def test_line_noise_at_60_hz_and_ekg_qrs() -> None:
    s = generate_sample("Other", 1, style_overrides={"line_uv": 20.0, "ekg_present": True, "ekg_uv": 1200.0})
    f, p = welch(np.nan_to_num(s.eeg), fs=SFREQ, nperseg=1000)
    i60 = int(np.argmin(np.abs(f - 60)))
    near = np.r_[i60 - 15 : i60 - 5, i60 + 5 : i60 + 15]
    assert np.median(p[:, i60] / p[:, near].mean(1)) > 20
    i80 = int(np.argmin(np.abs(f - 80)))  # 120 Hz harmonic aliased to 80 Hz
    assert np.median(p[:, i80] / p[:, i80 + 5 : i80 + 15].mean(1)) > 2
    ekg = s.ekg
    assert 500 <= np.percentile(ekg, 99.9) - np.median(ekg) <= 2500
    # R peaks at the drawn heart rate
    peaks = np.flatnonzero((ekg[1:-1] > ekg[:-2]) & (ekg[1:-1] >= ekg[2:]) & (ekg[1:-1] > 600)) + 1
    bpm = 60 * SFREQ / np.median(np.diff(peaks))
    assert abs(bpm - s.params["style"]["heart_bpm"]) < 8


def test_background_slope_and_bipolar_smaller_than_referential() -> None:
    rng = np.random.default_rng(0)
    for beta in (1.2, 1.8, 2.4):
        n = 60 * SFREQ
        x = spectral_noise(rng, aperiodic_shape(noise_freqs(n), np.full(4, beta)), n)
        f, p = welch(x, fs=SFREQ, nperseg=1000)
        band = (f >= 2) & (f <= 40)
        slope = np.polyfit(np.log(f[band]), np.log(p[:, band].mean(0)), 1)[0]
        assert abs(-slope - beta) < 0.25, (beta, slope)
    params = {
        "beta": 1.8,
        "rms": 25.0,
        "neighbour_corr": 0.75,
        "alpha_amp": 15.0,
        "alpha_freq": 9.5,
        "beta_amp": 5.0,
        "beta_freq": 18.0,
    }
    x = background(rng, 60 * SFREQ, params)
    ref_rms = x.std(axis=1)
    assert np.all(np.abs(ref_rms / 25.0 - 1) < 0.35)
    assert _bipolar(x).std(axis=1).mean() < 0.85 * ref_rms.mean()
    # neighbouring electrodes correlate at about the drawn neighbour correlation
    r = np.corrcoef(x[CH_INDEX["C3"]], x[CH_INDEX["P3"]])[0, 1]
    assert 0.5 < r < 0.95
    # posterior alpha peak
    f, p = welch(x[CH_INDEX["O1"]], fs=SFREQ, nperseg=1000)
    assert p[np.argmin(np.abs(f - 9.5))] > 2 * p[np.argmin(np.abs(f - 6.0))]


# Artifacts that trip transforms: pops, single-sample spikes, DC offsets, saturation ------------------------------
def _only(rates: dict[str, float] | None = None, **amplifier: object) -> dict:
    """A style with only the given artifacts (everything else off)."""
    style = {"rates": dict.fromkeys(TRANSIENT_KINDS, 0.0) | (rates or {}), "dc_p": 0.0, "dc_drift_p": 0.0}
    style["amplifier_rates"] = dict.fromkeys(AMPLIFIER_KINDS, 0.0) | amplifier.pop("amplifier_rates", {})
    return style | amplifier


def test_electrode_pops_rise_in_under_10_ms_and_decay_in_50_to_500_ms() -> None:
    x = np.zeros((19, 600 * SFREQ), np.float32)
    events = add_artifacts(x, np.random.default_rng(0), _only({"pop": 4.0}))
    assert len(events) >= 20 and {e["kind"] for e in events} == {"pop"}
    checked = 0
    for i, e in enumerate(events):
        ch, s = CH_INDEX[e["channels"][0]], round(e["start_s"] * SFREQ)
        later = [o["start_s"] for o in events[i + 1 :] if o["channels"] == e["channels"]]
        earlier = [o for o in events[:i] if o["channels"] == e["channels"]]
        stop = round(min([*later, e["start_s"] + 6 * 0.5 + 0.1]) * SFREQ)
        if earlier or stop - s < 6 * e["tau_s"] * SFREQ or stop > x.shape[1]:
            continue  # overlapping another pop on the same electrode: not a clean shape to measure
        w = np.abs(x[ch, s:stop]).astype(np.float64)  # the onset sample is still 0
        peak = int(np.argmax(w))
        assert w[0] == 0 and 100 <= w[peak] <= 1000 and abs(w[peak] - e["amp_uv"]) < 1e-3 * e["amp_uv"]
        # 10-90 % rise time (linear interpolation between samples) < 10 ms; the peak within 2 samples of onset
        t10, t90 = (np.interp(q * w[peak], w[: peak + 1], np.arange(peak + 1)) for q in (0.1, 0.9))
        assert (t90 - t10) / SFREQ < 0.010 and peak == e["rise_samples"] <= 2
        decay = (np.argmax(w[peak:] < w[peak] / np.e)) / SFREQ  # time to fall to 1/e: the time constant
        assert 0.05 - 1 / SFREQ <= decay <= 0.5 + 1 / SFREQ and abs(decay - e["tau_s"]) <= 1 / SFREQ
        checked += 1
    assert checked >= 10


def test_single_sample_spikes() -> None:
    x = np.zeros((19, 600 * SFREQ), np.float32)
    events = add_amplifier_artifacts(x, np.random.default_rng(1), _only(amplifier_rates={"spike": 3.0}))
    assert len(events) >= 15 and {e["kind"] for e in events} == {"spike"}
    nz = np.argwhere(x != 0)
    assert len(nz) == len(events)  # one sample each
    for e in events:
        ch, s = CH_INDEX[e["channels"][0]], round(e["start_s"] * SFREQ)
        assert 100 <= abs(x[ch, s]) <= 1000 and x[ch, s - 1] == 0 == x[ch, s + 1]


def test_dc_offsets_constant_or_slowly_drifting() -> None:
    x = np.zeros((19, 300 * SFREQ), np.float32)
    events = add_amplifier_artifacts(x, np.random.default_rng(2), _only(dc_p=1.0, dc_drift_p=0.5))
    assert len(events) == 19 and {e["kind"] for e in events} == {"dc_offset"}
    assert np.all((np.abs(x) >= 10 - 1e-3) & (np.abs(x) <= 300 + 1e-3))  # 10-300 uV on every sample
    assert np.all(np.sign(x) == np.sign(x[:, :1]))  # an offset keeps its sign
    slope = np.abs(np.diff(x.astype(np.float64), axis=1)).max(axis=1) * SFREQ  # uV/s
    constant = np.ptp(x, axis=1) == 0
    assert 0 < constant.sum() < 19 and slope.max() < 1.0  # some constant, the others drift (< 1 uV/s here)
    quiet = np.zeros((19, 300 * SFREQ), np.float32)
    assert add_amplifier_artifacts(quiet, np.random.default_rng(2), _only()) == [] and not quiet.any()


def test_saturated_stretches_pinned_at_the_amplifier_range() -> None:
    rng = np.random.default_rng(3)
    x = (30 * rng.standard_normal((19, 600 * SFREQ))).astype(np.float32)
    events = add_amplifier_artifacts(x, rng, _only(amplifier_rates={"saturation": 3.0}, amp_range_uv=5000.0))
    assert len(events) >= 10 and {e["kind"] for e in events} == {"saturation"}
    pinned = np.zeros(x.shape, bool)
    for e in events:
        s, d = round(e["start_s"] * SFREQ), round(e["dur_s"] * SFREQ)
        assert 0.1 <= e["dur_s"] <= 10.0 and 1 <= len(e["channels"]) <= 3 and abs(e["level_uv"]) == 5000.0
        for c in e["channels"]:
            np.testing.assert_array_equal(x[CH_INDEX[c], s : s + d], np.float32(e["level_uv"]))
            pinned[CH_INDEX[c], s : s + d] = True
    assert np.abs(x).max() == np.float32(5000.0) and np.all(np.abs(x[~pinned]) < 5000.0)
    durations = [e["dur_s"] for e in events]
    assert min(durations) < 1.0 < max(durations)  # short and long stretches (log-uniform 0.1-10 s)


def test_artifact_rates_are_realistic() -> None:
    """Pops, spikes and saturation occur in some 50-s windows, not in every one; many channels carry DC offsets."""
    plans = plan_dataset(LEARN)
    styles = [s.style for s in plans for _ in s.eegs]
    minutes = 50 / 60

    def share(rate) -> float:
        return float(np.mean([1 - np.exp(-rate(st) * minutes) for st in styles]))

    pop, spike = share(lambda st: st["rates"]["pop"]), share(lambda st: st["amplifier_rates"]["spike"])
    saturation = share(lambda st: st["amplifier_rates"]["saturation"])
    assert 0.05 < pop < 0.4 and 0.02 < spike < 0.3 and 0.005 < saturation < 0.15, (pop, spike, saturation)
    dc = np.mean([st["dc_p"] for st in styles])
    assert 0.1 < dc < 0.5 and sum(st["dc_p"] == 0 for st in styles) > 0
    # and the rendered sessions carry them at about those rates
    events = [e for s in plans[:12] for e in render_session(s)[2]]
    kinds = Counter(e["kind"] for e in events)
    assert kinds["pop"] > 0 and kinds["spike"] > 0 and kinds["dc_offset"] > 0, kinds


def test_written_files_carry_dc_offsets_and_saturation(learn: tuple[Path, dict]) -> None:
    files = sorted((learn[0] / "train_eegs").iterdir())
    dc = saturated = 0
    for p in files:
        x = pl.read_parquet(p).select(EEG_CHANNELS).to_numpy()
        dc += int((np.abs(np.median(np.nan_to_num(x), axis=0)) >= 10).any())  # NaN: no offset
        at_rail = np.isin(np.abs(x), np.float32(AMPLIFIER_RANGES_UV))
        saturated += int((at_rail.sum(axis=0) >= 0.1 * SFREQ).any())
    print("RESULT files with a DC offset", dc, "saturated", saturated, "of", len(files))
    assert 0.2 * len(files) < dc < len(files) and 0 < saturated < 0.2 * len(files), (dc, saturated, len(files))


def test_generate_sample_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Invalid value for the 'cls' parameter.*'Seizure'.*but got 'Spike'"):
        generate_sample("Spike")
    with pytest.raises(ValueError, match=r"Invalid value for the 'n_sub' parameter.*\[1, 100\].*but got 0"):
        generate_sample("LPD", n_sub=0)


# Raters and patients -----------------------------------------------------------------------------------------------
def test_rater_populations_and_consensus(learn: tuple[Path, dict]) -> None:
    rng = np.random.default_rng(0)
    n = np.array([draw_n_raters(rng) for _ in range(4000)])
    assert n.min() >= 1 and n.max() <= 28 and not np.any((n > 7) & (n < 10))
    assert 0.45 < (n <= 7).mean() < 0.65
    train = pl.read_csv(learn[0] / "train.csv").group_by("eeg_id").first()
    votes = train.select(VOTE_COLUMNS).to_numpy()
    total = votes.sum(1)
    assert (total <= 7).any() and (total >= 10).any() and not np.any((total > 7) & (total < 10))
    assert train["expert_consensus"].to_list() == [CLASSES[i] for i in votes.argmax(1)]
    high = votes[total >= 10] / total[total >= 10, None]
    assert 0.3 < (high.max(1) < 0.75).mean() < 0.95  # many high-vote samples are contested
    assert (high.max(1) == 1).mean() > 0.02  # and some unanimous
    assert all(c > 0 for c in learn[1]["class_counts"].values())


def test_patient_grouping_matters(learn: tuple[Path, dict]) -> None:
    train = pl.read_csv(learn[0] / "train.csv").group_by("eeg_id").first()
    assert train["patient_id"].n_unique() == LEARN.n_patients
    # class mix is patient specific: the consensus agrees within a patient more often than across patients
    same = train.join(train, on="patient_id").filter(pl.col("eeg_id") != pl.col("eeg_id_right"))
    within = (same["expert_consensus"] == same["expert_consensus_right"]).mean()
    freq = train["expert_consensus"].value_counts()["count"].to_numpy() / len(train)
    assert within > (freq**2).sum() + 0.1
    plans = plan_dataset(LEARN)
    betas = {}
    for s in plans:
        betas.setdefault(s.patient_id, set()).add(round(s.style["beta"], 6))
    assert all(len(v) == 1 for v in betas.values())  # one style per patient


# Learnability ----------------------------------------------------------------------------------------------------------
def test_bandpower_model_beats_prior_but_is_not_perfect(learn: tuple[Path, dict]) -> None:
    spec = importlib.util.spec_from_file_location(
        "synthetic_baseline", ROOT / "benchmarks" / "synthetic_baseline.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows, feats = mod.load_eeg_table(learn[0])
    res = mod.cross_validate(rows, feats)
    print("RESULT", res)
    assert res["n_rows"] >= 60
    assert res["bandpower_kl"] < 0.85 * res["prior_kl"], res
    assert res["bandpower_kl"] > 0.3, res
