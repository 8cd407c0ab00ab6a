"""The partition module: streaming writer, layout (segment position), memory-mapped reader and checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hms_core.constants import EEG_FILE_COLUMNS, SFREQ, SPEC_COLUMNS, VOTE_COLUMNS
from hms_core.eeg_io import RecordError
from hms_core.partition import (
    CHECK_NAMES,
    LAYOUT_VERSION,
    Layout,
    PartitionError,
    build_partition,
    load_partition,
    partition_checks,
    write_partition,
)
from hms_core.preprocess import QUALITY_COLUMNS, preprocess_record
from tests.hms_core.test_preprocess import _cfg, _eeg


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
    layout = Layout.from_dict(d["layout"])
    assert len(layout.frequencies("mel")) == d["shapes"]["spec_mel"][2]
    assert layout.segment == slice(4000, 6000) and layout.frames_per_second("kaggle") == 0.5
    assert d["n_bad_windows"] == 0 and not any(d["non_finite_zeroed"].values())
    assert d["n_flagged_channels"] == 2 and d["folds"] == [1]  # T3 missing in the 2 windows of eeg 11
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["config"]["eeg"]["filter_low"] == 0.5
    assert not (tmp_path / "p" / ".partial").exists()

    part = load_partition(tmp_path / "p")
    bip = part.array("bipolar")
    assert len(part) == 6 and bip.dtype == np.float16 and isinstance(bip, np.memmap)
    assert part.array("referential").shape == (6, 19, 10000) and part.array("ekg").shape == (6, 10000)
    assert part.array("quality").shape == (6, 16) and part.array("quality").dtype == bool
    assert set(part.spectrograms) == {"stft", "multitaper", "wavelet", "mel", "kaggle"}
    idx = part.index
    assert list(idx["eeg_id"]) == list(rows["eeg_id"]) and set(QUALITY_COLUMNS) <= set(idx.columns)
    assert idx["was_interpolated"].all()
    t3 = idx["eeg_id"] == 11
    assert (idx.loc[t3, "flagged_channels"] == "T3").all() and (idx.loc[t3, "n_flagged_bipolar"] == 2).all()
    assert not part.array("quality")[t3.to_numpy()][:, [1, 2]].any()  # F7-T3, T3-T5
    assert not idx["bad_window"].any()
    feats = part.features()
    assert len(feats) == 6 and feats["row"].tolist() == list(range(6)) and "LL_periodicity" in feats.columns

    checks = partition_checks(tmp_path / "p", cfg, fold=1, patient_folds={100: 1, 101: 1})
    assert set(checks) == set(CHECK_NAMES) and all(ok for ok, _ in checks.values()), checks
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
    assert "spec_kaggle" not in part.arrays and not part.layout.with_kaggle
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
    cfg2.workers = 2  # worker processes give the same files, bit for bit
    build_partition(rows, root / "eegs", None, tmp_path / "q", cfg2, batch_size=2)
    a, b = load_partition(tmp_path / "p"), load_partition(tmp_path / "q")
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    pd.testing.assert_frame_equal(a.index, b.index)
    pd.testing.assert_frame_equal(a.features(), b.features())


def test_a_worker_process_error_names_the_file_and_a_killed_worker_resumes(raw: dict, tmp_path: Path) -> None:
    """With worker processes, a bad record's error reaches the caller unchanged (file, row, offset), and a worker
    killed mid-build is a clear PartitionError; the batches finished before it are kept and a rerun resumes."""
    root, rows = raw["root"], raw["rows"]
    cfg = _cfg(types=["stft"])
    cfg.workers = 2
    late = rows.copy()
    late.loc[5, "eeg_label_offset_seconds"] = 30.0
    with pytest.raises(RecordError, match=r"12\.parquet \(row 5, offset 30.0 s\)' is too short"):
        build_partition(late, root / "eegs", None, tmp_path / "p", cfg, batch_size=2)

    import multiprocessing as mp
    import signal

    killed: list[int] = []

    def kill_a_worker(done: int, n: int) -> None:
        if done >= 2 and not killed:  # the first batch is finished: kill a worker busy with a later one
            pid = next(c.pid for c in mp.active_children() if c.pid is not None and "Process" in type(c).__name__)
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(PartitionError, match=r"worker process ended abruptly .* a rerun resumes"):
        build_partition(rows, root / "eegs", None, tmp_path / "k", cfg, batch_size=1, progress=kill_a_worker)
    assert killed
    state = json.loads((tmp_path / "k" / ".partial" / "progress.json").read_text())
    assert 0 < len(state["done_batches"]) < len(rows)
    m = build_partition(rows, root / "eegs", None, tmp_path / "k", cfg, batch_size=1)
    assert m.resumed_from == len(state["done_batches"])
    ref = build_partition(rows, root / "eegs", None, tmp_path / "ref", cfg, batch_size=1)
    a, b = load_partition(tmp_path / "k"), load_partition(Path(ref.out_dir))
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)


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


def _burst_record(seconds: int = 60, offset_s: float = 5.0) -> np.ndarray:
    """Quiet noise with a 7 Hz, 100 uV burst on F7 only during the labelled 10 s of the window at ``offset_s``."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 5, (seconds * SFREQ, len(EEG_FILE_COLUMNS))).astype(np.float32)
    t0, t1 = int((offset_s + 20) * SFREQ), int((offset_s + 30) * SFREQ)
    t = np.arange(t1 - t0) / SFREQ
    x[t0:t1, EEG_FILE_COLUMNS.index("F7")] += 100 * np.sin(2 * np.pi * 7 * t)
    return x


