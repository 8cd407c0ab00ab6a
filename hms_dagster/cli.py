"""``hms``: the command line of the platform.

    hms run --stage all|data|preprocessing|foundation|models|ensemble|export [--config PATH] [--resume] [--fold K]
            [--with-upstream]
    hms status [--json]
    hms demo-data --out DIR --patients N --seed S
    hms validate --data DIR
    hms inspect RECORD.edf|RECORD.parquet
    hms serve [--package PATH] [--host H] [--port P]
    hms predict FILE... [--package PATH] [--out CSV]
    hms scan RECORDING... [--package PATH] [--out DIR] [--engine auto|ensemble|distilled|cascade] [--distill]
    hms ui
    hms config
    hms submit [--file submission.csv] [--message TEXT]

Imports are lazy so ``hms --help`` answers at once (``hms_dagster.stages`` imports Dagster only to build jobs).

Exit codes: 0 ok, 1 a run failed (or ``validate`` / ``inspect`` found a bad file), 2 bad config or arguments
(including a stage asked for before its inputs exist), 3 stage not built.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from hms_dagster.stages import ALL, STAGE_ORDER

os.environ.setdefault("WANDB_MODE", "offline")

app = typer.Typer(
    name="hms",
    help=f"HMS harmful brain activity platform: {', '.join(STAGE_ORDER)}.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: ``--stage`` choices: the stages of ``hms_dagster.stages`` and ``all``.
Stage = Enum("Stage", [(s, s) for s in (ALL, *STAGE_ORDER)], type=str)


ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config", "-c", help="YAML config path or profile name (tiny, demo, full). Default: $HMS_CONFIG or demo."
    ),
]


def _console():
    from rich.console import Console

    # logs and pipes get a wide table instead of rich's 80-column default
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 200)


def _load(config: str | None):
    from hms_core.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    stage: Annotated[
        Stage, typer.Option("--stage", "-s", help="Stage to run; 'all' runs every built stage.")
    ] = ALL,
    config: ConfigOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Run only what is missing, failed or stale.")] = False,
    fold: Annotated[
        int | None, typer.Option("--fold", help="Only this fold's partition (fold-level stages).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Dagster console log level.")] = "WARNING",
    with_upstream: Annotated[
        bool,
        typer.Option(
            "--with-upstream", help="First run the earlier stages (only what is missing, failed or stale)."
        ),
    ] = False,
) -> None:
    """Materialize a stage (or all) through the Dagster instance; every run shows in the UI."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from hms_dagster.runner import MissingUpstreamError, StageNotBuiltError, run_pipeline

    stage = Stage(stage)
    cfg = _load(config)
    con = _console()
    con.print(
        f"[bold]hms run[/] stage={stage.value} profile={cfg.profile} root={cfg.root}"
        + (" resume" if resume else "")
        + (f" fold={fold}" if fold is not None else "")
        + (" with-upstream" if with_upstream else "")
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=con,
        transient=False,
    )
    task = None

    def on_event(kind, pr, info):
        nonlocal task
        if kind == "plan":
            task = progress.add_task("runs", total=info["n"])
        elif kind == "not_built":
            progress.console.print(f"[yellow]stage {info['stage']}: not built yet[/] ({info['what']})")
        elif kind == "start":
            progress.update(task, description=pr.label)
        elif kind == "skip":
            progress.console.print(f"[dim]skip {pr.label} (fresh)[/]")
            progress.advance(task)
        elif kind == "done":
            progress.console.print(
                f"[green]done[/] {pr.label} in {info['seconds']:.1f} s (run {info['run_id'][:8]})"
            )
            progress.advance(task)
        elif kind == "fail":
            progress.console.print(f"[red]FAILED[/] {pr.label} (run {info['run_id']}):\n{info['error']}")

    try:
        with progress:
            report = run_pipeline(
                cfg,
                stage.value,
                resume=resume,
                fold=fold,
                log_level=log_level.upper(),
                on_event=on_event,
                with_upstream=with_upstream,
            )
    except StageNotBuiltError as e:
        con.print(f"[yellow]{e}[/]")
        raise typer.Exit(3) from None
    except MissingUpstreamError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    except ValueError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    if report.reaped:
        con.print(
            f"marked {len(report.reaped)} interrupted run(s) as failed: {', '.join(r[:8] for r in report.reaped)}"
        )
    con.print(
        f"{len(report.done)} run(s) done, {len(report.skipped)} skipped as fresh"
        + (f", stages not built: {', '.join(report.not_built)}" if report.not_built else "")
    )
    if not report.ok:
        con.print("Fix the problem and continue with [bold]hms run --resume[/] (completed partitions are kept).")
        raise typer.Exit(1)


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show every asset and partition: fresh, stale (code/config/data changed), missing, failed; key figures."""
    from hms_dagster.definitions import build_definitions
    from hms_dagster.instance import prepare_instance, reap_interrupted_runs, resolve_dagster_home
    from hms_dagster.status import collect_status, status_summary

    cfg = _load(config)
    home = resolve_dagster_home(cfg)
    instance = prepare_instance(cfg)
    reap_interrupted_runs(instance)
    rows = collect_status(cfg, build_definitions(cfg), instance)
    summary = status_summary(rows)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "profile": cfg.profile,
                    "root": str(cfg.root),
                    **home.to_dict(),
                    **summary,
                    "assets": [r.to_dict() for r in rows],
                },
                indent=2,
                default=str,
            )
        )
        return
    from rich.table import Table

    colour = {
        "fresh": "green",
        "stale": "yellow",
        "missing": "dim",
        "failed": "red",
        "running": "cyan",
        "not built": "magenta",
    }
    t = Table(title=f"HMS pipeline status ({cfg.profile}, {cfg.root})")
    for c in ("stage", "asset", "partition", "state", "materialized", "figures / reason"):
        t.add_column(c)
    for r in rows:
        figs = ", ".join(f"{k}={v}" for k, v in list(r.figures.items())[:4])
        t.add_row(
            r.stage,
            r.asset,
            r.partition or "-",
            f"[{colour.get(r.state, 'white')}]{r.state}[/]",
            r.materialized_at or "-",
            r.reason if r.state in ("stale", "failed", "not built") else figs,
        )
    con = _console()
    con.print(t)
    con.print("stages: " + ", ".join(f"{k}={v}" for k, v in summary["stages"].items()))
    con.print(f"DAGSTER_HOME: {home.path} ({home.source}: {home.reason})")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the HMS-format dataset into.")],
    patients: Annotated[int, typer.Option("--patients", min=2, help="Number of patients.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed -> same files).")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 2,
    n_test: Annotated[int, typer.Option("--test", min=1, help="Test EEGs.")] = 10,
) -> None:
    """Generate the realistic synthetic dataset in the exact Kaggle HMS layout."""
    import time

    from hms_core.config import SyntheticConfig
    from hms_core.synthetic import generate_dataset

    t0 = time.perf_counter()
    summary = generate_dataset(
        out, SyntheticConfig(n_patients=patients, seed=seed, workers=workers, n_test=n_test)
    )
    typer.echo(json.dumps(summary, indent=2, default=str))
    typer.echo(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


@app.command()
def validate(
    data: Annotated[Path, typer.Option("--data", help="Raw HMS folder (train.csv, train_eegs/, ...).")],
    check_files: Annotated[str, typer.Option("--check-files", help="all | sample | none")] = "all",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a raw HMS directory; exits non-zero naming every bad file."""
    from hms_core.checks import check_option
    from hms_core.validation import CHECK_FILES_MODES, validate_raw_dir

    try:
        check_option("check_files", check_files, CHECK_FILES_MODES)
    except ValueError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    report = validate_raw_dir(data, check_files=check_files)
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.format())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def inspect(
    record: Annotated[Path, typer.Argument(help="An EDF/BDF file or an HMS EEG parquet file.")],
    config: ConfigOpt = None,
    offset: Annotated[
        float | None, typer.Option("--offset", help="Start of the 50-s window (s); default centre.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Read one EEG record (EDF/BDF with channel-name variants and resampling, or HMS parquet) and run the same
    preprocessing as training on it: channels found, quality flags, output shapes."""
    from hms_core.constants import SFREQ
    from hms_core.eeg_io import RecordError, read_edf, read_hms_eeg
    from hms_core.preprocess import preprocess_record

    cfg = _load(config)
    mode = cfg.preprocessing.eeg.missing_channels
    try:
        if record.suffix.lower() in (".edf", ".bdf"):
            rec = read_edf(record, missing_channels=mode)
            data, info = (
                rec.data,
                {
                    "original_sfreq": rec.original_sfreq,
                    "missing_channels": list(rec.missing),
                    "channel_map": rec.channel_map,
                },
            )
        else:
            data, info = read_hms_eeg(record, missing_channels=mode), {}
        out = preprocess_record(data, cfg.preprocessing, record_id=str(record), offset_s=offset)
    except RecordError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    summary = {
        "record": str(record),
        "seconds": round(data.shape[0] / SFREQ, 2),
        **info,
        "window_quality": {k: (v.item() if hasattr(v, "item") else v) for k, v in out["window_quality"].items()},
        "usable_bipolar": int(out["quality"].sum()),
        "shapes": {k: list(v.shape) for k, v in out.items() if hasattr(v, "shape") and k != "features"},
        "n_features": int(out["features"].width) if out.get("features") is not None else 0,
    }
    typer.echo(json.dumps(summary, indent=None if as_json else 2, default=str))


@app.command()
def serve(
    package: Annotated[
        Path | None,
        typer.Option("--package", help="Deployment package folder; default serving.package or latest."),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address; default serving.host (127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port; default serving.port (8000).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve predictions over HTTP (FastAPI + uvicorn): POST /predict and /predict/batch; GET /health, /ready,
    /metadata and the OpenAPI docs at /docs."""
    from hms_core.serving.commands import package_errors
    from hms_core.serving.commands import serve as run_service

    cfg = _load(config)
    try:
        run_service(cfg, None if package is None else str(package), host, port)
    except package_errors() as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="HMS EEG parquet, EDF/BDF or JSON recordings.")],
    package: Annotated[
        Path | None,
        typer.Option("--package", help="Deployment package folder; default serving.package or latest."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="CSV with one row per 10-s window.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Predict recordings offline through the service's code path: the same numbers as POST /predict (JSON on
    stdout, or one CSV row per window with --out). Exit 1 when a file could not be scored (named on stderr)."""
    from hms_core.serving.commands import package_errors, predict_to_csv

    cfg = _load(config)
    try:
        results, errors = predict_to_csv(cfg, [str(f) for f in files], None if package is None else str(package),
                                         None if out is None else str(out))  # fmt: skip
    except package_errors() as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    if out is None:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        typer.echo(f"wrote {sum(len(r.windows) for r in results)} windows of {len(results)} file(s) to {out}")
    for name, err in errors:
        typer.echo(f"{name}: {err.message}", err=True)
    raise typer.Exit(1 if errors else 0)


@app.command()
def ui(
    config: ConfigOpt = None,
    port: Annotated[int, typer.Option("--port")] = 3000,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
) -> None:
    """Start the Dagster UI (webserver and daemon, for sensors and automation) on the same instance as the CLI;
    Ctrl-C or SIGTERM stops all of it."""
    from hms_dagster.ui import serve

    raise typer.Exit(serve(_load(config), host, port, echo=typer.echo))


@app.command()
def submit(
    config: ConfigOpt = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="CSV to upload; default <root>/ensemble/submission.csv.")
    ] = None,
    message: Annotated[str, typer.Option("--message", "-m", help="Submission description.")] = "hms ensemble",
) -> None:
    """Upload the ensemble's submission.csv with the Kaggle API (credentials required; the key is never printed).

    Exit codes: 0 uploaded, 1 the upload or the format check failed, 2 no credentials or no file."""
    from hms_core.ensemble.build import SUBMISSION_FILE
    from hms_core.ensemble.submission import (
        SAMPLE_SUBMISSION,
        SubmissionCredentialsError,
        SubmissionError,
        submit_to_kaggle,
        validate_submission,
    )

    cfg = _load(config)
    path = file or cfg.ensemble_dir / SUBMISSION_FILE
    competition = cfg.dataset.kaggle_competition
    try:
        sample = cfg.raw_dir / SAMPLE_SUBMISSION
        if path.is_file() and sample.is_file():
            import pandas as pd

            validate_submission(pd.read_csv(path), sample)
        answer = submit_to_kaggle(path, competition, message)
    except (SubmissionCredentialsError, FileNotFoundError) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    except (SubmissionError, RuntimeError) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"submitted {path} to {competition}: {answer}")


@app.command()
def monitor(
    day: Annotated[
        str | None, typer.Option("--day", help="UTC day YYYY-MM-DD of logged predictions; default yesterday.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Drift and quality of one day of logged predictions (prediction_drift, prediction_quality) through Dagster;
    exit 1 when a check fails with ERROR."""
    from hms_dagster.assets.monitoring import monitor_cli

    code, text = monitor_cli(_load(config), day)
    typer.echo(text, err=code == 2)
    raise typer.Exit(code)


@app.command()
def scan(
    recordings: Annotated[list[Path], typer.Argument(help="EDF/BDF (or any file MNE reads) recordings to scan.")],
    config: ConfigOpt = None,
    package: Annotated[
        Path | None, typer.Option("--package", help="Deployment package folder; default scan.package / newest.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder; default <root>/<scan.out_dir>.")
    ] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="auto | ensemble | distilled | cascade (default scan.engine).")
    ] = None,
    distill: Annotated[
        bool, typer.Option("--distill", help="First distil the scanning model from the ensemble (no labels).")
    ] = False,
) -> None:
    """Scan hours-long recordings into a class-probability timeline (10-s windows every scan.stride_s s):
    timeline.csv/parquet, events.tsv, EDF+ annotations, summary.json and a PNG per recording. Exit code 2 when a
    file cannot be scanned (the message names it and why)."""
    from hms_core.scanning.batch import BAD_FILE_EXIT, scan_files

    cfg = _load(config)
    try:
        code, _ = scan_files(recordings, cfg, package=package, out_dir=out, engine=engine, distill=distill,
                             console=_console())  # fmt: skip
    except (FileNotFoundError, ValueError) as e:  # no package/ensemble, a bad --engine, a package that fails
        typer.echo(f"hms scan: {e}", err=True)
        raise typer.Exit(BAD_FILE_EXIT) from None
    raise typer.Exit(code)


@app.command("config")
def show_config(config: ConfigOpt = None) -> None:
    """Print the resolved, validated configuration."""
    cfg = _load(config)
    typer.echo(f"# {cfg.source_path}\n{cfg.to_yaml()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
