"""submission.csv in the exact Kaggle format, and its upload (fake client, planted fake key)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hms_core.constants import VOTE_COLUMNS
from hms_core.ensemble.submission import (
    SubmissionCredentialsError,
    SubmissionError,
    build_submission,
    submit_to_kaggle,
    validate_submission,
    write_submission,
)

FAKE_KEY = "0123456789abcdef-planted-fake-key"


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    pd.DataFrame({"eeg_id": [30, 10, 20], **{c: 1 / 6 for c in VOTE_COLUMNS}}).to_csv(path, index=False)
    return path


def _probs(n, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(6), n)


def test_submission_has_the_sample_ids_order_and_columns(tmp_path, sample):
    ids, p = np.array([10, 20, 30]), _probs(3)
    df = build_submission(ids, p, sample)
    assert list(df.columns) == ["eeg_id", *VOTE_COLUMNS]
    assert df["eeg_id"].tolist() == [30, 10, 20]  # sample order, not prediction order
    np.testing.assert_allclose(df[list(VOTE_COLUMNS)].to_numpy()[1], p[0], atol=1e-7)
    path = write_submission(df, tmp_path / "submission.csv", sample)
    back = pd.read_csv(path)
    assert list(back.columns) == ["eeg_id", *VOTE_COLUMNS] and back["eeg_id"].tolist() == [30, 10, 20]
    np.testing.assert_allclose(back[list(VOTE_COLUMNS)].sum(axis=1), 1, atol=1e-6)


def test_submission_errors_name_what_is_wrong(tmp_path, sample):
    with pytest.raises(SubmissionError, match=r"1 eeg_ids of .* have no test prediction \(e.g. \[30\]\)"):
        build_submission([10, 20], _probs(2), sample)
    good = build_submission([10, 20, 30], _probs(3), sample)
    with pytest.raises(SubmissionError, match="columns must be exactly"):
        validate_submission(good.rename(columns={"lpd_vote": "LPD"}), sample)
    with pytest.raises(SubmissionError, match="in the same order"):
        validate_submission(good.iloc[[1, 0, 2]], sample)
    bad = good.copy()
    bad.loc[0, "seizure_vote"] += 0.1
    with pytest.raises(SubmissionError, match="rows must sum to 1"):
        write_submission(bad, tmp_path / "s.csv", sample)
    assert not (tmp_path / "s.csv").exists()  # nothing written when the check fails


def _no_creds_env(tmp_path):
    return {"KAGGLE_CONFIG_DIR": str(tmp_path / "empty")}


def test_upload_without_credentials_says_how_and_calls_nothing(tmp_path, sample):
    called = []
    with pytest.raises(SubmissionCredentialsError, match="No Kaggle API credentials found.*kaggle.json"):
        submit_to_kaggle(sample, env=_no_creds_env(tmp_path), api_factory=lambda: called.append(1))
    assert not called


class FakeApi:
    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    def competition_submit(self, file_name, message, competition):
        self.calls.append((file_name, message, competition))
        if self.fail:
            raise RuntimeError(f"401 Unauthorized for key {FAKE_KEY}")
        return type("Answer", (), {"message": "Successfully submitted"})()


def test_upload_with_a_planted_key_never_shows_it(tmp_path, sample):
    env = {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": FAKE_KEY}
    api = FakeApi()
    assert submit_to_kaggle(sample, "comp", "msg", env=env, api_factory=lambda: api) == "Successfully submitted"
    assert api.calls == [(str(sample), "msg", "comp")]
    with pytest.raises(RuntimeError) as err:
        submit_to_kaggle(sample, "comp", env=env, api_factory=lambda: FakeApi(fail=True))
    assert FAKE_KEY not in str(err.value) and "401 Unauthorized for key ***" in str(err.value)
    # a key in kaggle.json is scrubbed too
    cfg_dir = tmp_path / "kcfg"
    cfg_dir.mkdir()
    (cfg_dir / "kaggle.json").write_text(json.dumps({"username": "someone", "key": FAKE_KEY}))
    with pytest.raises(RuntimeError) as err:
        submit_to_kaggle(sample, env={"KAGGLE_CONFIG_DIR": str(cfg_dir)}, api_factory=lambda: FakeApi(fail=True))
    assert FAKE_KEY not in str(err.value)


def test_hms_submit_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import hms_core.ensemble.submission as sub
    from hms_dagster.cli import app

    root = tmp_path / "ws"
    (root / "data" / "raw").mkdir(parents=True)
    pd.DataFrame({"eeg_id": [1, 2], **{c: 1 / 6 for c in VOTE_COLUMNS}}).to_csv(
        root / "data" / "raw" / "sample_submission.csv", index=False
    )
    cfg = tmp_path / "hms.yaml"
    cfg.write_text(f"base: tiny\nworkspace: {{root: {root}}}\n")
    df = build_submission([1, 2], _probs(2), root / "data" / "raw" / "sample_submission.csv")
    write_submission(df, root / "ensemble" / "submission.csv", root / "data" / "raw" / "sample_submission.csv")
    runner = CliRunner()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    res = runner.invoke(app, ["submit", "--config", str(cfg)])
    assert res.exit_code == 2 and "No Kaggle API credentials found" in res.output
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    api = FakeApi()
    monkeypatch.setattr(sub, "_default_api", lambda: api)
    res = runner.invoke(app, ["submit", "--config", str(cfg), "-m", "test run"])
    assert res.exit_code == 0, res.output
    assert "Successfully submitted" in res.output and FAKE_KEY not in res.output
    assert api.calls[0][0].endswith("ensemble/submission.csv") and api.calls[0][1] == "test run"
    monkeypatch.setattr(sub, "_default_api", lambda: FakeApi(fail=True))
    res = runner.invoke(app, ["submit", "--config", str(cfg)])
    assert res.exit_code == 1 and FAKE_KEY not in res.output and "***" in res.output