@pytest.mark.parametrize("context_length", [10000, 6000, 2400])
def test_segment_position_follows_the_config(tmp_path: Path, context_length: int) -> None:
    """With any context_length the stored segment is the labelled 10 s (seconds o+20 .. o+30 of the window)."""
    (tmp_path / "eegs").mkdir()
    pd.DataFrame(_burst_record(), columns=list(EEG_FILE_COLUMNS)).to_parquet(tmp_path / "eegs" / "1.parquet")
    rows = pd.DataFrame({"eeg_id": [1], "eeg_label_offset_seconds": [5.0], "patient_id": [7], "fold": [0],
                         **{c: [1] for c in VOTE_COLUMNS}})  # fmt: skip
    cfg = _cfg(types=["stft"])
    cfg.eeg.context_length = context_length
    cfg.eeg.scaling = "none"
    build_partition(rows, tmp_path / "eegs", None, tmp_path / "p", cfg, batch_size=1)
    part = load_partition(tmp_path / "p")
    assert part.layout.segment == cfg.eeg.segment_slice
    assert part.layout.segment.start == (context_length - 2000) // 2
    fp1_f7 = part.layout.bipolar.index("Fp1-F7")
    seg = np.asarray(part.segment("bipolar")[0, fp1_f7], np.float32)
    full = np.asarray(part.array("bipolar")[0, fp1_f7], np.float32)
    outside = np.concatenate([full[: part.layout.segment.start], full[part.layout.segment.stop :]])
    assert seg.shape == (2000,)
    assert np.std(seg[100:-100]) > 50  # the burst fills the labelled segment
    if outside.size > 400:
        assert np.std(outside[200:-200]) < 20  # and nothing outside it
    # the serving path takes the same segment
    rec = preprocess_record(_burst_record(), cfg, record_id="1", offset_s=5.0)
    np.testing.assert_allclose(rec["bipolar"][:, part.layout.segment], part.segment("bipolar")[0], atol=1e-2)


