"""Websocket load: N clients subscribed to every stream of a server fed at a pipeline's pace.

The server (StreamServer with its event log, fed by a synthetic publisher: estimates at --hz per
stream, an event every --event-every estimates, a summary every 10 and stats every 20) runs in a child
process so that its CPU time and RSS are its own. The clients run in this process on one asyncio
loop. Each message carries ``t_pub_ns`` (the publisher's clock; same machine), so delivery latency is
publish -> received by the client, including the client process's own scheduling.

    python benchmarks/ws_load.py --clients 100 1000 --seconds 10

Prints one line per N and, with --markdown, a table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from _proc import cpu_model

LABELS = ("anger", "happiness", "disgust", "fear", "sadness", "surprise")


@dataclass(frozen=True)
class Result:
    clients: int
    connected: int
    seconds: float
    published_per_s: float
    delivered_per_s: float
    p50_ms: float
    p99_ms: float
    lagged: int
    coalesced: int
    server_cpu_percent: float
    server_rss_mb: float


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_records() -> tuple[Any, Any, Any, Any]:
    """The protocol's records with ``t_pub_ns`` added, last on the wire (the clients look for it there):
    the test suite's publisher records (tests/_server_helpers.py), one definition for both."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)  # run from a checkout: the tests package sits beside benchmarks/
    from tests._server_helpers import PublishedEstimate, PublishedEvent, PublishedStats, PublishedSummary

    return PublishedEstimate, PublishedEvent, PublishedSummary, PublishedStats


def publish_loop(server: Any, streams: int, hz: float, event_every: int, stop: threading.Event) -> None:
    from dataclasses import replace

    from affectstream.stream.messages import EventKind, SeqCounter, StatsFields, wall_ms

    estimate, event, summary, stats = timed_records()
    numbering = {f"cam{i}": SeqCounter() for i in range(streams)}
    step, next_at = 0, time.monotonic()
    while not stop.is_set():
        step += 1
        for index, (stream, seqs) in enumerate(numbering.items()):
            ts, wall = step / hz, wall_ms()
            scores = {label: round(0.5 + 0.45 * math.sin(step / 7 + index + k), 4) for k, label in enumerate(LABELS)}
            batch = [estimate(stream=stream, seq=seqs.take(), ts=ts, wall=wall, scores=scores, sentiment=0.1,
                              dominant="fear", latency_ms={"encode": 9.0}, age_ms=20.0)]
            if step % event_every == 0:
                batch.append(event(stream=stream, seq=seqs.take(), ts=ts, wall=wall, kind=EventKind.PEAK,
                                   label="fear", value=scores["fear"]))
            if step % 10 == 0:
                batch.append(summary(stream=stream, seq=seqs.take(), ts=ts, wall=wall, window_s=5.0,
                                     start=max(0.0, ts - 5.0), end=ts, frames=50, mean=scores, dominant="fear",
                                     share={}, sentiment_mean=0.1, sentiment_trend=0.0))
            if step % 20 == 0:
                batch.append(stats(stream=stream, seq=seqs.take(), ts=ts, wall=wall, fields=StatsFields(
                    input_fps=25.0, sampled_fps=hz, drops=0, latency_ms={"p50": 20.0, "p99": 30.0})))
            for message in batch:
                server.publish(replace(message, t_pub_ns=time.time_ns()))
        next_at += 1.0 / hz
        stop.wait(max(0.0, next_at - time.monotonic()))


def serve(pipe: Connection, clients: int, streams: int, hz: float, event_every: int) -> None:
    """Child process: run the server, report the port, publish until told to stop, report usage."""
    raise_fd_limit()
    from affectstream.stream.messages import hello
    from affectstream.stream.server import ServerConfig, StreamServer

    config = ServerConfig(port=0, max_connections=clients + 16, ping_interval_s=None)
    server = StreamServer(config, lambda: hello(LABELS, {"backbone": "synthetic"}, [f"cam{i}" for i in range(streams)]))
    server.start()
    pipe.send(server.port)
    pipe.recv()  # clients are connected: start the clock
    stop = threading.Event()
    publisher = threading.Thread(target=publish_loop, args=(server, streams, hz, event_every, stop), daemon=True)
    cpu0, wall0 = os.times(), time.monotonic()
    publisher.start()
    pipe.recv()  # measurement over
    stop.set()
    publisher.join()
    cpu1, wall1 = os.times(), time.monotonic()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    counters = server.counters()
    pipe.send({"cpu_percent": 100 * cpu / (wall1 - wall0), "rss_mb": rss_mb(), "published": counters.published,
               "lagged": counters.lagged_times, "coalesced": counters.coalesced})
    server.stop()


