"""Kaggle download logic without the network: credential detection, zip verification, extraction with a
completion marker, resume and retry (the kaggle client call is replaced by a local zip builder)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import hms_core.kaggle as kg
from hms_core.kaggle import (
    COMPLETE_MARKER,
    CorruptDownloadError,
    KaggleCredentialsError,
    download_competition,
    kaggle_credentials_available,
    raw_dir_complete,
    verify_zip,
)

COMP = "hms-harmful-brain-activity-classification"
MEMBERS = {
    "train.csv": b"eeg_id,eeg_sub_id\n1,0\n" * 50,
    "test.csv": b"eeg_id,spectrogram_id,patient_id\n1,2,3\n",
    "sample_submission.csv": b"eeg_id,seizure_vote\n1,1.0\n",
    "train_eegs/1.parquet": b"E" * 3000,
    "train_spectrograms/2.parquet": b"S" * 2000,
    "test_eegs/1.parquet": b"T" * 1000,
    "test_spectrograms/2.parquet": b"U" * 500,
}


def build_zip(path: Path, members: dict[str, bytes] = MEMBERS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    cfg = tmp_path / "kaggle_cfg"
    cfg.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    return cfg


class FakeDownloader:
    """Stands in for the kaggle client: writes the competition zip (optionally corrupt first)."""

    def __init__(self, corrupt_first: int = 0) -> None:
        self.calls = 0
        self.corrupt_first = corrupt_first

    def __call__(self, competition: str, download_dir: Path, quiet: bool = False) -> Path:
        self.calls += 1
        out = build_zip(download_dir / f"{competition}.zip")
        if self.calls <= self.corrupt_first:
            out.write_bytes(out.read_bytes()[:-200])  # truncated: central directory gone
        return out


def test_credentials_from_env_and_files(
    monkeypatch: pytest.MonkeyPatch, no_credentials: Path, tmp_path: Path
) -> None:
    assert not kaggle_credentials_available()
    assert kaggle_credentials_available({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"})
    assert not kaggle_credentials_available({"KAGGLE_USERNAME": "u"})
    (no_credentials / "kaggle.json").write_text("{not json")
    assert not kaggle_credentials_available()
    (no_credentials / "kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    assert kaggle_credentials_available()
    # ~/.kaggle/kaggle.json when KAGGLE_CONFIG_DIR is not set
    monkeypatch.delenv("KAGGLE_CONFIG_DIR")
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    assert not kaggle_credentials_available()
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle/kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    assert kaggle_credentials_available()


def test_missing_credentials_message(
    no_credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*a, **k):
        raise AssertionError("downloader called without credentials")

    monkeypatch.setattr(kg, "_kaggle_download", must_not_run)
    dest = tmp_path / "data" / "raw"
    with pytest.raises(KaggleCredentialsError) as ei:
        download_competition(COMP, dest)
    msg = str(ei.value)
    for needle in ("Settings -> API", "kaggle.json", "chmod 600", "KAGGLE_USERNAME", "KAGGLE_KEY",
                   f"competitions/{COMP}/rules", str(dest)):  # fmt: skip
        assert needle in msg, needle


def test_verify_zip_detects_damage(tmp_path: Path) -> None:
    good = build_zip(tmp_path / "good.zip")
    assert set(verify_zip(good)) == set(MEMBERS)
    trunc = tmp_path / "trunc.zip"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptDownloadError, match="not a complete zip"):
        verify_zip(trunc)
    crc = tmp_path / "crc.zip"
    data = bytearray(good.read_bytes())
    i = data.index(b"E" * 3000)
    data[i + 10] = ord("X")
    crc.write_bytes(bytes(data))
    with pytest.raises(CorruptDownloadError, match="train_eegs/1.parquet' fails its CRC"):
        verify_zip(crc)
    partial = build_zip(
        tmp_path / "partial.zip", {k: v for k, v in MEMBERS.items() if not k.startswith("test_eegs")}
    )
    with pytest.raises(CorruptDownloadError, match=r"\['test_eegs/'\]"):
        verify_zip(partial)


def test_download_extract_marker_and_skip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    fake = FakeDownloader()
    monkeypatch.setattr(kg, "_kaggle_download", fake)
    dest = tmp_path / "raw"
    stale = tmp_path / ".raw.extracting"  # left by an interrupted extraction
    (stale / "junk").mkdir(parents=True)
    events: list[tuple[str, int, int]] = []
    assert download_competition(COMP, dest, progress=lambda *e: events.append(e)) == dest
    assert fake.calls == 1
    for name, data in MEMBERS.items():
        assert (dest / name).read_bytes() == data
    marker = json.loads((dest / COMPLETE_MARKER).read_text())
    assert marker["n_files"] == len(MEMBERS) and marker["total_bytes"] == sum(map(len, MEMBERS.values()))
    assert marker["files"]["train_eegs/1.parquet"] == 3000
    assert raw_dir_complete(dest)
    assert not (dest / ".download").exists() and not stale.exists()
    assert [e[0] for e in events][-1] == "done" and ("extract", len(MEMBERS), len(MEMBERS)) in events
    assert kg.completion_info(dest)["n_files"] == len(MEMBERS)
    # complete: no second download
    download_competition(COMP, dest)
    assert fake.calls == 1
    # a missing or resized file makes the directory incomplete again
    (dest / "test_eegs/1.parquet").write_bytes(b"short")
    assert not raw_dir_complete(dest) and kg.completion_info(dest) is None
    download_competition(COMP, dest)
    assert fake.calls == 2 and raw_dir_complete(dest)
    (dest / "train.csv").unlink()
    assert not raw_dir_complete(dest)


def test_incomplete_dir_without_marker(tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    for name, data in MEMBERS.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    assert not raw_dir_complete(dest)  # files alone (e.g. an interrupted extraction) are not trusted
    (dest / COMPLETE_MARKER).write_text("{truncated")
    assert not raw_dir_complete(dest)


def test_resume_from_downloaded_zip_without_credentials(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeDownloader()
    monkeypatch.setattr(kg, "_kaggle_download", fake)
    dest = tmp_path / "raw"
    build_zip(dest / ".download" / f"{COMP}.zip")  # a previous run finished the download, then stopped
    download_competition(COMP, dest, keep_zip=True)
    assert fake.calls == 0 and raw_dir_complete(dest)
    assert (dest / ".download" / f"{COMP}.zip").exists()
    assert ".download" not in json.dumps(json.loads((dest / COMPLETE_MARKER).read_text())["files"])


def test_partial_sidecar_resumes_through_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    fake = FakeDownloader()
    monkeypatch.setattr(kg, "_kaggle_download", fake)
    dest = tmp_path / "raw"
    zp = build_zip(dest / ".download" / f"{COMP}.zip")
    zp.write_bytes(zp.read_bytes()[:100])
    Path(str(zp) + ".kaggle-partial").write_text("{}")  # the kaggle client's in-progress marker
    download_competition(COMP, dest)
    assert fake.calls == 1 and raw_dir_complete(dest)


def test_corrupt_download_retried_then_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    fake = FakeDownloader(corrupt_first=1)
    monkeypatch.setattr(kg, "_kaggle_download", fake)
    download_competition(COMP, tmp_path / "a", retries=1)
    assert fake.calls == 2 and raw_dir_complete(tmp_path / "a")

    fake = FakeDownloader(corrupt_first=5)
    monkeypatch.setattr(kg, "_kaggle_download", fake)
    with pytest.raises(CorruptDownloadError):
        download_competition(COMP, tmp_path / "b", retries=0)
    assert fake.calls == 1
    assert not (tmp_path / "b" / ".download" / f"{COMP}.zip").exists()  # the bad zip is not reused
    assert not raw_dir_complete(tmp_path / "b")


# Resolving the raw folder: a stale generated set is regenerated, nothing else is ever deleted --------------------
def _synthetic_cfg(root: Path, n_patients: int = 2):
    from hms_core.config import PlatformConfig

    return PlatformConfig(
        workspace={"root": str(root)},
        dataset={"source": "synthetic", "synthetic": {"n_patients": n_patients, "eegs_per_patient": [1, 2],
                                                      "n_test": 1, "workers": 1}},
    )  # fmt: skip


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_stale_generated_set_is_regenerated(tmp_path: Path) -> None:
    from hms_core.raw import SYNTHETIC_MANIFEST, ensure_raw_dataset

    cfg = _synthetic_cfg(tmp_path)
    first = ensure_raw_dataset(cfg)
    assert first.source == "synthetic" and first.generated["sessions_written"] > 0
    assert ensure_raw_dataset(cfg).generated["sessions_written"] == 0  # same config and generator: kept
    manifest = cfg.raw_dir / SYNTHETIC_MANIFEST
    made = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(made | {"generator_version": made["generator_version"] - 1}))
    again = ensure_raw_dataset(cfg)  # an older generator wrote it: removed and made anew
    assert again.generated["sessions_written"] == first.generated["sessions_written"]
    assert json.loads(manifest.read_text())["generator_version"] == made["generator_version"]
    bigger = ensure_raw_dataset(_synthetic_cfg(tmp_path, n_patients=3))  # another config: made anew
    assert bigger.generated["n_patients"] == 3 and bigger.generated["sessions_skipped"] == 0


@pytest.mark.parametrize("extra", ["notes.txt", ".download", ".hms_complete.json", "train_eegs/readme.md", "none"])
def test_refuses_to_delete_anything_but_a_generated_set(tmp_path: Path, extra: str) -> None:
    from hms_core.raw import SYNTHETIC_MANIFEST, RefusedToDeleteError, _remove_synthetic, ensure_raw_dataset

    cfg = _synthetic_cfg(tmp_path)
    ensure_raw_dataset(cfg)
    raw = cfg.raw_dir
    manifest = raw / SYNTHETIC_MANIFEST
    if extra == "none":
        manifest.unlink()  # no manifest: a user's folder, whatever else it holds
    elif extra == ".download":
        (raw / extra).mkdir()
    else:
        (raw / extra).write_text("mine")
    before = _tree(raw)
    with pytest.raises(RefusedToDeleteError, match=rf"Refusing to delete '{raw}'.*Nothing was deleted"):
        _remove_synthetic(raw)
    if extra != "none":  # a stale generated folder with foreign files: ensure_raw_dataset refuses too
        with pytest.raises(RefusedToDeleteError, match=extra.split("/")[-1].replace(".", r"\.")):
            ensure_raw_dataset(_synthetic_cfg(tmp_path, n_patients=3))
    assert _tree(raw) == before


@pytest.mark.parametrize("source", ["auto", "synthetic", "local"])
def test_a_generation_killed_after_its_tables_is_finished_not_taken_as_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """A kill after train.csv but before the final manifest (simulated: the last write raises) leaves a folder
    that holds train.csv and train_eegs/ but whose manifest says complete: false. It is a generated folder at that
    instant: 'auto' and 'synthetic' finish it (every session kept) to the files of an uninterrupted run; 'local'
    refuses it naming the manifest, instead of taking half a data set as the user's."""
    import hms_core.synthetic.generator as gen
    from hms_core.raw import SYNTHETIC_MANIFEST, RawDataUnavailableError, ensure_raw_dataset, fingerprint

    whole = ensure_raw_dataset(_synthetic_cfg(tmp_path / "whole"))
    cfg = _synthetic_cfg(tmp_path / "killed")
    real_write_json = gen.write_json

    class Killed(Exception):
        pass

    def write_json(path, obj):
        if obj.get("complete") is True:
            raise Killed
        return real_write_json(path, obj)

    monkeypatch.setattr(gen, "write_json", write_json)
    with pytest.raises(Killed):
        ensure_raw_dataset(cfg)
    monkeypatch.setattr(gen, "write_json", real_write_json)
    raw = cfg.raw_dir
    assert (raw / "train.csv").is_file() and (raw / "train_eegs").is_dir()
    assert json.loads((raw / SYNTHETIC_MANIFEST).read_text())["complete"] is False
    if source == "local":
        with pytest.raises(RawDataUnavailableError, match=r"interrupted synthetic generation .*complete: false"):
            ensure_raw_dataset(
                cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"source": "local"})})
            )
        return
    cfg.dataset.source = source
    done = ensure_raw_dataset(cfg)
    assert done.source == "synthetic" and done.generated["sessions_written"] == 0  # finished, nothing redone
    assert json.loads((raw / SYNTHETIC_MANIFEST).read_text())["complete"] is True
    assert done.fingerprint == whole.fingerprint == fingerprint(tmp_path / "whole" / "data" / "raw")
