"""Helpers for the server tests: a publisher thread that plays a pipeline, and small clients."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from affectstream.engine.labels import EMOTIONS
from affectstream.stream.messages import (
    Estimate,
    Event,
    EventKind,
    Hello,
    SeqCounter,
    Stats,
    StatsFields,
    StreamRecord,
    Summary,
    Wire,
    hello,
    wall_ms,
)
from affectstream.stream.server import ServerConfig, StreamServer


def make_hello(streams: Iterable[str] = ("cam", "file")) -> Hello:
    return hello(EMOTIONS, {"backbone": "tiny-random", "head": "zero-shot"}, list(streams))


@dataclass(frozen=True, kw_only=True)
class _Published:
    """Wire fields only the test publisher adds (unknown to the protocol, so clients must ignore them):
    ``pad`` makes a message bigger, ``t_pub_ns`` (last on the wire) is when it was published."""

    t_pub_ns: int = 0
    pad: str = ""

    def to_wire(self) -> Wire:
        wire: Wire = super().to_wire()  # type: ignore[misc]
        if self.pad:
            wire["pad"] = self.pad
        wire["t_pub_ns"] = self.t_pub_ns
        return wire


@dataclass(frozen=True, kw_only=True)
class PublishedEstimate(_Published, Estimate):
    pass


@dataclass(frozen=True, kw_only=True)
class PublishedEvent(_Published, Event):
    pass


@dataclass(frozen=True, kw_only=True)
class PublishedSummary(_Published, Summary):
    pass


@dataclass(frozen=True, kw_only=True)
class PublishedStats(_Published, Stats):
    pass


def scores_at(step: int, phase: float) -> dict[str, float]:
    return {label: round(0.5 + 0.45 * math.sin(step / 7.0 + phase + i), 4) for i, label in enumerate(EMOTIONS)}


class Publisher:
    """Emits what the pipeline would, per stream: estimates at ``hz``, an event every
    ``event_every`` estimates, a summary every 10 and stats every 20. Messages carry ``t_pub_ns``
    (an extra field clients must ignore; see ``_Published``) so that tests can measure delivery latency."""

    def __init__(self, target: Any, streams: Iterable[str] = ("cam", "file"), hz: float = 10.0,
                 event_every: int = 3, first_seq: dict[str, int] | None = None, pad_bytes: int = 0) -> None:
        self.target = target
        self.pad = "x" * pad_bytes  # an unknown field that makes messages bigger, to fill sockets sooner
        self.hz = hz
        self.event_every = event_every
        self.numbering = {s: SeqCounter((first_seq or {}).get(s, 0)) for s in streams}
        self.sent: list[StreamRecord] = []
        self._step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="publisher")

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def durable(self, stream: str | None = None) -> list[StreamRecord]:
        """The events and summaries published so far (of ``stream``), in order."""
        return [m for m in list(self.sent) if isinstance(m, Event | Summary)
                and (stream is None or m.stream == stream)]

    def step(self) -> None:
        """One estimate per stream (and the events, summaries and stats due at this step)."""
        self._step += 1
        for index, (stream, numbering) in enumerate(self.numbering.items()):
            for message in self._messages(stream, numbering, index):
                message = replace(message, t_pub_ns=time.time_ns())
                self.sent.append(message)
                self.target.publish(message)

    def _messages(self, stream: str, numbering: SeqCounter, index: int) -> list[Any]:
        step, ts, wall = self._step, self._step / self.hz, wall_ms()
        scores = scores_at(step, index)
        dominant = max(scores, key=lambda k: scores[k])

        def numbered() -> dict[str, Any]:
            return {"stream": stream, "seq": numbering.take(), "ts": ts, "wall": wall, "pad": self.pad}

        out: list[Any] = [PublishedEstimate(scores=scores, sentiment=round(math.sin(step / 11.0 + index), 4),
                                            dominant=dominant, latency_ms={"encode": 3.1, "head": 0.4},
                                            age_ms=12.5, **numbered())]
        if step % self.event_every == 0:
            out.append(PublishedEvent(kind=EventKind.PEAK if step % 2 else EventKind.ONSET, label=dominant,
                                      value=scores[dominant], **numbered()))
        if step % 10 == 0:
            out.append(PublishedSummary(window_s=5.0, start=max(0.0, round(ts - 5.0, 6)), end=ts, frames=10,
                                        mean=scores, dominant=dominant, share={k: 1 / 6 for k in scores},
                                        sentiment_mean=0.1, sentiment_trend=0.01, **numbered()))
        if step % 20 == 0:
            out.append(PublishedStats(fields=StatsFields(
                input_fps=25.0, sampled_fps=self.hz, frames_in=step * 3, frames_sampled=step, estimates=step,
                drops=0, queue_depth=1, batch_size=2.0, latency_ms={"p50": 20.0, "p95": 30.0, "p99": 35.0},
                stage_ms={}), **numbered()))
        return out

    def _run(self) -> None:
        period = 1.0 / self.hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.step()
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def start_server(**settings: Any) -> StreamServer:
    settings.setdefault("port", 0)
    server = StreamServer(ServerConfig(**settings), make_hello)
    server.start()
    return server


def url(server: StreamServer, token: str | None = None, resume: dict[str, int] | None = None) -> str:
    query = {**({"token": token} if token else {}), **({"resume": json.dumps(resume)} if resume is not None else {})}
    return server.url + (f"?{urlencode(query)}" if query else "")


async def receive_until(connection: Any, predicate: Any, timeout: float) -> list[Wire]:
    """Messages received until one satisfies ``predicate`` (included); TimeoutError otherwise."""
    received: list[Wire] = []

    async def loop() -> None:
        while True:
            message = json.loads(await connection.recv())
            received.append(message)
            if predicate(message):
                return

    await asyncio.wait_for(loop(), timeout)
    return received


def durable_keys(messages: Iterable[Wire], stream: str | None = None) -> list[tuple[str, int]]:
    return [(m["stream"], m["seq"]) for m in messages
            if m.get("type") in ("event", "summary") and (stream is None or m["stream"] == stream)]
