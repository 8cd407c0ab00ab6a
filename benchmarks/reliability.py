"""The reliability suite's figures: run its cases and count what they did.

    python -m benchmarks.reliability [--workspace HMS_YAML] [--fuzz] [--seed N] [-k EXPR]

Runs ``pytest tests/reliability tests/hms_dagster/test_resume_kill.py`` in a child process with
``$HMS_RELIABILITY_TALLY`` set: every case records what it actually injected, sent, tried and compared
(:mod:`tests.reliability.tally`; a survived fault or a cleanly rejected input is recorded only after the case's
assertions about it passed). ``--fuzz`` adds the long cases behind the ``fuzz`` marker (more kill points per stage,
foundation pretraining and export killed, long schemathesis and hypothesis runs); ``--seed`` sets
``$HMS_FAULT_SEED`` (the kill points); ``--workspace`` reuses a trained tiny workspace (``$HMS_TEST_WORKSPACE``,
its ``hms.yaml``) instead of training one (about 3 minutes on 2 cores). Prints the per-case counts and a last line

    RESULT faults_injected=.. faults_survived=.. bad_inputs_tried=.. bad_inputs_rejected_cleanly=..
           requests_sent=.. requests_failed=.. artifacts_compared=.. artifacts_mismatched=.. tests_passed=..
           tests_failed=.. seconds=..

(one line). Exits non-zero when a test failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/reliability", "tests/hms_dagster/test_resume_kill.py"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", help="hms.yaml of a trained tiny workspace to reuse ($HMS_TEST_WORKSPACE)")
    ap.add_argument("--fuzz", action="store_true", help="also the long cases behind the fuzz marker")
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill points ($HMS_FAULT_SEED, default 13)")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k expression (a subset of the cases)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests.reliability.tally import ENV_VAR, KEYS, read

    with tempfile.TemporaryDirectory(prefix="hms-reliability-") as tmp:
        tally_path = Path(tmp) / "tally.jsonl"
        tally_path.touch()
        env = {**os.environ, ENV_VAR: str(tally_path)}
        if args.workspace:
            env["HMS_TEST_WORKSPACE"] = str(Path(args.workspace).resolve())
        if args.seed is not None:
            env["HMS_FAULT_SEED"] = str(args.seed)
        # a private basetemp: other pytest sessions on the machine rotate the shared one (and its workspace) away
        cmd = [sys.executable, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider", "-rf", "--tb=short",
               "--basetemp", str(Path(tmp) / "basetemp"),
               "-m", "fuzz or not fuzz" if args.fuzz else "not fuzz"]  # fmt: skip
        if args.keyword:
            cmd += ["-k", args.keyword]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        tail = proc.stdout.strip().splitlines()
        errors = [line for line in tail if line.startswith("E ")]
        print("\n".join([*errors[:30], *(line for line in tail if line.startswith(("FAILED", "ERROR")))]))
        summary = tail[-1] if tail else proc.stderr.strip()[-500:]
        print(summary)
        passed = sum(int(n) for n in re.findall(r"(\d+) passed", summary))
        failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", summary))
        totals, rows = read(tally_path)

    per_case: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KEYS, 0))
    for r in rows:
        group = r["case"].split(":")[0].split("[")[0]
        for k in KEYS:
            per_case[group][k] += r.get(k, 0)
    print(f"{'case':<28}" + "".join(f"{k:>14}" for k in ("injected", "survived", "inputs", "clean", "requests",
                                                           "req_failed", "compared", "mismatched")))  # fmt: skip
    for name, c in sorted(per_case.items()):
        print(f"{name:<28}" + "".join(f"{c[k]:>14}" for k in KEYS))
    print("RESULT " + " ".join(f"{k}={totals[k]}" for k in KEYS)
          + f" tests_passed={passed} tests_failed={failed} seconds={seconds:.0f}")  # fmt: skip
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
