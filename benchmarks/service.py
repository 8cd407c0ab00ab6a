"""Latency and throughput of the prediction service: a real ``hms serve`` (uvicorn) on loopback, loaded by httpx.

    python -m benchmarks.service --package PATH [--config tiny] [--requests 40] [--concurrency 2] [--warmup 3]

Starts ``hms serve --package PATH --port <free>`` as a child process with ``serving.max_concurrency`` set to
``--concurrency`` (so the load is bounded by the service's own slots and nothing is refused), waits for
``/ready``, sends ``--warmup`` requests, then ``--requests`` POST /predict requests of 50-s HMS EEG parquet records
(the workspace's ``test_eegs`` when there are any, else generated in the real format) from ``--concurrency``
concurrent httpx clients. Per request latency is the client's wall time for upload, parsing, the training
preprocessing, every member's engines and the combiner (one 10-s window per record). Prints p50/p95/mean latency,
throughput and the server's own split, and a last line

    RESULT service_p50_ms=... service_p95_ms=... service_rps=... concurrency=... requests=... errors=...

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


def service_benchmark(
    package: str | os.PathLike[str],
    config: str = "tiny",
    requests: int = 40,
    concurrency: int = 2,
    warmup: int = 3,
    ready_timeout_s: float = 120.0,
) -> dict[str, float]:
    """Start a real ``hms serve`` on a free loopback port, load it, stop it; latency figures in ms."""
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
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # uvicorn installs its SIGTERM handler
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
        lat, server, wall, n_err = asyncio.run(_load(url, records[warmup:], concurrency))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    ms = np.asarray(lat) * 1000
    split = {k: statistics.median(s.get(k, 0.0) for s in server) * 1000 for k in ("read", "preprocess", "predict")}
    return {
        "service_p50_ms": float(np.percentile(ms, 50)) if ms.size else float("nan"),
        "service_p95_ms": float(np.percentile(ms, 95)) if ms.size else float("nan"),
        "service_mean_ms": float(ms.mean()) if ms.size else float("nan"),
        "service_rps": len(lat) / wall if wall > 0 else float("nan"),
        "server_read_ms": split["read"],
        "server_preprocess_ms": split["preprocess"],
        "server_predict_ms": split["predict"],
        "concurrency": concurrency,
        "requests": len(lat) + n_err,
        "errors": n_err,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", required=True, help="deployment package folder (or a deployments folder)")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    res = service_benchmark(args.package, args.config, args.requests, args.concurrency, args.warmup)
    print(
        f"service: {res['requests']} requests of one 50-s record, {res['concurrency']} concurrent: "
        f"p50 {res['service_p50_ms']:.1f} ms, p95 {res['service_p95_ms']:.1f} ms, {res['service_rps']:.2f} req/s; "
        f"server median read {res['server_read_ms']:.1f} ms, preprocess {res['server_preprocess_ms']:.1f} ms, "
        f"engines + combiner {res['server_predict_ms']:.1f} ms"
    )
    keys = ("service_p50_ms", "service_p95_ms", "service_rps", "concurrency", "requests", "errors")
    print(
        "RESULT " + " ".join(f"{k}={res[k]:.2f}" if isinstance(res[k], float) else f"{k}={res[k]}" for k in keys)
    )
    return res


if __name__ == "__main__":
    main()
