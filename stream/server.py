"""The server: websocket protocol v1 (docs/protocol.md, resumable), the dashboard, and the routes the
video parts add (stream/video_routes.py), all on one port (aiohttp).

Threads: the pipeline calls ``StreamServer.publish`` (never blocks: it appends to a bounded inbox and
wakes the event loop at most once per batch); the server's own asyncio loop runs in a daemon thread,
stores durable messages in the event log, and hands every message to each client's
``ClientSession`` (stream/subscriptions.py, where the delivery rules live). One writer task per
client sends what its session releases, at the pace its socket accepts: a client that stops reading
only fills its own bounded queue, then is told it lagged, so it never slows the pipeline or others.

Admission (stream/admission.py) happens before a websocket is accepted: Host (403), token (401),
Origin (403), a malformed ``?resume=`` (400), connection cap (503). Plain HTTP GET and HEAD get the
dashboard's files; a mounted route (``StreamServer.mount``) answers its own paths and methods; any
other method is 405.

The event log writes through ``BufferedLog`` (stream/log_backlog.py): when it cannot write (a full
disk) clients still get everything live, each is told with a ``server_status`` message, and
``StreamServer.log_health`` says at the end what was not stored.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affectstream._version import PROTOCOL_VERSION
from affectstream.errors import AffectstreamError, ConfigError, MissingExtraError
from affectstream.stream.admission import Admission, Refusal, host_allowed, host_name, is_loopback
from affectstream.stream.control import CONTROL_TYPES, ControlRoutes
from affectstream.stream.eventlog import EventLog, EventLogConfig, StoredMessage
from affectstream.stream.log_backlog import BufferedLog, LogHealth, LogState
from affectstream.stream.messages import ErrorReply, Hello, MessageType, Record, ServerStatus, SinkReport
from affectstream.stream.netloc import host_port
from affectstream.stream.subscriptions import ClientSession, Outgoing, ProtocolError, resume_in_query

if TYPE_CHECKING:
    from aiohttp import web

    from affectstream.stream.control import Controller
    from affectstream.stream.delivery import Delivery, LogAccess

__all__ = ["Handler", "ServerConfig", "ServerCounters", "StreamServer", "host_allowed", "host_name", "is_loopback"]

log = logging.getLogger(__name__)

WEB_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
             "/index.html": ("index.html", "text/html; charset=utf-8"),
             "/capture": ("capture.html", "text/html; charset=utf-8"),
             "/capture.html": ("capture.html", "text/html; charset=utf-8"),
             "/app.js": ("app.js", "text/javascript; charset=utf-8"),
             "/capture.js": ("capture.js", "text/javascript; charset=utf-8"),
             "/chart.js": ("chart.js", "text/javascript; charset=utf-8"),
             "/common.js": ("common.js", "text/javascript; charset=utf-8"),
             "/control.js": ("control.js", "text/javascript; charset=utf-8"),
             "/overlay.js": ("overlay.js", "text/javascript; charset=utf-8"),
             "/video.js": ("video.js", "text/javascript; charset=utf-8"),
             "/style.css": ("style.css", "text/css; charset=utf-8")}
# The page loads nothing from elsewhere; 'self' covers the same-origin websocket in current browsers.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'")
MAX_CLIENT_ERRORS = 20  # protocol errors tolerated from one client before it is closed (1008)
SEND_BATCH = 64
SINK_STATUS_EVERY_S = 2.0  # how often sinks' state is looked at (and sent when it changed)
MAX_BODY_BYTES = 256 * 1024  # a POSTed body (an SDP offer is a few kB)


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
    # A ping this often (None: none); a client that does not answer within half of it is closed.
    ping_interval_s: float | None = 20.0
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


# A mounted route: called after the Host check, for every method; it checks token and Origin itself
# (``StreamServer.admission``) because what it needs differs (an <img> sends no Origin).
Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


@dataclass(eq=False)  # identity: clients live in a set
class _Client:
    connection: web.WebSocketResponse
    remote: str | None
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
        self.admission = Admission(config.host, config.token, config.allowed_origins, config.allowed_hosts)
        self._hello = hello
        self._log = BufferedLog(eventlog or EventLog(
            EventLogConfig(config.eventlog_path, config.retention_s, config.estimate_retention_s)))
        self._log_health: LogHealth | None = None  # set by stop()
        self._web = _load_web_files()
        self._routes: dict[str, Handler] = {}  # path prefix -> handler (mount)
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
        self._on_loop_start: list[Callable[[asyncio.AbstractEventLoop], None]] = []
        self._on_loop_stop: list[Callable[[], Awaitable[None]]] = []
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._port = config.port
        self._delivery: Delivery | None = None  # --sink: told of every batch after it is stored
        self.control: Controller | None = None  # stream control (stream/control.py), once the pipeline exists
        self._control_routes = ControlRoutes(self.admission)
        self._routes["/api/streams"] = self._control_routes.handle
        self._sinks_said: tuple[SinkReport, ...] = ()

    # -- lifecycle (any thread) ---------------------------------------------------------------------

    def mount(self, prefix: str, handler: Handler, *, on_start: Callable[[asyncio.AbstractEventLoop], None] | None = None,
              on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
        """Route every request whose path starts with ``prefix`` to ``handler`` (before ``start``).
        ``on_start`` gets the server's loop once it runs; ``on_stop`` is awaited before it closes."""
        if self._thread is not None:
            raise AffectstreamError("routes are mounted before the server starts")
        self._routes[prefix] = handler
        if on_start is not None:
            self._on_loop_start.append(on_start)
        if on_stop is not None:
            self._on_loop_stop.append(on_stop)

    def attach_control(self, controller: Controller) -> None:
        """Stream control for ``/api/streams`` and the websocket's control messages (any time)."""
        self.control = self._control_routes.controller = controller

    def attach_delivery(self, delivery: Delivery) -> None:
        """The run's sinks (stream/delivery.py), before ``start``: each stored batch wakes them, and their
        state goes into ``server_status``."""
        self._delivery = delivery

    def log_access(self) -> LogAccess:
        """The event log for another thread (a sink's): every call runs on the server's loop."""
        return _LogAccess(self)

    def start(self, timeout: float = 10.0) -> None:
        """Start listening in a daemon thread; returns once the port is bound."""
        _require_aiohttp()
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

    def settle(self) -> None:
        """Everything published so far is stored and handed on (before the sinks' last delivery)."""
        self._on_loop(self._drain)

    def next_seq(self, stream: str) -> int:
        """Where a (re)started pipeline should number ``stream`` from, so resume spans restarts."""
        return self._on_loop(lambda: self._log.eventlog.next_seq(stream))

    def counters(self) -> ServerCounters:
        return self._on_loop(self._counters)

    # -- event loop ------------------------------------------------------------------------------------

    def _on_loop(self, call: Callable[[], Any]) -> Any:
        loop = self._loop
        if loop is None or not loop.is_running() or threading.current_thread() is self._thread:
            return call()  # no loop, or called from it (a route): waiting on itself would deadlock

        async def run() -> Any:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10.0)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except OSError as error:  # cannot bind: reported to start(), which raises it in the caller's thread
            self._start_error = error
        finally:
            self._started.set()  # start() never waits for a loop that died

    async def _serve(self) -> None:
        from aiohttp import web

        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_response_prepare.append(_server_header)
        # No access log: a line per request is per-client noise (the dashboard polls nothing, but
        # MJPEG viewers and probes come and go).
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
            await site.start()
            self._port = int(runner.addresses[0][1])
            with self._lock:
                self._loop = asyncio.get_running_loop()
                if self._inbox:  # published before the loop existed
                    self._wake_pending = True
                    self._loop.call_soon(self._drain)
            for hook in self._on_loop_start:
                hook(self._loop)
            watcher = asyncio.create_task(self._watch_sinks()) if self._delivery is not None else None
            self._started.set()
            await self._stopping.wait()
            self._drain()
            if watcher is not None:
                watcher.cancel()
            await self._let_writers_finish(1.0)
            for stop_hook in self._on_loop_stop:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stop_hook(), 2.0)
            for client in list(self._clients):
                with contextlib.suppress(Exception):
                    await client.connection.close(code=1001, message=b"server shutting down")
        finally:
            await runner.cleanup()
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
        if self._delivery is not None:
            self._delivery.on_drained(encoded)
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
                            detail=health.error, sinks=self._sink_reports())

    def _sink_reports(self) -> tuple[SinkReport, ...]:
        if self._delivery is None:
            return ()
        return tuple(SinkReport(s.name, s.state.value, s.lag, s.delivered, s.failures, s.error)
                     for s in self._delivery.statuses())

    async def _watch_sinks(self) -> None:
        """Clients hear of each sink's state when it changes, and of its lag every few seconds while
        it is behind (a sink's state is read from its thread, not pushed)."""
        while True:
            await asyncio.sleep(SINK_STATUS_EVERY_S)
            reports = self._sink_reports()
            moved = [(r.state, r.lag, r.failures) for r in reports] != [(r.state, r.lag, r.failures) for r in self._sinks_said]
            if moved:
                self._sinks_said = reports
                self._broadcast(self._status())

    def _broadcast(self, message: Record) -> None:
        item = Outgoing.of(message)
        for client in self._clients:
            client.session.offer(item)
            client.wake.set()

    def _warn_drop(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_warning > 5.0:
            self._last_drop_warning = now
            log.warning("the websocket server's event loop is %d messages behind; %d dropped so far",
                        self.config.max_pending, self._dropped)

    # -- admission and HTTP -------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        refused = self.admission.check_host(request.headers, request.path)
        if refused is not None:
            return refusal_response(refused)
        for prefix, handler in self._routes.items():
            if request.path.startswith(prefix):
                return await handler(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return self._http(request)

    def _websocket_refusal(self, request: web.Request) -> Refusal | None:
        refused = self.admission.check_client(request.headers, request.query_string)
        if refused is not None:
            return refused
        try:
            resume_in_query(request.query_string)
        except ProtocolError as error:
            return Refusal(http.HTTPStatus.BAD_REQUEST, f"{error}\n")
        if len(self._clients) >= self.config.max_connections:
            return Refusal(http.HTTPStatus.SERVICE_UNAVAILABLE,
                           f"connection cap of {self.config.max_connections} reached; retry later\n")
        return None

    def _http(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text=f"{request.method} is not supported here: the dashboard answers "
                                                 "GET and HEAD\n", headers={"Allow": "GET, HEAD"})
        if request.path == "/healthz":
            return web.Response(text="ok\n")
        if request.path not in self._web:
            return web.Response(status=404, text="not found: the dashboard is at /\n")
        body, content_type = self._web[request.path]
        return web.Response(body=body, headers={
            "Content-Type": content_type, "Cache-Control": "no-cache",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"})

    # -- one client -------------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        refused = self._websocket_refusal(request)
        if refused is not None:
            response = refusal_response(refused)
            if refused.status == http.HTTPStatus.SERVICE_UNAVAILABLE:
                response.headers["Retry-After"] = "5"
            return response
        connection = web.WebSocketResponse(
            max_msg_size=self.config.max_message_bytes, compress=False,  # per-client compression of a
            heartbeat=self.config.ping_interval_s, autoping=True)  # broadcast costs more CPU than it saves
        await connection.prepare(request)
        client = _Client(connection, request.remote, ClientSession(self.config.client_queue_size, self._log.since))
        self._clients.add(client)
        log.debug("client %s connected (%d now)", client.remote, len(self._clients))
        client.session.reply(self._hello())
        health = self._log.health()
        if health.state is not LogState.OK or health.lost or self._delivery is not None:
            client.session.reply(self._status())  # a late client learns of an outage, losses, its sinks
        # Before the first await: no live message can be offered to this client ahead of its resume.
        resume = self._ours(resume_in_query(request.query_string))
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
            log.debug("client %s gone (%d left)", client.remote, len(self._clients))
        return connection

    def _ours(self, resume: dict[str, int]) -> dict[str, int]:
        """A resume past everything this log ever numbered comes from another numbering (a server that
        restarted without its event log): from this log's start then, not after a seq that this
        numbering reaches only later, which would hold back every event until it did."""
        fixed = dict(resume)
        for stream, seq in resume.items():
            try:
                if seq >= self._log.eventlog.next_seq(stream):
                    log.info("a client resumed %s after seq %d, which this server never numbered: replaying "
                             "from the start of its log", stream, seq)
                    fixed[stream] = -1
            except ConfigError:
                pass  # the log cannot be read now: the replay itself waits (ReplayUnavailable)
        return fixed

    async def _write(self, client: _Client) -> None:
        try:
            while not client.closed and not client.connection.closed:
                batch = client.session.take(SEND_BATCH)
                if batch:
                    for item in batch:
                        await client.connection.send_str(item.text)
                elif client.session.pending:
                    await asyncio.sleep(0)  # a replay page was filtered out entirely: let others run
                else:
                    client.wake.clear()
                    await client.wake.wait()
        except (ConnectionError, RuntimeError):
            pass  # the client went away mid-send (aiohttp raises ConnectionResetError)

    async def _read(self, client: _Client) -> None:
        from aiohttp import WSMsgType

        try:
            async for message in client.connection:
                if message.type is WSMsgType.TEXT:
                    self._on_client_message(client, message.data)
                elif message.type is WSMsgType.BINARY:
                    self._on_client_message(client, bytes(message.data))
                else:
                    break  # an error (e.g. a message over max_message_bytes: aiohttp closed it with 1009)
                client.wake.set()
                if client.errors > MAX_CLIENT_ERRORS:
                    await client.connection.close(code=1008, message=b"too many malformed messages")
                    break
        except (ConnectionError, RuntimeError):
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
            if isinstance(request, dict) and request.get("type") in CONTROL_TYPES:
                if self.control is None:
                    raise ProtocolError("unavailable", "stream control is not available yet: retry in a moment")
                client.session.reply(self.control.on_message(request))
                return
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


class _LogAccess:
    """``LogAccess`` (stream/delivery.py) over the server's log: each call on the server's loop."""

    def __init__(self, server: StreamServer) -> None:
        self._server = server

    def _eventlog(self) -> EventLog:
        return self._server._log.eventlog

    def since(self, stream: str, after_seq: int, limit: int) -> list[StoredMessage]:
        return self._server._on_loop(lambda: self._server._log.since(stream, after_seq, limit))  # type: ignore[no-any-return]

    def cursors(self, sink: str) -> dict[str, int]:
        return self._server._on_loop(lambda: self._eventlog().cursors(sink))  # type: ignore[no-any-return]

    def save_cursors(self, sink: str, cursors: dict[str, int]) -> None:
        self._server._on_loop(lambda: self._eventlog().save_cursors(sink, cursors))

    def stored_heads(self) -> dict[str, int]:
        return self._server._on_loop(lambda: self._eventlog().heads())  # type: ignore[no-any-return]

    def count_since(self, stream: str, after_seq: int) -> int:
        return self._server._on_loop(lambda: self._eventlog().count_since(stream, after_seq))  # type: ignore[no-any-return]


def refusal_response(refused: Refusal) -> web.Response:
    """A refusal as plain text (HEAD: its headers only; aiohttp leaves a HEAD answer's body out)."""
    from aiohttp import web

    return web.Response(status=int(refused.status), text=refused.text)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = f"affectstream/{PROTOCOL_VERSION}"


def _require_aiohttp() -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError as error:
        raise MissingExtraError("aiohttp", "server", "the websocket server") from error


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
        estimate_retention_s=min(args.keep_estimates, args.retention),
    )


def server_from_args(args: argparse.Namespace, environment: dict[str, str], engine: Any,
                     stream_ids: Callable[[], list[str]]) -> StreamServer:
    """The server ``affectstream run`` starts; ``engine`` gives labels and model info for `hello`,
    ``stream_ids`` the streams at the time (browser cameras come and go)."""
    from affectstream.stream.messages import hello

    config = server_config_from_args(args, environment)
    return StreamServer(config, lambda: hello(engine.labels, engine.model_info, list(stream_ids())))
