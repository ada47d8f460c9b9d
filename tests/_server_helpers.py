"""Helpers for the server tests: a publisher thread that plays a pipeline, and small clients."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from affectstream.engine.labels import EMOTIONS
from affectstream.stream.messages import EventKind, Message, MessageType, StreamMessages, hello, wall_ms
from affectstream.stream.server import ServerConfig, StreamServer


def make_hello(streams: Iterable[str] = ("cam", "file")) -> Message:
    return hello(EMOTIONS, {"backbone": "tiny-random", "head": "zero-shot"}, list(streams))


def scores_at(step: int, phase: float) -> dict[str, float]:
    return {label: round(0.5 + 0.45 * math.sin(step / 7.0 + phase + i), 4) for i, label in enumerate(EMOTIONS)}


class Publisher:
    """Emits what the pipeline would, per stream: estimates at ``hz``, an event every
    ``event_every`` estimates, a summary every 10 and stats every 20. Messages carry ``t_pub_ns``
    (an extra field clients must ignore) so that tests can measure delivery latency."""

    def __init__(self, target: Any, streams: Iterable[str] = ("cam", "file"), hz: float = 10.0,
                 event_every: int = 3, first_seq: dict[str, int] | None = None, pad_bytes: int = 0) -> None:
        self.target = target
        self.pad = "x" * pad_bytes  # an unknown field that makes messages bigger, to fill sockets sooner
        self.hz = hz
        self.event_every = event_every
        self.numbering = {s: StreamMessages(s, (first_seq or {}).get(s, 0)) for s in streams}
        self.sent: list[Message] = []
        self._step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="publisher")

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def durable(self, stream: str | None = None) -> list[Message]:
        return [m for m in list(self.sent) if m["type"] in ("event", "summary")
                and (stream is None or m["stream"] == stream)]

    def step(self) -> None:
        """One estimate per stream (and the events, summaries and stats due at this step)."""
        self._step += 1
        for index, (stream, numbering) in enumerate(self.numbering.items()):
            for message in self._messages(stream, numbering, index):
                if self.pad:
                    message["pad"] = self.pad
                message["t_pub_ns"] = time.time_ns()
                self.sent.append(message)
                self.target.publish(message)

    def _messages(self, stream: str, numbering: StreamMessages, index: int) -> list[Message]:
        step, ts, wall = self._step, self._step / self.hz, wall_ms()
        scores = scores_at(step, index)
        out = [numbering.make(MessageType.ESTIMATE, ts, wall, scores=scores,
                              sentiment=round(math.sin(step / 11.0 + index), 4),
                              latency_ms={"encode": 3.1, "head": 0.4}, age_ms=12.5)]
        if step % self.event_every == 0:
            label = max(scores, key=lambda k: scores[k])
            out.append(numbering.event(EventKind.PEAK if step % 2 else EventKind.ONSET, ts, wall,
                                       label=label, value=scores[label]))
        if step % 10 == 0:
            out.append(numbering.make(MessageType.SUMMARY, ts, wall, window_s=5.0, frames=10,
                                      mean=scores, dominant=max(scores, key=lambda k: scores[k]),
                                      share={k: 1 / 6 for k in scores}, sentiment_mean=0.1,
                                      sentiment_trend=0.01))
        if step % 20 == 0:
            out.append(numbering.make(MessageType.STATS, ts, wall, input_fps=25.0, sampled_fps=self.hz,
                                      frames_in=step * 3, frames_sampled=step, estimates=step, drops=0,
                                      queue_depth=1, batch_size=2.0,
                                      latency_ms={"p50": 20.0, "p95": 30.0, "p99": 35.0}, stage_ms={}))
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


async def receive_until(connection: Any, predicate: Any, timeout: float) -> list[Message]:
    """Messages received until one satisfies ``predicate`` (included); TimeoutError otherwise."""
    received: list[Message] = []

    async def loop() -> None:
        while True:
            message = json.loads(await connection.recv())
            received.append(message)
            if predicate(message):
                return

    await asyncio.wait_for(loop(), timeout)
    return received


def durable_keys(messages: Iterable[Message], stream: str | None = None) -> list[tuple[str, int]]:
    return [(m["stream"], m["seq"]) for m in messages
            if m.get("type") in ("event", "summary") and (stream is None or m["stream"] == stream)]
