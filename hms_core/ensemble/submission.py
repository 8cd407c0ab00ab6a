"""``submission.csv`` in the exact Kaggle format, checked before it is written, and its upload.

The file has the ids and the order of ``sample_submission.csv``, the columns ``eeg_id`` and the six ``*_vote``
probabilities, every row in [0, 1] and summing to 1 (the same rules as
:func:`hms_core.validation.check_submission_table`, which checks it again as the competition would read it).

:func:`submit_to_kaggle` uploads it with the Kaggle API when credentials exist (``KAGGLE_USERNAME`` +
``KAGGLE_KEY``, ``kaggle.json``, or a ``KAGGLE_API_TOKEN`` / ``access_token``) and otherwise raises
:class:`SubmissionCredentialsError` saying how to provide them. ``kaggle`` is imported only then (it
authenticates on import), and no message ever carries the key: errors from the client are scrubbed of every
credential value before they are re-raised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from hms_core.constants import VOTE_COLUMNS
from hms_core.io import write_text
from hms_core.kaggle import DEFAULT_COMPETITION, kaggle_credentials_available
from hms_core.validation import (
    SUBMISSION_COLUMNS,
    ValidationReport,
    check_submission_table,
)

__all__ = ["SubmissionCredentialsError", "SubmissionError", "build_submission", "submit_to_kaggle",
           "validate_submission", "write_submission"]  # fmt: skip

SAMPLE_SUBMISSION = "sample_submission.csv"
#: Decimals written per probability (rows are renormalised after rounding, within the sum tolerance).
DECIMALS = 8


class SubmissionError(ValueError):
    """A submission table does not match the competition's format; the message names the column and rows."""


class SubmissionCredentialsError(RuntimeError):
    """No Kaggle API credentials were found for an upload."""

    def __init__(self, competition: str, path: str | os.PathLike[str]):
        super().__init__(
            f"No Kaggle API credentials found, so '{path}' was not uploaded. To submit it to '{competition}': "
            "create a token at https://www.kaggle.com -> Settings -> API, save it as ~/.kaggle/kaggle.json "
            "(chmod 600; or in $KAGGLE_CONFIG_DIR), or export KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN); "
            f"accept the competition rules, then run `hms submit` again. The file itself is ready to upload by hand "
            f"at https://www.kaggle.com/competitions/{competition}/submit."
        )


def _credentials(env: Mapping[str, str]) -> bool:
    if kaggle_credentials_available(env) or env.get("KAGGLE_API_TOKEN"):
        return True
    cfg_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else Path.home() / ".kaggle"
    return (cfg_dir / "access_token").is_file()


def _secrets(env: Mapping[str, str]) -> list[str]:
    """Every credential value that must never appear in output."""
    vals = [env.get("KAGGLE_KEY"), env.get("KAGGLE_API_TOKEN")]
    cfg_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else Path.home() / ".kaggle"
    try:
        vals.append(json.loads((cfg_dir / "kaggle.json").read_text()).get("key"))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        vals.append((cfg_dir / "access_token").read_text().strip())
    except OSError:
        pass
    return [v for v in vals if isinstance(v, str) and len(v) >= 4]


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