def test_write_partition_round_trip_and_refusals(tmp_path: Path) -> None:
    cfg = _cfg(types=["stft"])
    layout = Layout.from_config(cfg, with_kaggle=False)
    n = 3
    specs = layout.array_specs(n)
    arrays = {k: np.zeros(s, d) for k, (s, d) in specs.items()}
    index = pd.DataFrame({"eeg_id": [1, 2, 3], "patient_id": [1, 1, 2], "fold": 0, "n_flagged_channels": 0,
                          "bad_window": [False, True, False], **{c: [1, 2, 3] for c in VOTE_COLUMNS}})  # fmt: skip
    write_partition(tmp_path / "p", index, arrays, layout)
    part = load_partition(tmp_path / "p")
    assert part.layout == layout and len(part) == 3 and part.manifest["n_bad_windows"] == 1
    np.testing.assert_allclose(part.targets.sum(1), 1.0)
    with pytest.raises(PartitionError, match=r"spec_mel.npy does not exist; this partition has arrays"):
        part.array("spec_mel")
    with pytest.raises(PartitionError, match=r"array 'spec_mel' is not part of the layout"):
        write_partition(tmp_path / "q", index, {"spec_mel": np.zeros((3, 4, 5, 6))}, layout)
    with pytest.raises(PartitionError, match=r"shape \(2, 16, 10000\), the layout expects \(3, 16, 10000\)"):
        write_partition(tmp_path / "q", index, {"bipolar": np.zeros((2, 16, 10000))}, layout)
    # a partition without its manifest (interrupted) or from an older layout is refused with the fix
    with pytest.raises(PartitionError, match=r"no manifest.json.*hms run --stage preprocessing"):
        load_partition(tmp_path / "missing")
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    m["layout_version"] = LAYOUT_VERSION - 1
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PartitionError, match=rf"layout_version {LAYOUT_VERSION - 1}.*rebuild"):
        load_partition(tmp_path / "p")


def test_bad_windows_check_fails_only_above_the_stated_fraction(tmp_path: Path) -> None:
    cfg = _cfg(types=["stft"])
    layout = Layout.from_config(cfg, with_kaggle=False)
    n = 200
    arrays = {k: np.zeros(s, d) for k, (s, d) in layout.array_specs(n).items()}
    bad = np.zeros(n, bool)
    bad[[17]] = True  # one window in 200: 0.5 %
    index = pd.DataFrame({"eeg_id": np.arange(n), "eeg_label_offset_seconds": 0.0, "patient_id": 1, "fold": 0,
                          "n_flagged_channels": 0, "bad_window": bad})  # fmt: skip
    write_partition(tmp_path / "p", index, arrays, layout)
    ok, detail = partition_checks(tmp_path / "p", cfg)["bad_windows"]
    assert ok and detail["n_bad_windows"] == 1 and detail["examples"][0]["eeg_id"] == 17
    strict = cfg.model_copy(update={"max_bad_window_fraction": 0.001})
    assert not partition_checks(tmp_path / "p", strict)["bad_windows"][0]
    # a non-finite stored value still fails `finite`
    arr = np.lib.format.open_memmap(tmp_path / "p" / "spec_stft.npy", mode="r+")
    arr[3, 0, 0, 0] = np.nan
    arr.flush()
    del arr
    ok, detail = partition_checks(tmp_path / "p", cfg)["finite"]
    assert not ok and detail["non_finite"]["spec_stft"] == 1


def test_float16_storage_is_numpy_astype_bit_for_bit(tmp_path: Path) -> None:
    """The writer's fast float32 -> float16 cast (torch) equals numpy's astype bit for bit, edge values included,
    and lands at the right rows of the .npy file."""
    from hms_core.partition import _as_storage, _write_rows

    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 6e-8, 3e-8, 2.98e-8, 65504, 65519.99, 65520, -1e6, np.inf, -np.inf], np.float32)
    x = np.concatenate([rng.standard_normal(4000) * 10 ** rng.uniform(-8, 5, 4000), special]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert np.array_equal(_as_storage(x, np.dtype(np.float16)).view(np.uint16), want.view(np.uint16))
    path = tmp_path / "a.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype="float16", shape=(5, 3, 7)).flush()
    rows = rng.standard_normal((2, 3, 7)).astype(np.float32)
    _write_rows(path, 2, rows)
    got = np.load(path)
    assert np.array_equal(got[2:4], rows.astype(np.float16)) and not got[[0, 1, 4]].any()


def test_channel_major_reader_is_the_transposed_reader(tmp_path: Path) -> None:
    """read_hms_eeg_channels (the builder's reader) is read_hms_eeg transposed, missing channels included."""
    from hms_core.eeg_io import read_hms_eeg, read_hms_eeg_channels

    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(300, 20)).astype(np.float32), columns=list(EEG_FILE_COLUMNS))
    df.drop(columns=["Cz", "EKG"]).iloc[:, ::-1].to_parquet(tmp_path / "1.parquet")
    ch = read_hms_eeg_channels(tmp_path / "1.parquet", missing_channels="flag")
    assert ch.shape == (20, 300) and ch.flags.c_contiguous and ch.dtype == np.float32
    np.testing.assert_array_equal(ch.T, read_hms_eeg(tmp_path / "1.parquet", missing_channels="flag"))
    assert np.isnan(ch[EEG_FILE_COLUMNS.index("Cz")]).all() and np.isnan(ch[-1]).all()