class Client:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.received = 0

    async def run(self, url: str, connected: asyncio.Event, stop: asyncio.Event, ready: list[int]) -> None:
        from websockets.asyncio.client import connect

        async with connect(url, open_timeout=60, ping_interval=None, compression=None, max_size=None) as ws:
            await ws.recv()  # hello
            ready[0] += 1
            connected.set()
            measuring = False
            while not stop.is_set():
                try:
                    text = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                now = time.time_ns()
                if isinstance(text, bytes):
                    continue
                if not measuring:
                    measuring = ready[1] == 1
                    if not measuring:
                        continue
                self.received += 1
                mark = text.rfind('"t_pub_ns":')
                if mark >= 0:
                    self.latencies_ms.append((now - int(text[mark + 11:].rstrip("}"))) / 1e6)


async def drive(url: str, clients: int, seconds: float, pipe: Connection) -> tuple[list[Client], int]:
    stop = asyncio.Event()
    ready = [0, 0]  # connected count, measuring flag
    pool = [Client() for _ in range(clients)]
    tasks = []
    for index, client in enumerate(pool):
        tasks.append(asyncio.create_task(client.run(url, asyncio.Event(), stop, ready)))
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # do not overflow the listen backlog
    deadline = time.monotonic() + 120
    while ready[0] < clients and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    connected = ready[0]
    pipe.send("go")
    ready[1] = 1
    await asyncio.sleep(seconds)
    stop.set()
    pipe.send("stop")
    await asyncio.gather(*tasks, return_exceptions=True)
    return pool, connected


def measure(clients: int, streams: int, hz: float, event_every: int, seconds: float) -> Result:
    parent, child = mp.Pipe()
    process = mp.get_context("spawn").Process(target=serve, args=(child, clients, streams, hz, event_every))
    process.start()
    port = parent.recv()
    started = time.monotonic()
    pool, connected = asyncio.run(drive(f"ws://127.0.0.1:{port}/ws", clients, seconds, parent))
    elapsed = time.monotonic() - started
    usage = parent.recv()
    process.join(30)
    latencies = np.concatenate([np.asarray(c.latencies_ms) for c in pool if c.latencies_ms] or [np.zeros(1)])
    measured = seconds
    return Result(
        clients=clients, connected=connected, seconds=round(elapsed, 1),
        published_per_s=round(usage["published"] / measured, 1),
        delivered_per_s=round(sum(c.received for c in pool) / measured, 1),
        p50_ms=round(float(np.percentile(latencies, 50)), 2), p99_ms=round(float(np.percentile(latencies, 99)), 2),
        lagged=usage["lagged"], coalesced=usage["coalesced"],
        server_cpu_percent=round(usage["cpu_percent"], 1), server_rss_mb=round(usage["rss_mb"], 1),
    )


def machine() -> str:
    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--hz", type=float, default=10.0, help="estimates per second per stream")
    parser.add_argument("--event-every", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    raise_fd_limit()
    results = [measure(n, args.streams, args.hz, args.event_every, args.seconds) for n in args.clients]
    for result in results:
        print(json.dumps(asdict(result)))
    if args.markdown:
        print(f"\nMachine: {machine()}\n")
        print("| clients | connected | published msg/s | delivered msg/s | p50 ms | p99 ms | lagged | coalesced "
              "| server CPU % | server RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r.clients} | {r.connected} | {r.published_per_s} | {r.delivered_per_s} | {r.p50_ms} | "
                  f"{r.p99_ms} | {r.lagged} | {r.coalesced} | {r.server_cpu_percent} | {r.server_rss_mb} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
