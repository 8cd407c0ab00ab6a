"""The ensemble against its best member, on a workspace whose models are trained (default: the demo profile).

    python -m benchmarks.ensemble [--config demo] [--members a b ...] [--out DIR] [--set ensemble.key=value ...]
    python -m benchmarks.ensemble --constructed [--rows 1000]     # no trained models: constructed members

Reads every fold's ``oof.parquet`` / ``test_pred.parquet`` of the members under ``<root>/models`` (or writes
constructed ones, :mod:`hms_core.ensemble.testing`, into a scratch workspace), runs
:func:`hms_core.ensemble.build.build_ensemble` into ``--out`` (default: a scratch folder, so the workspace's
ensemble asset is left alone) and prints the KL table (out-of-fold KL of every member; the ensemble's nested-CV
KL; patient-bootstrap 95 % intervals; all rows and rows with >= HIGH_VOTE_THRESHOLD votes), each combiner's nested KL, and a last line

    RESULT best_member=<name> best_member_kl=... ensemble_kl=... gain_pct=... <combiner>_kl=... ...
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hms_core.config import load_config, parse_override
from hms_core.constants import HIGH_VOTE_THRESHOLD
from hms_core.ensemble.build import build_ensemble
from hms_core.io import write_json


def _deep(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--members", nargs="*", default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--constructed", action="store_true", help="constructed members instead of trained models")
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args(argv)
    overrides: dict = {}
    for o in args.overrides:
        overrides = _deep(overrides, parse_override(o))
    if args.members is not None:
        overrides = _deep(overrides, {"ensemble": {"members": args.members}})
    scratch = Path(tempfile.mkdtemp(prefix="hms_bench_ensemble_"))
    if args.constructed:
        overrides = _deep(overrides, {"workspace": {"root": str(scratch / "ws")}})
    cfg = load_config(args.config, overrides=overrides)
    if args.constructed:
        from hms_core.ensemble.testing import write_member_outputs

        write_member_outputs(cfg.root, cfg.ensemble_members(), n_rows=args.rows, n_folds=cfg.dataset.n_folds)
    out_dir = args.out or scratch / "ensemble"
    t0 = time.perf_counter()
    out = build_ensemble(cfg, out_dir=out_dir)
    secs = time.perf_counter() - t0
    m = out.metrics
    print(f"{m['n_rows']} out-of-fold rows ({m['n_rows_high_votes']} with >= {HIGH_VOTE_THRESHOLD} votes), {m['n_patients']} patients; "
          f"{cfg.dataset.n_folds} patient folds, nested CV; intervals: 95 % patient bootstrap")  # fmt: skip
    print(f"{'model':<24} {'KL all rows':<28} {f'KL >= {HIGH_VOTE_THRESHOLD} votes':<28} accuracy")
    for name, s in [*m["members"].items(), ("ENSEMBLE (nested CV)", m["ensemble"])]:
        print(f"{name:<24} {s['kl']:.4f} [{s['kl_low']:.4f}, {s['kl_high']:.4f}]      "
              f"{s['kl_high_votes']:.4f} [{s['kl_high_votes_low']:.4f}, {s['kl_high_votes_high']:.4f}]      "
              f"{s['accuracy']:.3f}")  # fmt: skip
    print("combiners (nested CV):", {k: round(v, 4) for k, v in m["nested_kl_by_combiner"].items()})
    print(f"chosen: {m['chosen_combiner']} over {m['kept_members']}; dropped: {m['dropped_members'] or 'none'}")
    print("calibration:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m["calibration"].items()})
    print("uncertainty:", {k: round(v, 4) for k, v in m["uncertainty"].items()})
    result = {
        "best_member": m["best_member"],
        "best_member_kl": round(m["best_member_kl"], 4),
        "ensemble_kl": round(m["ensemble_kl"], 4),
        "gain_pct": round(100 * m["gain_vs_best"], 2),
        "ensemble_kl_high_votes": round(m["ensemble_kl_high_votes"], 4),
        "best_member_kl_high_votes": round(m["members"][m["best_member"]]["kl_high_votes"], 4),
        **{f"{k}_kl": round(v, 4) for k, v in m["nested_kl_by_combiner"].items()},
        "n_rows": m["n_rows"],
        "seconds": round(secs, 1),
    }
    write_json(out_dir / "benchmark.json", result)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