def test_rows_of_one_eeg_processed_together_land_in_row_order(raw: dict, tmp_path: Path) -> None:
    """Interleaved rows (each EEG's windows apart) are processed grouped by eeg_id, and every output row still
    matches its own row: the same values as the partition of the same rows in grouped order."""
    from hms_core.partition import _processing_order

    root, rows = raw["root"], raw["rows"]
    mixed = rows.iloc[[0, 2, 4, 1, 3, 5]].reset_index(drop=True)  # eeg 10, 11, 12, 10, 11, 12
    assert _processing_order(mixed).tolist() == [0, 3, 1, 4, 2, 5]
    cfg = _cfg(types=["stft", "wavelet"])
    cfg.eeg.dtype = "float32"
    build_partition(mixed, root / "eegs", root / "specs", tmp_path / "mixed", cfg, batch_size=4)
    build_partition(rows, root / "eegs", root / "specs", tmp_path / "grouped", cfg, batch_size=4)
    a, b = load_partition(tmp_path / "mixed"), load_partition(tmp_path / "grouped")
    perm = [0, 2, 4, 1, 3, 5]
    assert a.index["label_id"].tolist() == mixed["label_id"].tolist()
    assert a.index["flagged_channels"].tolist() == b.index["flagged_channels"].iloc[perm].tolist()
    for key in ("bipolar", "referential", "ekg", "quality", "spec_stft", "spec_wavelet", "spec_kaggle"):
        np.testing.assert_allclose(a.array(key), b.array(key)[perm], atol=1e-4, err_msg=key)
    fa, fb = a.features(), b.features()
    assert fa["eeg_id"].tolist() == mixed["eeg_id"].tolist()
    np.testing.assert_allclose(fa["LL_alpha_abs"], fb["LL_alpha_abs"].iloc[perm], rtol=1e-5)


_BUILDER = """
import sys
from pathlib import Path
import pandas as pd
from tests.hms_core.test_preprocess import _cfg
from hms_core.partition import build_partition

if __name__ == "__main__":
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = pd.read_parquet(root / "rows.parquet")
    cfg = _cfg(types=["stft"])
    cfg.workers = 2
    def report(done, n):
        print("progress", done, flush=True)
    build_partition(pd.concat([rows] * 40, ignore_index=True), root / "eegs", None, out, cfg, batch_size=1,
                    progress=report)
"""


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from /proc")
def test_killing_the_builder_leaves_no_worker_process_behind(raw: dict, tmp_path: Path) -> None:
    """kill -9 of a process building with worker processes (as of a Dagster step): its workers (children of the
    fork server, not of the builder) end within seconds instead of idling or writing on."""
    import signal
    import subprocess
    import sys
    import time

    root = raw["root"]
    raw["rows"].to_parquet(root / "rows.parquet")
    script = tmp_path / "build.py"
    script.write_text(_BUILDER)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(tmp_path / "p")], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith("progress") and int(line.split()[1]) >= 2:
                break
        workers = [w for c in _children(proc.pid) for w in _children(c)]  # builder -> fork server -> workers
        assert len(workers) == 2, workers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    left = [w for w in workers if Path(f"/proc/{w}").exists()]
    assert not left, f"worker processes {left} outlived the killed builder"
