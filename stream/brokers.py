"""Where `--sink URL` delivers: MQTT, Redis Streams, webhooks and JSON Lines files (docs/cli.md "Sinks").

``parse_sink(url)`` reads a URL into a ``SinkSpec`` (ConfigError for a mistake, before anything
starts); ``open_transport(spec)`` gives the ``Transport`` that sends batches of protocol messages to
it. A transport only sends: ``send`` returns once the broker has taken every message of the batch
(MQTT QoS 1 PUBACKs, Redis replies, a 2xx answer, a flushed file) or raises ``DeliveryError``. What to
send, in which order, when to retry and where each sink's cursor is belongs to stream/delivery.py.

URLs (credentials may be in the URL; logs and cursors use ``SinkSpec.name``, which has none):

- ``mqtt://[USER:PASS@]HOST[:1883]/PREFIX`` (``mqtts://`` for TLS, port 8883): topic ``PREFIX/STREAM/TYPE``;
- ``redis://[:PASS@]HOST[:6379]/DB?stream=KEY&maxlen=N``: ``XADD KEY MAXLEN ~ N * stream S seq N type T message JSON``;
- ``http(s)://HOST/PATH``: POST of a JSON array of messages, signed ``X-Affectstream-Signature:
  sha256=HEX`` (HMAC-SHA256 of the body with the secret in the environment variable named by
  ``?secret_env=`` (default AFFECTSTREAM_WEBHOOK_SECRET); unsigned when that variable is unset);
- ``jsonl:PATH``: one message per line, appended.

Every URL also takes ``types=event,summary,...`` (default: estimate, summary, event),
``estimate_hz=F`` (thin estimates to at most F per stream and second; events and summaries never are)
and ``streams=a,b`` (only these streams).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import math
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict
from urllib.parse import parse_qs, unquote, urlsplit

from affectstream.errors import AffectstreamError, ConfigError, MissingExtraError
from affectstream.stream.netloc import host_port

SINK_TYPES = ("estimate", "summary", "event", "stats")
DEFAULT_TYPES = frozenset({"estimate", "summary", "event"})
SEND_TIMEOUT_S = 10.0  # a broker that takes longer for one batch counts as down
DEFAULT_REDIS_MAXLEN = 100_000


class SinkKind(str, enum.Enum):
    MQTT = "mqtt"
    REDIS = "redis"
    WEBHOOK = "webhook"
    JSONL = "jsonl"


@dataclass(frozen=True)
class SinkSpec:
    url: str  # as given: may hold a password
    name: str  # without credentials or query: what logs, stats and the cursor table show
    kind: SinkKind
    types: frozenset[str] = DEFAULT_TYPES
    estimate_hz: float | None = None  # None: every estimate
    host: str = ""
    port: int = 0
    path: str = ""  # MQTT topic prefix, Redis stream key, webhook path, JSONL file
    username: str | None = None
    password: str | None = None
    tls: bool = False
    db: int = 0
    maxlen: int = DEFAULT_REDIS_MAXLEN
    secret_env: str = "AFFECTSTREAM_WEBHOOK_SECRET"
    streams: frozenset[str] | None = None  # ?streams=a,b: only these streams (None: every stream)

    def wants(self, stream: str, kind: str) -> bool:
        return kind in self.types and (self.streams is None or stream in self.streams)


@dataclass(frozen=True, slots=True)
class Outbound:
    """One protocol message as a sink sends it: its key and its JSON text (as sent live)."""

    stream: str
    seq: int
    type: str
    text: str


class DeliveryError(AffectstreamError):
    """The broker did not take the batch (down, refusing, too slow): it is sent again later."""


class Transport(Protocol):
    def send(self, batch: Sequence[Outbound]) -> None: ...

    def close(self) -> None: ...


def parse_sink(url: str) -> SinkSpec:
    """The sink a ``--sink`` URL names; ConfigError with what to write instead for a mistake."""
    parts = urlsplit(url)
    filters = _filters(parts.query, url)  # types=, estimate_hz=, streams=: every kind takes them
    if url.startswith("jsonl:"):
        path = parts.path
        if not path:
            raise ConfigError("--sink jsonl:PATH needs a file path, e.g. jsonl:events.jsonl")
        return SinkSpec(url, f"jsonl:{path}", SinkKind.JSONL, path=path, **filters)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--sink {_safe(url)}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ConfigError(f"--sink {_safe(url)}: give a host, e.g. mqtt://127.0.0.1/affect, "
                          "redis://127.0.0.1/0?stream=affect, https://hooks.example/affect or jsonl:PATH")
    host = parts.hostname
    login = _Login(username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None)
    if scheme in ("mqtt", "mqtts"):
        prefix = parts.path.strip("/")
        if not prefix or "+" in prefix or parts.fragment or url.endswith("#"):  # '#' starts a URL's fragment
            raise ConfigError(f"--sink {_safe(url)}: give a topic prefix without + or #, e.g. mqtt://{host}/affect")
        port = port or (8883 if scheme == "mqtts" else 1883)
        return SinkSpec(url, f"{scheme}://{host_port(host, port)}/{prefix}", SinkKind.MQTT, host=host, port=port,
                        path=prefix, tls=scheme == "mqtts", **login, **filters)
    if scheme in ("redis", "rediss"):
        key = query.get("stream", ["affectstream"])[-1]
        db_text = parts.path.strip("/") or "0"
        if not db_text.isdigit():
            raise ConfigError(f"--sink {_safe(url)}: the path is the Redis database number, e.g. redis://{host}/0")
        port = port or 6379
        return SinkSpec(url, f"{scheme}://{host_port(host, port)}/{db_text}?stream={key}", SinkKind.REDIS,
                        host=host, port=port, path=key, tls=scheme == "rediss", db=int(db_text),
                        maxlen=_integer(query, "maxlen", DEFAULT_REDIS_MAXLEN, url), **login, **filters)
    if scheme in ("http", "https"):
        port = port or (443 if scheme == "https" else 80)
        return SinkSpec(url, f"{scheme}://{host_port(host, port)}{parts.path or '/'}", SinkKind.WEBHOOK,
                        host=host, port=port, path=parts.path or "/", tls=scheme == "https",
                        secret_env=query.get("secret_env", ["AFFECTSTREAM_WEBHOOK_SECRET"])[-1], **login, **filters)
    raise ConfigError(f"--sink {_safe(url)}: the scheme is mqtt://, mqtts://, redis://, rediss://, http://, "
                      "https:// or jsonl:PATH")


class _Login(TypedDict):
    username: str | None
    password: str | None


class _Filters(TypedDict):
    types: frozenset[str]
    estimate_hz: float | None
    streams: frozenset[str] | None


def _filters(query_text: str, url: str) -> _Filters:
    """What goes to a sink: ``types``, ``estimate_hz`` and ``streams`` (SinkSpec's fields of these names)."""
    query = parse_qs(query_text)
    types = DEFAULT_TYPES
    if "types" in query:
        types = frozenset(t.strip() for t in query["types"][-1].split(",") if t.strip())
        unknown = sorted(types - set(SINK_TYPES))
        if unknown or not types:
            raise ConfigError(f"--sink {_safe(url)}: types= takes {', '.join(SINK_TYPES)}; got {', '.join(unknown) or 'none'}")
    estimate_hz = None
    if "estimate_hz" in query:
        try:
            estimate_hz = float(query["estimate_hz"][-1])
        except ValueError:
            estimate_hz = -1.0
        if not math.isfinite(estimate_hz) or estimate_hz <= 0:
            raise ConfigError(f"--sink {_safe(url)}: estimate_hz= is a number of estimates per second > 0, "
                              "e.g. estimate_hz=1 (leave estimates out with types=)")
    names = frozenset(n.strip() for n in query.get("streams", [""])[-1].split(",") if n.strip())
    return _Filters(types=types, estimate_hz=estimate_hz, streams=names or None)


def _integer(query: dict[str, list[str]], key: str, default: int, url: str) -> int:
    if key not in query:
        return default
    text = query[key][-1]
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--sink {_safe(url)}: {key}= is a whole number >= 1, got {text!r}")
    return int(text)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def open_transport(spec: SinkSpec) -> Transport:
    if spec.kind is SinkKind.MQTT:
        return MqttTransport(spec)
    if spec.kind is SinkKind.REDIS:
        return RedisTransport(spec)
    if spec.kind is SinkKind.WEBHOOK:
        return WebhookTransport(spec)
    return JsonlTransport(spec)


class MqttTransport:
    """QoS 1 publishes through paho-mqtt's own network thread; ``send`` waits for every PUBACK.
    While the broker is away nothing is handed to paho (its queue is unbounded): ``send`` raises."""

    def __init__(self, spec: SinkSpec) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as error:
            raise MissingExtraError("paho-mqtt", "mqtt", "the MQTT sink") from error
        self._spec = spec
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"affectstream-{os.getpid()}-{id(self):x}",
                             protocol=mqtt.MQTTv311)
        if spec.username is not None:
            client.username_pw_set(spec.username, spec.password)
        if spec.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.connect_async(spec.host, spec.port, keepalive=30)
        client.loop_start()  # connects and reconnects on its own thread
        self._client = client

    def send(self, batch: Sequence[Outbound]) -> None:
        if not self._client.is_connected():
            raise DeliveryError(f"{self._spec.name}: not connected to the broker")
        infos = [self._client.publish(f"{self._spec.path}/{m.stream}/{m.type}", m.text, qos=1) for m in batch]
        for info in infos:
            try:
                info.wait_for_publish(SEND_TIMEOUT_S)
            except (RuntimeError, ValueError) as error:  # paho raises these for a publish it dropped
                raise DeliveryError(f"{self._spec.name}: {error}") from None
            if not info.is_published():
                raise DeliveryError(f"{self._spec.name}: no PUBACK within {SEND_TIMEOUT_S:g} s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class RedisTransport:
    """One pipelined ``XADD`` per message with an approximate MAXLEN, so the stream stays bounded."""

    def __init__(self, spec: SinkSpec) -> None:
        try:
            import redis
        except ImportError as error:
            raise MissingExtraError("redis", "redis", "the Redis Streams sink") from error
        self._spec = spec
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._redis = redis.Redis(host=spec.host, port=spec.port, db=spec.db, username=spec.username,
                                  password=spec.password, ssl=spec.tls, socket_timeout=SEND_TIMEOUT_S,
                                  socket_connect_timeout=SEND_TIMEOUT_S)

    def send(self, batch: Sequence[Outbound]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for m in batch:
                pipe.xadd(self._spec.path, {"stream": m.stream, "seq": m.seq, "type": m.type, "message": m.text},
                          maxlen=self._spec.maxlen, approximate=True)
            pipe.execute()
        except self._errors as error:
            raise DeliveryError(f"{self._spec.name}: {error}") from None

    def close(self) -> None:
        self._redis.close()


class WebhookTransport:
    """POSTs a JSON array; any answer but 2xx (or none within the timeout) is a failure, retried."""

    def __init__(self, spec: SinkSpec, environment: dict[str, str] | None = None) -> None:
        self._spec = spec
        secret = (environment if environment is not None else os.environ).get(spec.secret_env)
        self._secret = secret.encode() if secret else None
        parts = urlsplit(spec.url)
        self._target = parts._replace(netloc=host_port(spec.host, spec.port), fragment="").geturl()

    def send(self, batch: Sequence[Outbound]) -> None:
        body = ("[" + ",".join(m.text for m in batch) + "]").encode()
        headers = {"Content-Type": "application/json", "User-Agent": "affectstream"}
        if self._secret is not None:
            headers["X-Affectstream-Signature"] = "sha256=" + signature(self._secret, body)
        request = urllib.request.Request(self._target, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise DeliveryError(f"{self._spec.name} answered {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise DeliveryError(f"{self._spec.name}: {getattr(error, 'reason', error)}") from None

    def close(self) -> None:
        pass


def signature(secret: bytes, body: bytes) -> str:
    """The webhook's signature: hex HMAC-SHA256 of the exact body bytes (compare with hmac.compare_digest)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


class JsonlTransport:
    """Appends each message as a line and flushes; the cursor makes a restarted run go on where it was."""

    def __init__(self, spec: SinkSpec) -> None:
        self._spec = spec
        self._lock = threading.Lock()
        try:
            self._file: Any = Path(spec.path).open("a", encoding="utf-8", newline="\n")  # noqa: SIM115 closed by close()
        except OSError as error:
            raise ConfigError(f"--sink {spec.name}: {error.strerror or error}") from None

    def send(self, batch: Sequence[Outbound]) -> None:
        try:
            with self._lock:
                self._file.write("".join(f"{m.text}\n" for m in batch))
                self._file.flush()
        except OSError as error:
            raise DeliveryError(f"{self._spec.name}: {error.strerror or error}") from None

    def close(self) -> None:
        with self._lock:
            self._file.close()


def decode_redis_entry(fields: dict[Any, Any]) -> dict[str, Any]:
    """A consumer's helper: the protocol message in one of our stream entries."""
    raw = fields.get(b"message", fields.get("message"))
    if not isinstance(raw, (str, bytes)):
        raise ValueError("not an affectstream stream entry: it has no 'message' field")
    message: dict[str, Any] = json.loads(raw)
    return message
