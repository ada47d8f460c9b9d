"""A Python client of a running server's protocol (docs/protocol.md): typed records, reconnects with resume.

::

    from affectstream.client import Event, EventKind, connect

    async with connect("ws://127.0.0.1:8765/ws", token="...", types=["event", "summary"]) as client:
        async for message in client:
            match message:
                case Event(kind=EventKind.ONSET, stream=stream, label=label, value=value):
                    print(stream, "onset", label, value)

and for synchronous code, the same on a plain iterator::

    with connect_sync("ws://127.0.0.1:8765/ws", types=["event"]) as client:
        for event in client:
            ...

What comes out are the frozen records of affectstream.stream.messages (``Hello``, ``Estimate``,
``Summary``, ``Event``, ``Stats``, ``ServerStatus``), never dicts. ``types`` chooses which (default:
all six); ``streams`` which streams (default: all). Both are sent to the server as a subscription and
also applied here, to what was already on its way.

**Continuity.** When the connection drops (a server restart, a network cut) the client reconnects
with backoff and jitter (``max_backoff_s``) and, with ``resume=True`` (the default), asks the server
in the URL to resume after the last ``seq`` it received of each stream. Against a server with a file
``--event-log`` (the same file across its restart), events and summaries then arrive with no gap and
no duplicate: what was published while the client was away is replayed from the log first. A
``lagged`` notice (the client read too slowly and the server's queue for it overflowed) is answered
the same way, so reading slowly loses no event either. Estimates and stats are "latest wins" for a
slow reader and are not replayed: some ``seq``s are skipped. Each stream comes in increasing ``seq``
order and no message is yielded twice: ``client.last_seq`` is the last ``seq`` received per stream.
Persist it to carry on in another process with ``connect(url, resume=saved_last_seq)``.

``resume=True`` connects live from now; a dict ``{stream: seq}`` first replays what the log keeps
after ``seq`` (``-1``: all it keeps); ``resume=False`` makes every connection live from its start
(nothing replayed nor de-duplicated). A server that restarted *without* its event log numbers its
streams from 0 again: the client notices (a resuming client also subscribes to ``stats``, which every
stream sends every few seconds, and yields them only when asked to), warns (logging) that what the
old server published meanwhile is lost, and replays the new numbering from its start.
stream/reconnect.py has these rules, in one place shared with `affectstream listen`.

**Errors** (all ``AffectstreamError``): ``AuthError`` at once when the server refuses the token or
the origin (HTTP 401/403), however ``reconnect`` is set; ``ConnectError`` when the server cannot be
reached, or the connection is lost abnormally, with ``reconnect=False`` (with ``reconnect=True`` the
client retries for ever, logging a warning each time); ``MessageError`` for a message that breaks the
protocol (a field missing or of the wrong type, another protocol version): the iteration can go on
past it. Message types and event kinds this version does not know are skipped, as the protocol asks.
A closed client (``close()``, the end of the ``with`` block) ends the iteration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from affectstream._version import __version__
from affectstream.errors import AffectstreamError, ConfigError
from affectstream.stream.messages import (
    MAX_SEQ,
    STREAM_TYPES,
    ErrorReply,
    Estimate,
    EstimateState,
    Event,
    EventKind,
    FaceEstimate,
    Hello,
    Lagged,
    MessageError,
    MessageType,
    Record,
    ServerStatus,
    Stats,
    StreamRecord,
    Summary,
    UnknownMessageError,
    parse_text,
)
from affectstream.stream.reconnect import SUBSCRIBE_ALSO, Backoff, ResumeCursor, Verdict, websocket_url

__all__ = [
    "AuthError", "Client", "ClientError", "ConnectError", "Estimate", "EstimateState", "Event", "EventKind",
    "FaceEstimate", "Hello", "MessageError", "Record", "ServerStatus", "Stats", "Summary", "SyncClient",
    "UnknownMessageError", "YIELDED_TYPES", "connect", "connect_sync",
]

log = logging.getLogger(__name__)

# What the iterator yields, by wire type; lagged, subscribed and error are the client's own business.
YIELDED_TYPES: tuple[str, ...] = (MessageType.HELLO.value, *(t.value for t in STREAM_TYPES),
                                  MessageType.SERVER_STATUS.value)
_SUBSCRIBABLE = frozenset(t.value for t in STREAM_TYPES)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # an estimate with many faces is a few kB; this only bounds memory

_T = TypeVar("_T")


class ClientError(AffectstreamError):
    """The client cannot go on: the server refused it, or (``reconnect=False``) cannot be reached."""


class AuthError(ClientError):
    """The server refused this client before the websocket opened: HTTP 401 (no token or a wrong one)
    or 403 (Origin or Host not allowed). Raised at once: retrying would not help."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        what = "the token was refused" if status == 401 else "refused (Origin or Host not allowed)"
        super().__init__(f"{url}: {what} (HTTP {status}{': ' + reason if reason else ''})")
        self.status = status
        self.reason = reason


