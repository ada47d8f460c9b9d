"""`run --sink` against real brokers from Debian (mosquitto, redis-server) and a real webhook receiver:
each is taken away for 10 s during a run and comes back; what consumers got equals the run's own JSONL
(issue 15: at-least-once from the event log, the pipeline never waiting)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.timeouts import scaled

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
SECRET = "hook-s3cret"
pytestmark = pytest.mark.skipif(not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
                                or not shutil.which("redis-server") or not MEGAMIND.exists(),
                                reason="needs mosquitto, redis-server and opencv-doc (apt-get install mosquitto "
                                       "redis-server opencv-doc)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_port(port: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


class _Broker:
    """A broker process that can be stopped and started again on the same port, keeping its data."""

    def __init__(self, command: list[str], port: int) -> None:
        self.command, self.port = command, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)  # both save their data on SIGTERM
            self.process.wait(scaled(10))
            self.process = None


@pytest.fixture()
def mosquitto(tmp_path: Path) -> Iterator[_Broker]:
    port = _free_port()
    data = tmp_path / "mosquitto"
    data.mkdir()
    config = tmp_path / "mosquitto.conf"
    # Persistence keeps the consumer's session (and what is queued for it) across the broker's restart.
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                      f"persistence_location {data}/\nautosave_interval 1\nuser root\n")
    broker = _Broker([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)], port)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[_Broker]:
    port = _free_port()
    data = tmp_path / "redis"
    data.mkdir()
    broker = _Broker(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                      "--appendonly", "yes", "--appendfsync", "always", "--save", ""], port)
    broker.start()
    yield broker
    broker.stop()


class _Hooks(http.server.ThreadingHTTPServer):
    failing = False
    batches: list[tuple[bytes, str]] = []
    refused = 0


class _HookHandler(http.server.BaseHTTPRequestHandler):
    server: _Hooks

    def do_POST(self) -> None:  # noqa: N802 http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.failing:
            self.server.refused += 1
            self.send_response(500)
            self.end_headers()
            return
        self.server.batches.append((body, self.headers.get("X-Affectstream-Signature", "")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _MqttConsumer:
    """A persistent-session QoS 1 subscriber: it gets what was queued for it while the broker was away."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict[str, Any]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-consumer", clean_session=False)
        self.client.on_connect = lambda client, *_: client.subscribe("affect/#", qos=1)
        self.client.on_message = lambda _c, _u, message: self.messages.append(json.loads(message.payload))
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _durable_keys(messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(m["stream"], m["seq"]) for m in messages if m.get("type") in ("event", "summary")]


def _check_consumer(name: str, got: list[dict[str, Any]], expected: list[tuple[str, int]],
                    walls: dict[tuple[str, int], int], window: tuple[float, float]) -> None:
    keys = _durable_keys(got)
    assert set(keys) == set(expected), f"{name}: lost {sorted(set(expected) - set(keys))[:5]}"
    seen: set[tuple[str, int]] = set()
    for key in keys:
        if key in seen:  # a duplicate: only of a message around the outage
            assert window[0] <= walls[key] / 1000 <= window[1], f"{name}: {key} repeated outside the failure window"
        seen.add(key)
    for stream in {k[0] for k in expected}:
        firsts = [k[1] for k in dict.fromkeys(k for k in keys if k[0] == stream)]
        assert firsts == sorted(firsts), f"{name}: {stream} out of order"


def test_brokers_and_a_webhook_that_go_away_for_10_s_lose_nothing(
        tmp_path: Path, mosquitto: _Broker, redis_server: _Broker) -> None:
    import redis

    looped = tmp_path / "talk.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "2", "-i", str(MEGAMIND), "-c", "copy", str(looped)],
                   check=True)
    hooks = _Hooks(("127.0.0.1", 0), _HookHandler)
    hooks.batches = []
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    consumer = _MqttConsumer(mosquitto.port)
    out = tmp_path / "run.jsonl"
    run = subprocess.Popen(
        [sys.executable, "-m", "affectstream", "run", f"talk={looped}", "--port", "0", "--quiet", "--out", str(out),
         "--event-log", str(tmp_path / "events.sqlite"),
         "--sink", f"mqtt://127.0.0.1:{mosquitto.port}/affect",
         "--sink", f"redis://127.0.0.1:{redis_server.port}/0?stream=affect",
         "--sink", f"http://127.0.0.1:{hooks.server_address[1]}/hook?types=event,summary"],
        cwd=tmp_path, env={**os.environ, "AFFECTSTREAM_WEBHOOK_SECRET": SECRET},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + scaled(60)
        while not _durable_keys(consumer.messages) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert consumer.messages, "the MQTT consumer got the first events"
        down_at = time.time()
        mosquitto.stop()
        redis_server.stop()
        hooks.failing = True
        time.sleep(10)
        hooks.failing = False
        mosquitto.start()
        redis_server.start()
        up_at = time.time()
        _, stderr = run.communicate(timeout=scaled(120))
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    time.sleep(2)  # the last PUBACKed messages reach the subscriber
    consumer.close()
    hooks.shutdown()

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = _durable_keys(lines)
    walls = {(m["stream"], m["seq"]): m["wall"] for m in lines if "seq" in m}
    window = (down_at - 15, up_at + 15)
    assert len([k for k in expected if window[0] < walls[k] / 1000 < window[1]]) > 0, "events happened meanwhile"
    outage = [m for m in lines if m["type"] == "estimate" and down_at < m["wall"] / 1000 < up_at]
    assert len(outage) >= 10, "estimates kept flowing while the brokers were away"

    sinks_in_stats = [s for m in lines if m["type"] == "stats" for s in m.get("sinks", [])]
    assert {s["name"] for s in sinks_in_stats} == {f"mqtt://127.0.0.1:{mosquitto.port}/affect",
                                                   f"redis://127.0.0.1:{redis_server.port}/0?stream=affect",
                                                   f"http://127.0.0.1:{hooks.server_address[1]}/hook"}
    down = [s for s in sinks_in_stats if s["state"] == "down"]
    assert down and max(s["lag"] for s in down) > 0, "the stats told of the sinks down and behind"

    _check_consumer("mqtt", consumer.messages, expected, walls, window)
    entries = redis.Redis(port=redis_server.port).xrange("affect", "-", "+")
    _check_consumer("redis", [json.loads(fields[b"message"]) for _, fields in entries], expected, walls, window)
    assert hooks.refused >= 1, "the webhook was tried while it answered 500"
    delivered: list[dict[str, Any]] = []
    for body, signed in hooks.batches:
        assert signed == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        delivered.extend(json.loads(body))
    assert {m["type"] for m in delivered} <= {"event", "summary"}
    _check_consumer("webhook", delivered, expected, walls, window)
