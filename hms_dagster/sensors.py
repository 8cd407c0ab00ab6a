"""The raw-data sensor: a new ``train.csv``/``test.csv`` version or new / changed / removed recordings request
exactly the assets and fold partitions that read them; declarative automation (:mod:`hms_dagster.automation`)
carries the change on from there (models, ensemble, export).

What a change touches (folds are patient-grouped, ``hms_core.folds``: a recording belongs to its patient's fold):

- ``train.csv`` or ``test.csv`` changed (or nothing was ever materialized): the data stage (``raw_dataset``,
  ``labels``, ``folds``); the fold partitions then follow ``folds`` through their automation condition, because
  a new fold assignment can move any patient.
- only recordings changed: ``raw_dataset`` (it validates every file) and then, once it materialized, the
  preprocessing partition of each changed train recording's patient's fold, ``test_windows`` for a test
  recording (spectrogram files count only with ``use_kaggle_spectrograms``); a file no CSV row names touches
  ``raw_dataset`` alone.
- the foundation encoder, which reads every recording the CSVs name, when one of those or the list changed.

The cursor holds what the folder looked like (CSV hashes, the CSVs' recording lists, and every file's size and
mtime), zlib-compressed, plus the requests that wait for ``raw_dataset``. Run keys carry a hash of the folder
state, so one state is never requested twice, whatever happens to the cursor.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dagster as dg

from hms_core.config import PlatformConfig
from hms_dagster.stages import (
    DATA,
    DATA_JOB,
    FOUNDATION_JOB,
    PREPROCESSING_JOB,
    RAW_DATASET,
    TEST_PREPROCESSING_JOB,
)

RAW_DATA_SENSOR = "raw_data_sensor"
TRIGGER_TAG = "hms/trigger"
CSV_FILES = ("train.csv", "test.csv")
EEG_DIRS = ("train_eegs", "test_eegs")
SPECTROGRAM_DIRS = ("train_spectrograms", "test_spectrograms")
_CURSOR_FORMAT = 1


@dataclass
class RawSnapshot:
    """The raw folder as the sensor last saw it."""

    csv: dict[str, str] = field(default_factory=dict)  # CSV name -> content hash
    recordings: dict[str, str] = field(default_factory=dict)  # CSV name -> hash of its eeg_id list
    files: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # sub-folder -> {file: [size, mtime_ns]}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Pending:
    """Requests that wait until ``raw_dataset`` materialized after ``after_storage_id`` (it validated the files)."""

    digest: str
    after_storage_id: int
    folds: list[str] = field(default_factory=list)
    test: bool = False
    foundation: bool = False


@dataclass
class RawChange:
    """What changed between two snapshots and which assets / partitions it touches."""

    csv: list[str] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # sub-folder -> changed file names
    data_stage: bool = False
    folds: list[str] = field(default_factory=list)
    test: bool = False
    foundation: bool = False

    @property
    def any(self) -> bool:
        return bool(self.csv or self.files)


def take_snapshot(raw_dir: Path) -> RawSnapshot:
    import polars as pl

    snap = RawSnapshot()
    for name in CSV_FILES:
        f = raw_dir / name
        if f.is_file():
            data = f.read_bytes()
            snap.csv[name] = hashlib.sha256(data).hexdigest()[:16]
            ids = pl.read_csv(f, columns=["eeg_id"])["eeg_id"].unique().sort().to_list()
            snap.recordings[name] = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    for sub in (*EEG_DIRS, *SPECTROGRAM_DIRS):
        d = raw_dir / sub
        if d.is_dir():
            snap.files[sub] = {
                e.name: [e.stat().st_size, e.stat().st_mtime_ns]
                for e in os.scandir(d)
                if e.name.endswith(".parquet")
            }
    return snap


def encode_cursor(snap: RawSnapshot, pending: Pending | None) -> str:
    doc = {"format": _CURSOR_FORMAT, "snapshot": asdict(snap), "pending": asdict(pending) if pending else None}
    return base64.b64encode(zlib.compress(json.dumps(doc, sort_keys=True).encode(), 6)).decode()


def decode_cursor(cursor: str | None) -> tuple[RawSnapshot | None, Pending | None]:
    if not cursor:
        return None, None
    try:
        doc = json.loads(zlib.decompress(base64.b64decode(cursor)))
    except (ValueError, zlib.error):
        return None, None  # a cursor of the former sensor: start again from the instance's state
    if not isinstance(doc, dict) or doc.get("format") != _CURSOR_FORMAT:
        return None, None
    pending = Pending(**doc["pending"]) if doc.get("pending") else None
    return RawSnapshot(**doc["snapshot"]), pending


def _changed_files(old: RawSnapshot, new: RawSnapshot) -> dict[str, list[str]]:
    out = {}
    for sub in sorted(set(old.files) | set(new.files)):
        a, b = old.files.get(sub, {}), new.files.get(sub, {})
        names = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
        if names:
            out[sub] = names
    return out


def _ids(names: list[str]) -> set[int]:
    return {int(Path(n).stem) for n in names if Path(n).stem.isdigit()}


def classify(cfg: PlatformConfig, old: RawSnapshot, new: RawSnapshot) -> RawChange:
    """The assets and fold partitions that the change from ``old`` to ``new`` touches (see the module doc)."""
    import polars as pl

    ch = RawChange(csv=[n for n in CSV_FILES if old.csv.get(n) != new.csv.get(n)], files=_changed_files(old, new))
    folds_file = cfg.processed_dir / "folds.parquet"
    ch.data_stage = bool(ch.csv) or not folds_file.is_file()
    referenced_recording = False
    raw = cfg.raw_dir
    train = pl.read_csv(raw / "train.csv", columns=["eeg_id", "spectrogram_id", "patient_id"])
    test = (pl.read_csv(raw / "test.csv", columns=["eeg_id", "spectrogram_id"])
            if (raw / "test.csv").is_file() else pl.DataFrame({"eeg_id": [], "spectrogram_id": []}))  # fmt: skip
    kaggle = cfg.preprocessing.spectrogram.use_kaggle_spectrograms
    patients: set[int] = set()
    for sub, names in ch.files.items():
        ids = _ids(names)
        is_eeg = sub in EEG_DIRS
        if not is_eeg and not kaggle:
            continue  # the preprocessing reads the Kaggle spectrogram files only with use_kaggle_spectrograms
        col = "eeg_id" if is_eeg else "spectrogram_id"
        if sub.startswith("train"):
            hit = train.filter(pl.col(col).is_in(list(ids)))
            patients |= set(hit["patient_id"].to_list())
            referenced_recording |= is_eeg and hit.height > 0
        else:
            hit = test.filter(pl.col(col).is_in(list(ids)))
            ch.test |= hit.height > 0
            referenced_recording |= is_eeg and hit.height > 0
    if patients and not ch.data_stage:
        folds = pl.read_parquet(folds_file, columns=["patient_id", "fold"]).unique()
        fold_of = dict(zip(folds["patient_id"].to_list(), folds["fold"].to_list(), strict=True))
        # a patient without a fold is new, and so is its train.csv row: then ch.data_stage is already set
        ch.folds = [cfg.fold_names[k] for k in sorted({fold_of[p] for p in patients if p in fold_of})]
    if ch.data_stage:
        ch.test = False  # test_windows follows labels through its automation condition
    ch.foundation = cfg.foundation.enabled and (referenced_recording or old.recordings != new.recordings)
    return ch


def _latest_storage_id(instance: dg.DagsterInstance, key: str) -> int:
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
    return records[0].storage_id if records else 0


def _pending_requests(cfg: PlatformConfig, p: Pending) -> list[dg.RunRequest]:
    tags = {TRIGGER_TAG: "raw_data_changed", "hms/raw_state": p.digest}
    reqs = [dg.RunRequest(job_name=PREPROCESSING_JOB, partition_key=f, run_key=f"raw-{p.digest}-{f}", tags=tags)
            for f in p.folds]  # fmt: skip
    if p.test:
        reqs.append(dg.RunRequest(job_name=TEST_PREPROCESSING_JOB, run_key=f"raw-{p.digest}-test", tags=tags))
    if p.foundation:
        reqs.append(dg.RunRequest(job_name=FOUNDATION_JOB, run_key=f"raw-{p.digest}-foundation", tags=tags))
    return reqs


def evaluate_raw_data(cfg: PlatformConfig, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    """One tick of the raw-data sensor (the sensor's body, callable from tests)."""
    from hms_core.raw import fingerprint, has_raw_data

    raw = cfg.raw_dir
    old, pending = decode_cursor(cursor)
    if not has_raw_data(raw):
        return dg.SensorResult(skip_reason=f"no raw data in {raw} (train.csv and train_eegs/)", cursor=cursor)
    new = take_snapshot(raw)
    tags = {TRIGGER_TAG: "raw_data_changed", "hms/raw_state": new.digest}
    requests: list[dg.RunRequest] = []
    raw_sid = _latest_storage_id(instance, RAW_DATASET)
    if old is None:  # first tick: compare with what the instance last materialized
        ev = instance.get_latest_materialization_event(dg.AssetKey(RAW_DATASET))
        version = (
            ev.asset_materialization.tags.get("dagster/data_version") if ev and ev.asset_materialization else None
        )
        if version == fingerprint(raw):
            return dg.SensorResult(skip_reason=f"baseline recorded: raw data as materialized ({version})",
                                   cursor=encode_cursor(new, pending))  # fmt: skip
        change = RawChange(csv=list(CSV_FILES), data_stage=True, foundation=cfg.foundation.enabled)
    else:
        change = classify(cfg, old, new) if new.digest != old.digest else RawChange()
    if change.any:
        if change.data_stage:
            requests.append(dg.RunRequest(job_name=DATA_JOB, run_key=f"raw-{new.digest}-{DATA}", tags=tags))
        else:
            requests.append(dg.RunRequest(job_name=DATA_JOB, asset_selection=[dg.AssetKey(RAW_DATASET)],
                                          run_key=f"raw-{new.digest}-{RAW_DATASET}", tags=tags))  # fmt: skip
        if change.folds or change.test or change.foundation:
            keep = pending if pending is not None else Pending(new.digest, raw_sid)
            pending = Pending(
                new.digest, raw_sid, sorted(set(keep.folds) | set(change.folds)),
                keep.test or change.test, keep.foundation or change.foundation,
            )  # fmt: skip
    elif pending is not None and raw_sid > pending.after_storage_id:
        requests += _pending_requests(cfg, pending)
        pending = None
    if not requests:
        why = "raw data unchanged" + (" (waiting for raw_dataset to materialize)" if pending else "")
        return dg.SensorResult(skip_reason=why, cursor=encode_cursor(new, pending))
    return dg.SensorResult(run_requests=requests, cursor=encode_cursor(new, pending))


def build_sensors(cfg: PlatformConfig, jobs: dict) -> list:
    """The raw-data sensor (the automation condition sensor is :func:`hms_dagster.automation.automation_sensor`)."""
    from hms_dagster.automation import default_status

    wanted = (DATA_JOB, PREPROCESSING_JOB, TEST_PREPROCESSING_JOB, FOUNDATION_JOB)

    @dg.sensor(
        name=RAW_DATA_SENSOR,
        jobs=[jobs[name] for name in wanted if name in jobs],
        minimum_interval_seconds=cfg.operations.raw_data_interval_s,
        default_status=default_status(cfg),
        description="Watches the raw folder (train.csv, test.csv, EEG and spectrogram files): requests the data "
        "stage on a new CSV version, else raw_dataset and then exactly the fold partitions of the patients "
        "whose recordings changed (and test_windows, the foundation encoder).",
    )
    def raw_data_sensor(context: dg.SensorEvaluationContext):
        return evaluate_raw_data(cfg, context.instance, context.cursor)

    return [raw_data_sensor]
