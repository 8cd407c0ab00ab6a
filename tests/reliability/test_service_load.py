"""The prediction service under a bounded burst of concurrent requests on loopback (a real uvicorn server in a
thread, httpx clients): no dropped or mixed-up answers (each equals its own input's offline prediction), memory
stays bounded over repeated bursts, overload is a clean 503 with ``Retry-After`` that ``/ready`` reflects, and a
slow client (a body trickling in, or one that hangs up half-way) neither holds a prediction slot nor stops the
others."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

from hms_core.config import ServingConfig
from tests.hms_core.test_serving_inputs import hms_parquet
from tests.reliability import tally

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Requests per burst; ``CLIENTS`` of them in flight at once.
BURST = 12
CLIENTS = 6
#: Largest growth of the server process's resident memory from the first burst to the end of the third (MiB).
MAX_GROWTH_MB = 64


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class Server:
    """``create_app`` under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, predictor, settings: ServingConfig):
        import uvicorn

        from hms_core.serving.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cfg = uvicorn.Config(create_app(predictor=predictor, settings=settings), host="127.0.0.1", port=self.port,
                             log_level="warning", lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def predictor(quiet_predictor):
    return quiet_predictor


@pytest.fixture(scope="module")
def inputs(predictor) -> list[tuple[str, bytes, list]]:
    """(name, HMS parquet, offline probabilities) of distinct recordings: ``hms predict``'s code path."""
    out = []
    for i in range(BURST):
        data = hms_parquet(seed=100 + i)
        res = predictor.predict_bytes(data, f"rec{i}.parquet", None).to_dict()
        out.append((f"rec{i}.parquet", data, [w["probabilities"] for w in res["windows"]]))
    assert len({str(p) for _, _, p in out}) == BURST, "the inputs must have distinct answers to detect a mix-up"
    return out


async def _burst(url: str, inputs, clients: int, during=None) -> list[tuple[str, httpx.Response]]:
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        sem = asyncio.Semaphore(clients)

        async def one(name: str, data: bytes):
            async with sem:
                return name, await client.post(
                    "/predict", files={"file": (name, data, "application/octet-stream")}
                )

        tasks = [asyncio.ensure_future(one(n, d)) for n, d, _ in inputs]
        extra = asyncio.ensure_future(during(client, tasks)) if during else None
        results = await asyncio.gather(*tasks)
        if extra is not None:
            await extra
        return results


def _check(results, inputs, allow_503: bool = False) -> tuple[int, int]:
    """(answered, refused with 503); every 200 equals its own input's offline answer, every refusal is clean."""
    want = {n: p for n, _, p in inputs}
    ok = refused = 0
    for name, resp in results:
        if resp.status_code == 503 and allow_503:
            err = resp.json()["error"]
            assert err["status"] == 503 and "slots are busy" in err["message"] and resp.headers.get("retry-after")
            refused += 1
            continue
        assert resp.status_code == 200, (name, resp.status_code, resp.text[:300])
        body = resp.json()
        assert body["source"] == name, "an answer came back for another request"
        assert [w["probabilities"] for w in body["windows"]] == want[name], f"{name}: not its offline prediction"
        ok += 1
    return ok, refused


def test_a_burst_is_answered_whole_and_in_order_with_bounded_memory(predictor, inputs):
    settings = ServingConfig(max_concurrency=2, queue_timeout_s=60.0, log_predictions=False)
    sent = failed = 0
    with Server(predictor, settings) as srv:
        rss = []
        for _ in range(3):
            results = asyncio.run(_burst(srv.url, inputs, CLIENTS))
            sent += len(results)
            failed += sum(r.status_code != 200 for _, r in results)
            ok, _ = _check(results, inputs)
            assert ok == BURST  # a queue long enough for the burst: nothing dropped
            rss.append(_rss_mb())
        ready = httpx.get(f"{srv.url}/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["slots"]["active"] == 0
    tally.add("service_burst", requests_sent=sent, requests_failed=failed)
    assert rss[-1] - rss[0] < MAX_GROWTH_MB, f"resident memory grew {rss[-1] - rss[0]:.0f} MiB over bursts: {rss}"


def test_overload_is_a_clean_503_that_ready_reflects(predictor, inputs):
    settings = ServingConfig(max_concurrency=1, queue_timeout_s=0.0, log_predictions=False)
    seen: list[int] = []

    async def watch_ready(client: httpx.AsyncClient, tasks) -> None:
        while not all(t.done() for t in tasks):
            r = await client.get("/ready")
            seen.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["status"] == "saturated" and r.json()["ready"] is False
            await asyncio.sleep(0.01)

    with Server(predictor, settings) as srv:
        results = asyncio.run(_burst(srv.url, inputs, CLIENTS, during=watch_ready))
        ok, refused = _check(results, inputs, allow_503=True)
        after = httpx.get(f"{srv.url}/ready", timeout=10)
    tally.add("service_overload", requests_sent=len(results),
              requests_failed=sum(r.status_code not in (200, 503) for _, r in results))  # fmt: skip
    assert ok >= 1 and refused >= 1, (ok, refused)  # one slot, six clients: some answered, some refused at once
    assert 503 in seen, "/ready never showed the saturation"
    assert after.status_code == 200 and after.json()["slots"]["rejected"] >= refused


def _raw_request(port: int, body: bytes, name: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.apache.parquet\r\n"
            f"X-Filename: {name}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    return s, head


def test_slow_clients_hold_no_slot_and_stop_no_one(predictor, inputs):
    settings = ServingConfig(max_concurrency=1, queue_timeout_s=0.0, log_predictions=False)
    name, data, want = inputs[0]
    with Server(predictor, settings) as srv:
        # a client that sends its headers and then half its body, and hangs up
        s, head = _raw_request(srv.port, data, "gone.parquet")
        s.sendall(head + data[: len(data) // 2])
        s.close()
        # a client that trickles its body in 8 pieces over ~1.6 s ...
        slow, head = _raw_request(srv.port, data, name)
        slow.sendall(head)
        step = len(data) // 8 + 1
        for k in range(0, len(data), step):
            slow.sendall(data[k : k + step])
            if k == step:  # ... meanwhile the single prediction slot is free for everyone else
                other_name, other_data, other_want = inputs[1]
                r = httpx.post(f"{srv.url}/predict", files={"file": (other_name, other_data, None)}, timeout=60)
                assert r.status_code == 200, r.text[:300]
                assert [w["probabilities"] for w in r.json()["windows"]] == other_want
                assert httpx.get(f"{srv.url}/ready", timeout=10).json()["slots"]["active"] == 0
            time.sleep(0.2)
        raw = b""
        while chunk := slow.recv(65536):
            raw += chunk
        slow.close()
        status = int(raw.split(b" ", 2)[1])
        assert status == 200, raw[:300]
        import json

        body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert body["source"] == name and [w["probabilities"] for w in body["windows"]] == want
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
    tally.add("service_slow_clients", requests_sent=4, requests_failed=0)