class ConnectError(ClientError):
    """The server cannot be reached, or the connection was lost abnormally (with ``reconnect=False``)."""


def connect(url: str, *, token: str | None = None, streams: Iterable[str] | None = None,
            types: Iterable[str] | None = None, resume: bool | Mapping[str, int] = True, reconnect: bool = True,
            max_backoff_s: float = 10.0, open_timeout_s: float = 10.0) -> Client:
    """A client of the server at ``url`` (``ws://host:port/ws``; ``host:port`` and ``http://`` work too),
    to use as ``async with connect(...) as client: async for message in client: ...``.

    ``token``: sent as ``Authorization: Bearer`` (a ``?token=`` already in the URL works too).
    ``streams``, ``types``: which records to yield (``YIELDED_TYPES``; None = all). ``resume``,
    ``reconnect``, ``max_backoff_s``: see the module's documentation. ``open_timeout_s`` bounds each
    connection attempt. Arguments are checked here (``ConfigError``); nothing connects before
    ``async with`` (or the first ``async for``).
    """
    return Client(url, token=token, streams=streams, types=types, resume=resume, reconnect=reconnect,
                  max_backoff_s=max_backoff_s, open_timeout_s=open_timeout_s)


def connect_sync(url: str, *, token: str | None = None, streams: Iterable[str] | None = None,
                 types: Iterable[str] | None = None, resume: bool | Mapping[str, int] = True, reconnect: bool = True,
                 max_backoff_s: float = 10.0, open_timeout_s: float = 10.0) -> SyncClient:
    """``connect`` for synchronous code: ``with connect_sync(...) as client: for message in client: ...``."""
    return SyncClient(connect(url, token=token, streams=streams, types=types, resume=resume, reconnect=reconnect,
                              max_backoff_s=max_backoff_s, open_timeout_s=open_timeout_s))