def build_submission(eeg_ids: Any, probs: np.ndarray, sample_submission: str | os.PathLike[str]) -> pd.DataFrame:
    """Rows in the order of ``sample_submission.csv``; every id there must have a prediction."""
    sample = pd.read_csv(sample_submission)
    if "eeg_id" not in sample.columns:
        raise SubmissionError(f"{sample_submission}: column 'eeg_id' is missing (columns: {list(sample.columns)})")
    probs = np.asarray(probs, dtype=np.float64)
    ids = np.asarray(eeg_ids).astype(np.int64)
    if probs.shape != (len(ids), len(VOTE_COLUMNS)):
        raise SubmissionError(f"predictions have shape {probs.shape}, expected ({len(ids)}, {len(VOTE_COLUMNS)})")
    by_id = pd.DataFrame(probs, columns=list(VOTE_COLUMNS), index=pd.Index(ids, name="eeg_id"))
    if by_id.index.duplicated().any():
        raise SubmissionError(f"test predictions repeat eeg_ids {sorted(set(ids[by_id.index.duplicated()]))[:5]}")
    missing = sorted(set(sample["eeg_id"]) - set(ids))
    if missing:
        raise SubmissionError(
            f"{len(missing)} eeg_ids of {sample_submission} have no test prediction (e.g. {missing[:3]}); "
            "preprocess and predict the whole test set"
        )
    rounded = by_id.loc[sample["eeg_id"].to_numpy()].to_numpy().round(DECIMALS)
    rounded /= rounded.sum(axis=1, keepdims=True)
    out = pd.DataFrame(rounded, columns=list(VOTE_COLUMNS))
    out.insert(0, "eeg_id", sample["eeg_id"].to_numpy(np.int64))
    return out


def validate_submission(df: pd.DataFrame, sample_submission: str | os.PathLike[str]) -> None:
    """Raise :class:`SubmissionError` unless ``df`` has exactly the sample's ids in its order and the format."""
    if list(df.columns) != list(SUBMISSION_COLUMNS):
        raise SubmissionError(
            f"submission columns must be exactly {list(SUBMISSION_COLUMNS)}, got {list(df.columns)}"
        )
    sample = pd.read_csv(sample_submission)
    if len(df) != len(sample) or not np.array_equal(df["eeg_id"].to_numpy(), sample["eeg_id"].to_numpy()):
        raise SubmissionError(
            f"submission eeg_ids must be those of {sample_submission} in the same order ({len(sample)} rows); "
            f"got {len(df)} rows, first differing at row "
            f"{int(np.argmax(df['eeg_id'].to_numpy()[: len(sample)] != sample['eeg_id'].to_numpy()[: len(df)]))}"
        )
    report = ValidationReport()
    check_submission_table(pl.from_pandas(df), report, "submission.csv", test_ids=sample["eeg_id"].tolist())
    if report.errors:
        raise SubmissionError("; ".join(str(e) for e in report.errors))


def write_submission(
    df: pd.DataFrame, path: str | os.PathLike[str], sample_submission: str | os.PathLike[str]
) -> Path:
    """Validate, then write atomically (``float_format`` keeps :data:`DECIMALS` decimals)."""
    validate_submission(df, sample_submission)
    return write_text(path, df.to_csv(index=False, float_format=f"%.{DECIMALS}f"))


def _default_api() -> Any:
    from kaggle.api.kaggle_api_extended import KaggleApi  # lazy: the package authenticates on import

    api = KaggleApi()
    api.authenticate()
    return api


def submit_to_kaggle(path: str | os.PathLike[str], competition: str = DEFAULT_COMPETITION, message: str = "hms ensemble",
                     env: Mapping[str, str] | None = None, api_factory: Callable[[], Any] | None = None) -> str:  # fmt: skip
    """Upload ``path`` with ``api.competition_submit``; returns what the API answered (scrubbed of credentials).

    Raises :class:`SubmissionCredentialsError` without credentials (nothing is imported or sent), and a
    ``RuntimeError`` with the client's message (credentials replaced by ``***``) when the upload fails."""
    env = os.environ if env is None else env
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `hms run --stage ensemble` first")
    if not _credentials(env):
        raise SubmissionCredentialsError(competition, path)
    secrets = _secrets(env)
    try:
        api = (api_factory or _default_api)()
        answer = api.competition_submit(str(path), message, competition)
    except Exception as e:  # noqa: BLE001 - any client failure, reported without the key
        raise RuntimeError(
            f"Kaggle upload of '{path}' to '{competition}' failed: {_scrub(str(e), secrets)}"
        ) from None
    return _scrub(str(getattr(answer, "message", answer) or "submitted"), secrets)
