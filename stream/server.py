"""The websocket server and dashboard: one port, protocol v1 (docs/protocol.md), resumable.

Threads: the pipeline calls ``StreamServer.publish`` (never blocks: it appends to a bounded inbox and
wakes the event loop at most once per batch); the server's own asyncio loop runs in a daemon thread,
stores durable messages in the event log, and hands every message to each client's
``ClientSession`` (stream/subscriptions.py, where the delivery rules live). One writer task per
client sends what its session releases, at the pace its socket accepts: a client that stops reading
only fills its own bounded queue, then is told it lagged, so it never slows the pipeline or others.

Admission happens before the upgrade, in ``process_request``: Host (403: a name that is not ours is
how DNS rebinding gets a browser to talk to us), token (401), Origin (403), a malformed ``?resume=``
(400), connection cap (503). Plain HTTP GET and HEAD get the dashboard's files; other methods 405.

The event log writes through ``BufferedLog`` (stream/log_backlog.py): when it cannot write (a full
disk) clients still get everything live, each is told with a ``server_status`` message, and
``StreamServer.log_health`` says at the end what was not stored.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hmac
import http
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from affectstream._version import PROTOCOL_VERSION
from affectstream.errors import AffectstreamError, ConfigError, MissingExtraError
from affectstream.stream.eventlog import EventLog, EventLogConfig
from affectstream.stream.log_backlog import BufferedLog, LogHealth, LogState
from affectstream.stream.messages import ErrorReply, Hello, MessageType, Record, ServerStatus
from affectstream.stream.netloc import host_port
from affectstream.stream.subscriptions import ClientSession, Outgoing, ProtocolError, resume_in_query

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

WEB_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
             "/index.html": ("index.html", "text/html; charset=utf-8"),
             "/app.js": ("app.js", "text/javascript; charset=utf-8"),
             "/style.css": ("style.css", "text/css; charset=utf-8")}
# The page loads nothing from elsewhere; 'self' covers the same-origin websocket in current browsers.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'")
MAX_CLIENT_ERRORS = 20  # protocol errors tolerated from one client before it is closed (1008)
SEND_BATCH = 64


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the websocket server; invalid combinations raise ConfigError at construction."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (read it back from StreamServer.port)
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()  # browser Origins besides the dashboard's own; "*" = any
    allowed_hosts: tuple[str, ...] = ()  # Host names besides localhost and IP literals; "*" = any
    max_message_bytes: int = 64 * 1024  # largest client message; bigger closes with 1009
    max_connections: int = 256
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    client_queue_size: int = 1024  # durable messages waiting for one client before it is lagged
    eventlog_path: Path | None = None  # None: in memory
    retention_s: float = 24 * 3600.0
    estimate_retention_s: float = 0.0  # > 0 also stores estimates (for a fuller replay) that long
    insecure: bool = False  # allow a non-loopback host without a token
    max_pending: int = 100_000  # published messages the event loop has not taken yet

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        for name in ("max_message_bytes", "max_connections", "client_queue_size", "max_pending"):
            if getattr(self, name) < 1:
                raise ConfigError(f"server setting {name} must be >= 1, got {getattr(self, name)}")
        if self.token is not None and not self.token:
            raise ConfigError("the token is empty: pass a non-empty --token or leave it out")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise ConfigError(f"listening on {self.host!r} exposes the stream to the network: pass --token "
                              "(or set AFFECTSTREAM_TOKEN), or --insecure to allow it without one")
        for name in self.allowed_hosts:
            if name != "*" and (not name or host_name(name) != name.strip().lower().rstrip(".")):
                raise ConfigError(f"--allow-host {name!r}: give a host name alone (no scheme, port or path), "
                                  "such as cams.example")
        EventLogConfig(self.eventlog_path, self.retention_s, self.estimate_retention_s)  # validates


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or "0.0.0.0"-like wildcard: treat as reachable from outside


def host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case ("" if there is none)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else ""
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return name.rstrip(".")  # "box.lan." is "box.lan"


def host_allowed(host_header: str, bound: str, allowed: tuple[str, ...]) -> bool:
    """A request may name us as localhost, an IP address, the address we are bound to, or an allowed
    name. Any other name is refused: a page on evil.example that re-resolves its own name to our
    address (DNS rebinding) sends ``Host: evil.example``, and its Origin matches that Host."""
    name = host_name(host_header)
    if not name:
        return False
    if "*" in allowed or name in {h.lower() for h in allowed} or name == bound.lower() or name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.endswith(".localhost")  # RFC 6761: always loopback
    return True  # an IP literal cannot be rebound


@dataclass(eq=False)  # identity: clients live in a set
class _Client:
    connection: ServerConnection
    session: ClientSession
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    errors: int = 0


@dataclass(frozen=True)
class ServerCounters:
    clients: int
    published: int
    dropped_inbound: int  # only when the event loop itself falls max_pending behind (never expected)
    pending_inbound: int
    lagged_times: int
    coalesced: int
    replayed: int
    largest_client_queue: int


class StreamServer:
    """Serves protocol v1 and the dashboard; ``write``/``flush``/``close`` make it a pipeline Sink."""

    def __init__(self, config: ServerConfig, hello: Callable[[], Hello], eventlog: EventLog | None = None) -> None:
        self.config = config
        self._hello = hello
        self._log = BufferedLog(eventlog or EventLog(
            EventLogConfig(config.eventlog_path, config.retention_s, config.estimate_retention_s)))
        self._log_health: LogHealth | None = None  # set by stop()
        self._web = _load_web_files()
        self._lock = threading.Lock()
        self._inbox: collections.deque[Record] = collections.deque()
        self._wake_pending = False
        self._published = 0
        self._dropped = 0
        self._last_drop_warning = 0.0
        self._clients: set[_Client] = set()
        self._latest: dict[str, Outgoing] = {}  # stream -> its newest estimate (event-loop thread only)
        self._lagged_times = self._coalesced = self._replayed = 0  # of clients already gone
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._port = config.port

    # -- lifecycle (any thread) ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start listening in a daemon thread; returns once the port is bound."""
        _require_websockets()
        if self._thread is not None:
            raise AffectstreamError("the websocket server was already started")
        self._thread = threading.Thread(target=self._run, name="ws-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise AffectstreamError(f"the websocket server did not start within {timeout} s")
        if self._start_error is not None or self._loop is None:
            raise AffectstreamError(f"cannot listen on {host_port(self.config.host, self.config.port)} "
                                    f"({self._start_error or 'see the log'}): pick another --port or stop what uses it"
                                    ) from self._start_error
        log.debug("websocket server listening on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop already ended
        if self._thread is not None:
            self._thread.join(timeout)
        if self._log_health is None:
            self._log_health = self._log.close()

    @property
    def log_health(self) -> LogHealth:
        """The event log's state; after ``stop()``, what it finally did not store."""
        return self._log_health or self._log.health()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{host_port(self.config.host, self.port)}/ws"

    # -- the pipeline's side (any thread, never blocks) ----------------------------------------------

    def publish(self, message: Record) -> None:
        with self._lock:
            if len(self._inbox) >= self.config.max_pending:
                self._dropped += 1
                self._warn_drop()
                return
            self._inbox.append(message)
            if self._wake_pending or self._loop is None:
                return
            self._wake_pending = True
            loop = self._loop
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            pass  # stopped: nobody is listening any more

    write = publish

    def flush(self) -> None:
        """Messages are sent as sockets accept them; nothing to flush."""

    def close(self) -> None:
        self.stop()

    def next_seq(self, stream: str) -> int:
        """Where a (re)started pipeline should number ``stream`` from, so resume spans restarts."""
        return self._on_loop(lambda: self._log.eventlog.next_seq(stream))

    def counters(self) -> ServerCounters:
        return self._on_loop(self._counters)

    # -- event loop ------------------------------------------------------------------------------------

    def _on_loop(self, call: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None or not loop.is_running():
            return call()

        async def run() -> Any:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10.0)

    @staticmethod
    def _websockets_log() -> logging.Logger:
        # websockets logs every HTTP response and closed connection at INFO: per-client noise that
        # belongs at DEBUG. Set this logger's level explicitly to see it.
        library_log = logging.getLogger(f"{__name__}.websockets")
        if library_log.level == logging.NOTSET:
            library_log.setLevel(logging.WARNING)
        return library_log

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except OSError as error:  # cannot bind: reported to start(), which raises it in the caller's thread
            self._start_error = error
        finally:
            self._started.set()  # start() never waits for a loop that died

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stopping = asyncio.Event()
        async with serve(
            self._handle, self.config.host, self.config.port,
            process_request=self._admit, max_size=self.config.max_message_bytes,
            ping_interval=self.config.ping_interval_s, ping_timeout=self.config.ping_timeout_s,
            compression=None,  # per-client compression of a broadcast costs more CPU than it saves
            server_header=f"affectstream/{PROTOCOL_VERSION}", logger=self._websockets_log(),
        ) as server:
            self._port = next(iter(server.sockets)).getsockname()[1]
            with self._lock:
                self._loop = asyncio.get_running_loop()
                if self._inbox:  # published before the loop existed
                    self._wake_pending = True
                    self._loop.call_soon(self._drain)
            self._started.set()
            await self._stopping.wait()
            self._drain()
            await self._let_writers_finish(1.0)
        with self._lock:
            self._loop = None

    async def _let_writers_finish(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(c.session.pending and not c.closed for c in self._clients):
            await asyncio.sleep(0.02)

    def _drain(self) -> None:
        with self._lock:
            batch = list(self._inbox)
            self._inbox.clear()
            self._wake_pending = False
        encoded: list[Record] = []
        for message in batch:
            try:
                message.text  # noqa: B018 encoded here, once, for the log and every client
            except (TypeError, ValueError):
                log.exception("dropping a %s message that is not valid JSON", message.type.value)
                continue
            encoded.append(message)
        # Stored before it is sent: the log's high-water mark covers every seq a client may see.
        if self._log.append(encoded):
            encoded.append(self._status())
        self._published += len(encoded)
        for message in encoded:
            item = Outgoing.of(message)
            if item.type == MessageType.ESTIMATE.value and item.stream is not None:
                self._latest[item.stream] = item
            for client in self._clients:
                client.session.offer(item)
        for client in self._clients:
            client.wake.set()

    def _status(self) -> ServerStatus:
        health = self._log.health()
        return ServerStatus(event_log=health.state.value, backlog=health.backlog, lost=health.lost,
                            detail=health.error)

    def _warn_drop(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_warning > 5.0:
            self._last_drop_warning = now
            log.warning("the websocket server's event loop is %d messages behind; %d dropped so far",
                        self.config.max_pending, self._dropped)

    # -- admission and HTTP -------------------------------------------------------------------------------

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        host = request.headers.get("Host", "")
        # /healthz says nothing but "ok": probes that name the server as their platform does
        # (a compose service name) need no --allow-host.
        if path != "/healthz" and not host_allowed(host, self.config.host, self.config.allowed_hosts):
            name = host_name(host) or "(none)"
            response = connection.respond(http.HTTPStatus.FORBIDDEN,
                                          f"Host {name} is not this server's name: start the server with "
                                          f"--allow-host {name} if it is\n")
            return _without_body(response) if request.method == "HEAD" else response
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self._http(connection, request.method, path)
        if self.config.token is not None and not self._token_ok(request):
            return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                      "missing or wrong token: add ?token=... to the URL or send "
                                      "'Authorization: Bearer ...'\n")
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin, request.headers.get("Host", "")):
            return connection.respond(http.HTTPStatus.FORBIDDEN,
                                      f"Origin {origin} is not allowed: start the server with "
                                      f"--allow-origin {origin}\n")
        try:
            resume_in_query(urlsplit(request.path).query)
        except ProtocolError as error:
            return connection.respond(http.HTTPStatus.BAD_REQUEST, f"{error}\n")
        if len(self._clients) >= self.config.max_connections:
            response = connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                          f"connection cap of {self.config.max_connections} reached; retry later\n")
            response.headers["Retry-After"] = "5"
            return response
        return None

    def _token_ok(self, request: Request) -> bool:
        expected = str(self.config.token).encode()
        offered = parse_qs(urlsplit(request.path).query).get("token", [""])[-1]
        authorization = request.headers.get("Authorization", "")
        if authorization.lower().startswith("bearer "):
            offered = authorization[7:].strip()
        return hmac.compare_digest(offered.encode(), expected)

    def _origin_ok(self, origin: str, host: str) -> bool:
        allowed = self.config.allowed_origins
        return "*" in allowed or origin in allowed or origin in (f"http://{host}", f"https://{host}")

    def _http(self, connection: ServerConnection, method: str, path: str) -> Response:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        if method not in ("GET", "HEAD"):
            response = connection.respond(http.HTTPStatus.METHOD_NOT_ALLOWED,
                                          f"{method} is not supported here: the dashboard answers GET and HEAD\n")
            response.headers["Allow"] = "GET, HEAD"
            return response
        if path == "/healthz":
            response = connection.respond(http.HTTPStatus.OK, "ok\n")
        elif path not in self._web:
            response = connection.respond(http.HTTPStatus.NOT_FOUND, "not found: the dashboard is at /\n")
        else:
            body, content_type = self._web[path]
            headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                               ("Cache-Control", "no-cache"), ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                               ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")])
            response = Response(200, "OK", headers, body)
        return _without_body(response) if method == "HEAD" else response

    # -- one client -------------------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        client = _Client(connection, ClientSession(self.config.client_queue_size, self._log.since))
        self._clients.add(client)
        log.debug("client %s connected (%d now)", connection.remote_address, len(self._clients))
        client.session.reply(self._hello())
        health = self._log.health()
        if health.state is not LogState.OK or health.lost:
            client.session.reply(self._status())  # a late client learns of the outage and its losses too
        # Before the first await: no live message can be offered to this client ahead of its resume.
        resume = resume_in_query(urlsplit(connection.request.path).query) if connection.request else {}
        if resume:
            client.session.resume(resume)
        # Each stream's newest estimate, so that a late viewer (a stream that ended, one that is slow)
        # sees scores at once; a replaying stream holds it until the replay has caught up.
        for item in list(self._latest.values()):
            client.session.offer(item)
        client.wake.set()
        reader = asyncio.create_task(self._read(client))
        try:
            await self._write(client)
        finally:
            reader.cancel()
            self._clients.discard(client)
            counters = client.session.counters()
            self._lagged_times += counters.lagged_times
            self._coalesced += counters.coalesced
            self._replayed += counters.replayed
            log.debug("client %s gone (%d left)", connection.remote_address, len(self._clients))

    async def _write(self, client: _Client) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while not client.closed:
                batch = client.session.take(SEND_BATCH)
                if batch:
                    for item in batch:
                        await client.connection.send(item.text)
                elif client.session.pending:
                    await asyncio.sleep(0)  # a replay page was filtered out entirely: let others run
                else:
                    client.wake.clear()
                    await client.wake.wait()
        except ConnectionClosed:
            pass

    async def _read(self, client: _Client) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in client.connection:
                self._on_client_message(client, frame)
                client.wake.set()
                if client.errors > MAX_CLIENT_ERRORS:
                    await client.connection.close(1008, "too many malformed messages")
                    break
        except ConnectionClosed:
            pass
        finally:
            client.closed = True
            client.wake.set()

    def _on_client_message(self, client: _Client, frame: str | bytes) -> None:
        try:
            if isinstance(frame, bytes):
                raise ProtocolError("bad_message", "client messages are JSON text frames, not binary")
            try:
                request = json.loads(frame)
            except (ValueError, RecursionError) as error:
                raise ProtocolError("bad_json", f"not valid JSON ({str(error)[:80]})") from error
            client.session.handle(request)
        except ProtocolError as error:
            client.errors += 1
            client.session.reply(ErrorReply(code=error.code, message=str(error)))

    def _counters(self) -> ServerCounters:
        sessions = [client.session.counters() for client in self._clients]
        with self._lock:
            pending = len(self._inbox)
        return ServerCounters(
            clients=len(self._clients), published=self._published, dropped_inbound=self._dropped,
            pending_inbound=pending,
            lagged_times=self._lagged_times + sum(c.lagged_times for c in sessions),
            coalesced=self._coalesced + sum(c.coalesced for c in sessions),
            replayed=self._replayed + sum(c.replayed for c in sessions),
            largest_client_queue=max((c.queued for c in sessions), default=0),
        )


def _without_body(response: Response) -> Response:
    # HEAD: the headers GET would send (Content-Length included), no body.
    return dataclasses.replace(response, body=b"")


def _require_websockets() -> None:
    try:
        import websockets  # noqa: F401
    except ImportError as error:
        raise MissingExtraError("websockets", "server", "the websocket server") from error


def _load_web_files() -> dict[str, tuple[bytes, str]]:
    web = resources.files("affectstream.stream") / "web"
    return {path: (web.joinpath(name).read_bytes(), content_type) for path, (name, content_type) in WEB_FILES.items()}


def server_config_from_args(args: argparse.Namespace, environment: dict[str, str]) -> ServerConfig:
    token = args.token or environment.get("AFFECTSTREAM_TOKEN") or None
    return ServerConfig(
        host=args.host, port=args.port, token=token, allowed_origins=tuple(args.allow_origin),
        allowed_hosts=tuple(args.allow_host),
        max_connections=args.max_connections, insecure=args.insecure,
        eventlog_path=Path(args.event_log) if args.event_log else None, retention_s=args.retention,
    )


def server_from_args(args: argparse.Namespace, environment: dict[str, str], engine: Any,
                     stream_ids: list[str]) -> StreamServer:
    """The server ``affectstream run`` starts; ``engine`` gives labels and model info for `hello`."""
    from affectstream.stream.messages import hello

    config = server_config_from_args(args, environment)
    return StreamServer(config, lambda: hello(engine.labels, engine.model_info, list(stream_ids)))