class Client:
    """An async iterator of the server's records that reconnects and resumes by itself (see the module).

    One task iterates at a time; ``subscribe`` and ``close`` may be called from others."""

    def __init__(self, url: str, *, token: str | None = None, streams: Iterable[str] | None = None,
                 types: Iterable[str] | None = None, resume: bool | Mapping[str, int] = True, reconnect: bool = True,
                 max_backoff_s: float = 10.0, open_timeout_s: float = 10.0) -> None:
        self.url = websocket_url(url)
        if not self.url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{url!r}: give the server's websocket URL, such as ws://127.0.0.1:8765/ws")
        if token is not None and not token:
            raise ConfigError("the token is empty: pass the server's token, or None when it has none")
        if max_backoff_s <= 0 or open_timeout_s <= 0:
            raise ConfigError("max_backoff_s and open_timeout_s must be > 0")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._streams = _stream_names(streams)
        self._types = _record_types(types)
        self._cursor = ResumeCursor(_resume_points(resume), resume=resume is not False)
        self._reconnect = reconnect
        self._backoff = Backoff(max_s=max_backoff_s)
        self._open_timeout_s = open_timeout_s
        self._connection: ClientConnection | None = None
        self._closed = False
        self._closing = asyncio.Event()  # bound to the loop that first waits on it
        self._retry_in: float | None = None  # the delay before the next connection attempt
        self._renumbered = False  # a stream's numbering went back: reconnect now (stream/reconnect.py)
        self.hello: Hello | None = None  # the last connection's hello
        self.connections = 0  # connections opened so far (a reconnect adds one)

    @property
    def last_seq(self) -> dict[str, int]:
        """The last ``seq`` received of each stream (a copy): what a reconnect resumes after."""
        return dict(self._cursor.last_seq)

    async def __aenter__(self) -> Client:
        await self._connected()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Record:
        while True:
            connection = await self._connected()
            try:
                text = await connection.recv()
                record = await self._receive(connection, text)
                if self._renumbered:
                    self._renumbered = False
                    self._connection = None
                    await connection.close()
                    continue
            except ConnectionClosed as closed:
                self._lost(connection, closed)
                continue
            if record is not None:
                return record

    async def subscribe(self, streams: Iterable[str] | None = None, types: Iterable[str] | None = None) -> None:
        """Change which streams and/or types this client yields, now and after every reconnect: each
        one given replaces the current choice, one left out (None) keeps it."""
        if streams is not None:
            self._streams = _stream_names(streams)
        if types is not None:
            self._types = _record_types(types)
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(ConnectionClosed):  # the next connection subscribes anyway
                await connection.send(json.dumps(self._subscription()))

    async def close(self) -> None:
        """Close the connection and end the iteration (also from another task). Safe to call twice."""
        self._closed = True
        self._closing.set()
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    # -- internals ------------------------------------------------------------------------------------

    async def _connected(self) -> ClientConnection:
        while self._connection is None:
            if self._closed:
                raise StopAsyncIteration
            if self._retry_in is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._retry_in)
                self._retry_in = None
                continue
            try:
                connection = await self._open()
            except (OSError, TimeoutError, InvalidHandshake) as error:
                if not self._reconnect:
                    raise ConnectError(f"cannot connect to {_shown(self.url)}: {_reason(error)}") from error
                self._retry_in = self._backoff.next_delay()
                log.warning("cannot connect to %s (%s); retrying in %.1f s", _shown(self.url), _reason(error),
                            self._retry_in)
                continue
            if self._closed:
                await connection.close()
                raise StopAsyncIteration
            self._connection = connection
            self.connections += 1
        return self._connection

    async def _open(self) -> ClientConnection:
        url = self._cursor.url(self.url, self._streams)
        try:
            connection = await _ws_connect(url, additional_headers=self._headers, open_timeout=self._open_timeout_s,
                                           max_size=MAX_MESSAGE_BYTES, user_agent_header=f"affectstream/{__version__}")
        except InvalidStatus as error:
            status = error.response.status_code
            reason = error.response.body.decode(errors="replace").strip() if error.response.body else ""
            if status in (401, 403):
                raise AuthError(_shown(self.url), status, reason) from None
            if 400 <= status < 500 and status not in (408, 429):
                raise ClientError(f"{_shown(self.url)}: the server refused the connection "
                                  f"(HTTP {status}: {reason})") from None
            raise  # 5xx (503: over its connection cap): retried
        except InvalidURI as error:
            raise ConfigError(f"{_shown(self.url)}: {error}") from None
        subscription = self._subscription()
        if self._streams is not None or len(subscription["types"]) < len(_SUBSCRIBABLE):
            with contextlib.suppress(ConnectionClosed):  # recv() sees it and reconnects
                await connection.send(json.dumps(subscription))
        return connection

    def _subscription(self) -> dict[str, Any]:
        """The subscribe message for the current choice (a new connection gets everything until it comes);
        a resuming client gets stats too, which reveal a renumbered stream (yielded only when asked for)."""
        types = self._types & _SUBSCRIBABLE
        if self._cursor.resume:
            types |= set(SUBSCRIBE_ALSO)
        message: dict[str, Any] = {"type": "subscribe", "types": sorted(types)}
        if self._streams is not None:
            message["streams"] = sorted(self._streams)
        return message

    async def _receive(self, connection: ClientConnection, text: str | bytes) -> Record | None:
        """The record to yield for one frame, or None (handled here, filtered out, or a duplicate)."""
        try:
            record = parse_text(text)
        except UnknownMessageError as error:
            self._note(error.wire)
            log.debug("ignoring a message this version does not know: %s", error)
            return None
        except MessageError as error:
            self._note(error.wire)
            raise
        if isinstance(record, StreamRecord):
            if self._streams is not None and record.stream not in self._streams:
                return None  # sent before our subscription reached the server
            if not self._take(record.stream, record.seq):
                return None
        elif isinstance(record, Hello):
            self.hello = record
            self._backoff.reset()
        elif isinstance(record, Lagged):
            after = {stream: entry.resume_after for stream, entry in record.streams.items()}
            await connection.send(self._cursor.answer_lagged(after))
            return None
        elif isinstance(record, ErrorReply):
            log.warning("the server could not act on a message of this client: %s (%s)", record.message,
                        record.code)
            return None
        return record if record.TYPE.value in self._types else None

    def _note(self, wire: Any) -> None:
        """The seq of a message that is not yielded counts all the same: resume after it."""
        if isinstance(wire, Mapping):
            stream, seq = wire.get("stream"), wire.get("seq")
            if (isinstance(stream, str) and isinstance(seq, int) and not isinstance(seq, bool)
                    and (self._streams is None or stream in self._streams)):
                self._take(stream, seq)

    def _take(self, stream: str, seq: int) -> bool:
        verdict = self._cursor.receive(stream, seq)
        if verdict is Verdict.RENUMBERED:
            self._renumbered = True
        return verdict is Verdict.TAKE

    def _lost(self, connection: ClientConnection, closed: ConnectionClosed) -> None:
        if self._connection is connection:
            self._connection = None
        if self._closed:
            return  # _connected ends the iteration
        if not self._reconnect:
            if isinstance(closed, ConnectionClosedOK):
                self._closed = True
                return
            raise ConnectError(f"the connection to {_shown(self.url)} was lost: {_reason(closed)}") from closed
        self._retry_in = self._backoff.next_delay()
        log.warning("the connection to %s was lost (%s); reconnecting in %.1f s, resuming after %s",
                    _shown(self.url), _reason(closed), self._retry_in, self._cursor.last_seq)


