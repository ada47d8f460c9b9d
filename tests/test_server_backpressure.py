"""A client that stops reading for 10 s slows neither the pipeline nor a reading client, keeps server
memory bounded, is told it lagged, and resumes with no gap in events."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from websockets.asyncio.client import connect

from affectstream.stream.server import StreamServer
from tests._server_helpers import Publisher, durable_keys, start_server
from tests.timeouts import scaled

QUEUE = 128
STALL_S = 10.0
LATENCY_FLOOR_MS = 25.0  # below this, p99 on a shared 2-core machine is scheduler noise, not backpressure


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def read_for(client: Any, seconds: float, into: list[dict[str, Any]], latencies: list[float]) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            text = await asyncio.wait_for(client.recv(), left)
        except TimeoutError:
            return
        now = time.time_ns()
        message = json.loads(text)
        into.append(message)
        if "t_pub_ns" in message:
            latencies.append((now - message["t_pub_ns"]) / 1e6)


def small_socket(port: int) -> socket.socket:
    # A small receive window makes the stall reach the server within seconds instead of megabytes.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", port))
    return sock


async def reader_p99(server: StreamServer, seconds: float) -> tuple[float, list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []
    latencies: list[float] = []
    async with connect(server.url) as reader:
        await read_for(reader, seconds, got, latencies)
    return float(np.percentile(latencies, 99)), got


@pytest.mark.slow
def test_a_stalled_client_does_not_slow_the_others_and_resumes_without_gap() -> None:
    server = start_server(client_queue_size=QUEUE)
    publisher = Publisher(server, hz=50, event_every=1, pad_bytes=4000).start()
    try:
        baseline_p99, _ = asyncio.run(reader_p99(server, 4.0))
        samples: list[Any] = []
        rss_before = rss_mb()

        async def with_stall() -> tuple[float, list[dict[str, Any]]]:
            stalled = await connect(server.url, sock=small_socket(server.port), max_queue=4)
            reader_task = asyncio.create_task(reader_p99(server, STALL_S))
            for _ in range(int(STALL_S / 0.5)):  # the stalled client reads nothing meanwhile
                await asyncio.sleep(0.5)
                samples.append(server.counters())
            p99, _ = await reader_task
            resumed: list[dict[str, Any]] = []
            latencies: list[float] = []
            lag_seen = False
            deadline = time.monotonic() + scaled(20)
            while time.monotonic() < deadline:
                await read_for(stalled, 0.2, resumed, latencies)
                for message in resumed:
                    if message["type"] == "lagged" and not lag_seen:
                        lag_seen = True
                        after = {s: info["resume_after"] for s, info in message["streams"].items()}
                        await stalled.send(json.dumps({"type": "resume", "streams": after}))
                if lag_seen and caught_up(resumed, publisher):
                    break
            await stalled.close()
            return p99, resumed

        stall_p99, resumed = asyncio.run(with_stall())
    finally:
        publisher.stop()
        server.stop()

    assert stall_p99 <= 2 * max(baseline_p99, LATENCY_FLOOR_MS), (baseline_p99, stall_p99)
    lagged = [m for m in resumed if m["type"] == "lagged"]
    assert len(lagged) == 1, "the stalled client was told it lagged, once"
    schema = json.loads((Path(__file__).parent.parent / "stream" / "schemas" / "lagged.json").read_text())
    Draft202012Validator(schema).validate(lagged[0])
    assert max(s.largest_client_queue for s in samples) <= QUEUE + 16
    assert max(s.pending_inbound for s in samples) < 1000 and samples[-1].dropped_inbound == 0
    assert rss_mb() - rss_before < 100
    for stream in ("cam", "file"):
        got = durable_keys(resumed, stream)
        assert len(got) == len(set(got)), "no duplicates"
        expected = [(stream, m.seq) for m in publisher.durable(stream)]
        start = expected.index(got[0])
        assert got == expected[start:start + len(got)], "no gap: every event from connection to the end"
        assert len(got) > 300 * (STALL_S / 10)


def caught_up(received: list[dict[str, Any]], publisher: Publisher) -> bool:
    seen = {m["stream"]: m["seq"] for m in received if m.get("type") == "event"}
    return all(seen.get(s, -1) >= publisher.durable(s)[-1].seq - 50 for s in ("cam", "file"))
