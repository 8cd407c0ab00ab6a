"""Latency and throughput of the prediction service: a real ``hms serve`` (uvicorn) on loopback, loaded by httpx.

    python -m benchmarks.service --package PATH [--config tiny] [--requests 40] [--concurrency 2] [--warmup 3]
                                 [--path-runs 15] [--threads auto[,2...] --rounds 1]

Starts ``hms serve --package PATH --port <free>`` as a child process with ``serving.max_concurrency`` set to
``--concurrency`` (so the load is bounded by the service's own slots and nothing is refused), waits for
``/ready``, sends ``--warmup`` requests, then ``--requests`` POST /predict requests of 50-s HMS EEG parquet records
(the workspace's ``test_eegs`` when there are any, else generated in the real format) from ``--concurrency``
concurrent httpx clients. Per request latency is the client's wall time for upload, parsing, the training
preprocessing, every member's engines and the combiner (one 10-s window per record). Prints p50/p95/mean latency,
throughput, the server process's CPU time per request (from /proc: steadier than wall time on a shared machine),
the server's own split (median and p95 of reading, preprocessing, engines + combiner) and its threads per request.

Before that, ``--path-runs`` records go through the server's path in this process (:func:`path_benchmark`: parse,
preprocess, engines, blend) for the predictor the service runs (the blend's members, only their inputs
preprocessed) and for every packaged member (what the service ran before), interleaved record by record, on the
package's threads: the saving of running the blend only, wall and CPU, side by side. ``--threads auto,2``
runs the service once per threads-per-request setting (``HMS_SERVE_THREADS``; auto = the server's own
cores // concurrency), alternating for ``--rounds`` rounds, and reports each setting's medians over the rounds
(keys suffixed ``_t<setting>``). The last line is

    RESULT service_p50_ms=... service_p95_ms=... service_rps=... service_cpu_ms_per_request=...
           server_preprocess_ms=... server_predict_ms=... concurrency=... requests=... errors=...
           path_blend_ms=... path_all_ms=... path_speedup=... path_speedup_cpu=... load_avg_1m=<start>/<end>

:func:`service_benchmark` is what ``benchmarks.inference`` calls for the service part of its RESULT line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

__all__ = ["service_benchmark"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(cfg_path: str, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """50-s HMS EEG parquet records: the workspace's test_eegs (real format), else generated in that format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hms_core.config import load_config
    from hms_core.constants import EEG_FILE_COLUMNS, EEG_WINDOW_SAMPLES

    files = sorted((load_config(cfg_path).raw_dir / "test_eegs").glob("*.parquet"))
    if files:
        return [(f.name, f.read_bytes()) for f in (files * (n // len(files) + 1))[:n]]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(min(n, 8)):
        buf = io.BytesIO()
        cols = {c: (30 * rng.standard_normal(EEG_WINDOW_SAMPLES)).astype(np.float32) for c in EEG_FILE_COLUMNS}
        pq.write_table(pa.table(cols), buf)
        out.append((f"generated_{i}.parquet", buf.getvalue()))
    return (out * (n // len(out) + 1))[:n]


async def _load(url: str, records: list[tuple[str, bytes]], concurrency: int) -> tuple[list[float], list, float]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for r in records:
        queue.put_nowait(r)
    latencies: list[float] = []
    server: list[dict] = []
    errors: list[str] = []

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            while not queue.empty():
                name, data = queue.get_nowait()
                t = time.perf_counter()
                resp = await client.post(
                    "/predict", files={"file": (name, data, "application/vnd.apache.parquet")}
                )
                dt = time.perf_counter() - t
                if resp.status_code == 200:
                    latencies.append(dt)
                    server.append(resp.json()["seconds"])
                else:
                    errors.append(f"{resp.status_code}: {resp.text[:200]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    if errors:
        print(f"{len(errors)} error(s), first: {errors[0]}", file=sys.stderr)
    return latencies, server, wall, len(errors)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (every thread) from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def path_benchmark(package: str | os.PathLike[str], config: str = "tiny", runs: int = 15,
                   concurrency: int = 2) -> dict[str, float]:  # fmt: skip
    """The server's own path per 50-s record (parse, preprocess, engines, blend) in this process, on the threads
    ``hms serve`` gives a request at ``concurrency`` (:func:`hms_core.serving.commands.request_threads`), for the
    predictor the service runs (the blend's members, only their inputs preprocessed) and for every packaged
    member (what the service ran before), interleaved record by record; medians of wall and CPU time (ms)."""
    import time

    from hms_core.config import load_config
    from hms_core.serving.commands import limit_threads, request_threads
    from hms_core.serving.predictor import Predictor

    settings = load_config(config).serving.model_copy(update={"log_predictions": False})
    threads = request_threads(concurrency)
    limit_threads(threads)
    served = Predictor.from_path(package, settings, threads=threads)
    every = Predictor(served.pkg, settings, members=None)
    served.pkg.warm_up(settings.precision)
    records = _records(str(config), runs + 1)
    out: dict[str, list[float]] = {}
    for i, (name, data) in enumerate(records):
        for label, pred in (("blend", served), ("all", every)):
            c0, t0 = time.process_time(), time.perf_counter()
            res = pred.predict_bytes(data, name, "application/vnd.apache.parquet")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if i == 0:
                continue  # warm-up
            out.setdefault(f"{label}_ms", []).append(wall * 1e3)
            out.setdefault(f"{label}_cpu_ms", []).append(cpu * 1e3)
            for k in ("preprocess", "predict"):
                out.setdefault(f"{label}_{k}_ms", []).append(res.seconds[k] * 1e3)
    med = {f"path_{k}": statistics.median(v) for k, v in out.items()}
    med["path_speedup"] = med["path_all_ms"] / med["path_blend_ms"]
    med["path_speedup_cpu"] = med["path_all_cpu_ms"] / med["path_blend_cpu_ms"]
    med["path_blend_members"] = ",".join(served.members or served.pkg.member_names)
    med["path_threads"] = threads
    return med


def service_benchmark(
    package: str | os.PathLike[str],
    config: str = "tiny",
    requests: int = 40,
    concurrency: int = 2,
    warmup: int = 3,
    ready_timeout_s: float = 120.0,
    threads: int | None = None,
) -> dict[str, float]:
    """Start a real ``hms serve`` on a free loopback port, load it, stop it; latency figures in ms. ``threads``:
    threads per request (``HMS_SERVE_THREADS``; default the server's own choice, cores // max_concurrency)."""
    import httpx

    from hms_core.config import load_config

    scratch = Path(tempfile.mkdtemp(prefix="hms_bench_service_"))
    base = load_config(config)
    cfg_path = scratch / "serve.yaml"
    cfg_path.write_text(
        yaml.safe_dump({
            "base": str(base.source_path or config),
            "workspace": {"root": str(scratch / "ws")},  # the prediction log of the benchmark goes here
            "serving": {"max_concurrency": concurrency, "queue_timeout_s": 30.0},
        })
    )  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "hms_dagster.cli", "serve", "--package", str(package), "--port", str(port),
           "-c", str(cfg_path)]  # fmt: skip
    log = open(scratch / "server.log", "w")  # noqa: SIM115 - closed below
    env = dict(os.environ)
    env.pop("HMS_SERVE_THREADS", None)
    if threads is not None:
        env["HMS_SERVE_THREADS"] = str(int(threads))
    # uvicorn installs its SIGTERM handler
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"hms serve exited with {proc.returncode}: {(scratch / 'server.log').read_text()}"
                )
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"hms serve not ready after {ready_timeout_s:g} s")
            time.sleep(0.2)
        records = _records(str(config), requests + warmup)
        asyncio.run(_load(url, records[:warmup], 1))
        cpu0 = _cpu_seconds(proc.pid)
        lat, server, wall, n_err = asyncio.run(_load(url, records[warmup:], concurrency))
        cpu = _cpu_seconds(proc.pid) - cpu0
        threads = httpx.get(f"{url}/metadata", timeout=10).json().get("threads", {})
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    ms = np.asarray(lat) * 1000
    stages = ("read", "preprocess", "predict")
    split = {k: statistics.median(s.get(k, 0.0) for s in server) * 1000 for k in stages}
    p95 = {k: float(np.percentile([s.get(k, 0.0) for s in server], 95)) * 1000 for k in stages}
    n_ok = len(lat)
    return {
        "service_p50_ms": float(np.percentile(ms, 50)) if ms.size else float("nan"),
        "service_p95_ms": float(np.percentile(ms, 95)) if ms.size else float("nan"),
        "service_mean_ms": float(ms.mean()) if ms.size else float("nan"),
        "service_rps": len(lat) / wall if wall > 0 else float("nan"),
        "service_cpu_ms_per_request": cpu / max(n_ok + n_err, 1) * 1000,
        "server_read_ms": split["read"],
        "server_preprocess_ms": split["preprocess"],
        "server_predict_ms": split["predict"],
        "server_read_p95_ms": p95["read"],
        "server_preprocess_p95_ms": p95["preprocess"],
        "server_predict_p95_ms": p95["predict"],
        "server_threads": ", ".join(f"{k} {v}" for k, v in threads.items()),
        "concurrency": concurrency,
        "requests": len(lat) + n_err,
        "errors": n_err,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", required=True, help="deployment package folder (or a deployments folder)")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--path-runs", type=int, default=15, help="records of the in-process comparison (0: none)")
    ap.add_argument(
        "--threads",
        default="auto",
        help="threads per request; comma-separated variants run "
        "alternately (auto: the server's choice, cores // concurrency; e.g. auto,2)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the variants (medians over rounds)")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    res: dict = {}
    if args.path_runs:
        res.update(path_benchmark(args.package, args.config, args.path_runs, args.concurrency))
        print(
            f"server path per record (in process, {res['path_threads']} thread(s), interleaved, median of "
            f"{args.path_runs}): blend members "
            f"[{res['path_blend_members']}] {res['path_blend_ms']:.1f} ms wall / {res['path_blend_cpu_ms']:.1f} ms "
            f"CPU (preprocess {res['path_blend_preprocess_ms']:.1f}, engines {res['path_blend_predict_ms']:.1f}); "
            f"every packaged member {res['path_all_ms']:.1f} ms / {res['path_all_cpu_ms']:.1f} ms CPU (preprocess "
            f"{res['path_all_preprocess_ms']:.1f}, engines {res['path_all_predict_ms']:.1f}): "
            f"{res['path_speedup']:.2f}x wall, {res['path_speedup_cpu']:.2f}x CPU"
        )
    variants = [None if v == "auto" else int(v) for v in args.threads.split(",")]
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # the variants alternate round by round: a changing load meets all of them
        for v in variants:
            r = service_benchmark(
                args.package, args.config, args.requests, args.concurrency, args.warmup, threads=v
            )
            runs.setdefault("auto" if v is None else str(v), []).append(r)
            print(
                f"service [threads {'auto' if v is None else v}]: {r['requests']} requests of one 50-s record, "
                f"{r['concurrency']} concurrent ({r['server_threads'] or 'threads not reported'}): p50 "
                f"{r['service_p50_ms']:.1f} ms, p95 {r['service_p95_ms']:.1f} ms, {r['service_rps']:.2f} req/s, "
                f"server CPU {r['service_cpu_ms_per_request']:.1f} ms per request; server median (p95) read "
                f"{r['server_read_ms']:.1f} ({r['server_read_p95_ms']:.1f}) ms, preprocess "
                f"{r['server_preprocess_ms']:.1f} ({r['server_preprocess_p95_ms']:.1f}) ms, engines + combiner "
                f"{r['server_predict_ms']:.1f} ({r['server_predict_p95_ms']:.1f}) ms",
                flush=True,
            )
    keys = ("service_p50_ms", "service_p95_ms", "service_rps", "service_cpu_ms_per_request",
            "server_preprocess_ms", "server_predict_ms")  # fmt: skip
    for label, rs in runs.items():
        suffix = "" if len(runs) == 1 else f"_t{label}"
        res.update({f"{k}{suffix}": float(np.median([r[k] for r in rs])) for k in keys})  # medians over rounds
        res[f"errors{suffix}"] = sum(r["errors"] for r in rs)
    res.update(concurrency=args.concurrency, requests=args.requests, rounds=args.rounds)
    res["load_avg_1m"] = f"{load0:.1f}/{os.getloadavg()[0]:.1f}"
    out = [k for k in res if k.startswith(("service_", "server_", "errors"))]
    out += ["concurrency", "requests", "rounds"]
    out += [k for k in ("path_blend_ms", "path_all_ms", "path_speedup", "path_speedup_cpu") if k in res]
    out.append("load_avg_1m")
    print("RESULT " + " ".join(f"{k}={res[k]:.2f}" if isinstance(res[k], float) else f"{k}={res[k]}" for k in out))
    return res


if __name__ == "__main__":
    main()