class SyncClient:
    """``Client`` for synchronous code: a plain iterator of records. The async client runs on a private
    event loop in a daemon thread (it answers the server's pings there, between two ``next()``); each
    ``next()`` waits for its record without polling. Ctrl-C while waiting interrupts it."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def last_seq(self) -> dict[str, int]:
        return self._client.last_seq

    @property
    def hello(self) -> Hello | None:
        return self._client.hello

    @property
    def connections(self) -> int:
        return self._client.connections

    def __enter__(self) -> SyncClient:
        self._call(self._client.__aenter__())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> SyncClient:
        return self

    def __next__(self) -> Record:
        try:
            return self._call(self._client.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
        except concurrent.futures.CancelledError:
            if self._client._closed:  # close() from another thread while this one waited
                raise StopIteration from None
            raise

    def subscribe(self, streams: Iterable[str] | None = None, types: Iterable[str] | None = None) -> None:
        self._call(self._client.subscribe(streams, types))

    def close(self) -> None:
        """Close the connection, end the iteration and stop the private loop. Safe to call twice."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            self._client._closed = True
            return
        try:
            asyncio.run_coroutine_threadsafe(_close_all(self._client), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._loop is None:
                if self._client._closed:
                    coroutine.close()
                    raise StopAsyncIteration
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="affectstream-client",
                                                daemon=True)
                self._thread.start()
            loop = self._loop
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt while waiting: the receive stops too
            raise


async def _close_all(client: Client) -> None:
    """Close ``client`` and cancel what still runs on its loop (a ``next()`` interrupted by Ctrl-C)."""
    await client.close()
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


def _stream_names(streams: Iterable[str] | None) -> frozenset[str] | None:
    if streams is None:
        return None
    if isinstance(streams, str):
        raise ConfigError(f"streams is a list of stream ids, got the string {streams!r}: use [{streams!r}]")
    names = frozenset(streams)
    if not all(isinstance(name, str) and name for name in names):
        raise ConfigError(f"streams must be non-empty strings, got {sorted(map(repr, names))}")
    return names


def _record_types(types: Iterable[str] | None) -> frozenset[str]:
    if types is None:
        return frozenset(YIELDED_TYPES)
    if isinstance(types, str):
        raise ConfigError(f"types is a list of message types, got the string {types!r}: use [{types!r}]")
    names = frozenset(t.value if isinstance(t, MessageType) else t for t in types)
    unknown = sorted(map(str, names - set(YIELDED_TYPES)))
    if unknown:
        raise ConfigError(f"unknown message type(s) {unknown}: choose from {list(YIELDED_TYPES)}")
    return names


def _resume_points(resume: bool | Mapping[str, int]) -> dict[str, int]:
    if isinstance(resume, bool):
        return {}
    if not isinstance(resume, Mapping):
        raise ConfigError(f"resume is True, False or {{stream: seq}}, got {resume!r}")
    points = dict(resume)
    for stream, seq in points.items():
        if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool) or not -1 <= seq <= MAX_SEQ:
            raise ConfigError(f"resume maps stream ids to the last seq received (an integer from -1 to {MAX_SEQ}; "
                              f"-1 replays all the log keeps), got {stream!r}: {seq!r}")
    return points


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _shown(url: str) -> str:
    """``url`` for messages and logs: a token in its query is not shown."""
    parts = urlsplit(url)
    if "token=" not in parts.query:
        return url
    query = urlencode([(key, "***" if key == "token" else value) for key, value in parse_qsl(parts.query)])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))

