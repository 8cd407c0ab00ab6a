"""Counts of what the reliability suite actually did, for ``python -m benchmarks.reliability``.

Tests call :func:`add` with what they injected, sent, tried and compared; the counts go to the JSON-lines file named
by ``$HMS_RELIABILITY_TALLY`` (nothing is written when it is unset: a plain ``pytest`` run). A survived fault or a
cleanly rejected input is counted only once the test's assertions about it have passed, so a failing case shows
as injected but not survived.
"""

from __future__ import annotations

import json
import os

ENV_VAR = "HMS_RELIABILITY_TALLY"
KEYS = (
    "faults_injected",
    "faults_survived",
    "bad_inputs_tried",
    "bad_inputs_rejected_cleanly",
    "requests_sent",
    "requests_failed",
    "artifacts_compared",
    "artifacts_mismatched",
)


def add(case: str, **counts: int) -> None:
    unknown = set(counts) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown tally keys {sorted(unknown)}; known: {KEYS}")
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"case": case, **{k: int(v) for k, v in counts.items()}}) + "\n")


def read(path: str | os.PathLike[str]) -> tuple[dict[str, int], list[dict]]:
    """The summed counts of a tally file and its rows."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    totals = {k: sum(r.get(k, 0) for r in rows) for k in KEYS}
    return totals, rows
