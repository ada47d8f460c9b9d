"""Streams added and removed while a run goes on: one set of rules for HTTP, the websocket and the CLI.

- ``GET /api/streams``: every stream the run knows, running or ended;
- ``POST /api/streams`` with JSON ``{"name": "door", "uri": "rtsp://...", "rate": 4, "faces": false}``:
  201, the stream starts (``stream_started`` follows on the websocket); 400 a bad name, URI, rate or
  faces; 409 the name is running, or the run cannot analyse it so (faces asked of a run without the face
  stage, or faces off where there is no whole-frame model);
- ``DELETE /api/streams/NAME``: 202, the stream stops and ends with ``stream_ended`` (outcome
  ``stopped``); 404 no running stream of that name;
- the same as websocket messages ``list_streams``, ``add_stream`` (``name``, ``uri``, ``rate``, ``faces``) and
  ``remove_stream`` (``name``), answered with ``stream_control``;
- ``affectstream streams list|add|remove --server URL`` (stream/streams_cli.py) calls the HTTP side.

HTTP control checks Host, token and Origin as the websocket does (stream/admission.py). A running
``run --config FILE`` is changed the same way when it re-reads its file (SIGHUP, stream/stream_config.py).
``Controller`` holds the rules over a ``ControlTarget`` (the pipeline): tests drive it with data.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from affectstream.errors import ConfigError, PipelineError
from affectstream.stream.messages import StreamControlReply, StreamEntry

if TYPE_CHECKING:
    from aiohttp import web

    from affectstream.stream.admission import Admission
    from affectstream.stream.pipeline import StreamOutcome

STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "a stream name is 1 to 64 letters, digits, '.', '_' or '-'"
CONTROL_TYPES = ("list_streams", "add_stream", "remove_stream")


class ControlError(Exception):
    """A control request that cannot be done: ``status`` is its HTTP status, the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StreamRequest:
    """A stream to add: its name, its source, its own sampling rate and whether the face stage analyses
    it (None for either: the run's)."""

    name: str
    uri: str
    rate_hz: float | None = None
    faces: bool | None = None


class ControlTarget(Protocol):
    """What control needs of a running pipeline (stream/pipeline.py ``Pipeline``)."""

    @property
    def stream_ids(self) -> list[str]: ...

    @property
    def outcomes(self) -> dict[str, StreamOutcome]: ...

    def running_stream_ids(self) -> list[str]: ...

    def add_stream(self, stream_id: str, uri: str, source: Any = None, first_seq: int = 0,
                   rate_hz: float | None = None, faces: bool | None = None) -> None: ...

    def remove_stream(self, stream_id: str) -> None: ...

    def stream_uri(self, stream_id: str) -> str | None: ...

    def stream_rate(self, stream_id: str) -> float | None: ...

    def stream_faces(self, stream_id: str) -> bool | None: ...


def stream_request(body: Any) -> StreamRequest:
    """A request to add a stream from its JSON; ControlError 400 says what is wrong."""
    if not isinstance(body, dict):
        raise ControlError(400, 'send a JSON object: {"name": "door", "uri": "rtsp://..."}')
    name, uri, rate, faces = body.get("name"), body.get("uri"), body.get("rate"), body.get("faces")
    if not isinstance(name, str) or not STREAM_NAME.fullmatch(name):
        raise ControlError(400, f"{NAME_RULE}; got {name!r}")
    if not isinstance(uri, str) or not uri.strip():
        raise ControlError(400, "give the stream's source as \"uri\": a file, a camera index or an rtsp:// URL")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                             or not math.isfinite(rate) or rate < 0):
        raise ControlError(400, f"\"rate\" is frames per second to analyse, >= 0 (0: every frame); got {rate!r}")
    if isinstance(faces, str) and faces in ("on", "off"):  # the CLI's spelling
        faces = faces == "on"
    if faces is not None and not isinstance(faces, bool):
        raise ControlError(400, f"\"faces\" is true or false (or \"on\"/\"off\"); got {faces!r}")
    from affectstream.stream.sources import classify_uri

    try:
        classify_uri(uri.strip())
    except ConfigError as error:
        raise ControlError(400, str(error)) from None
    return StreamRequest(name, uri.strip(), None if rate is None else float(rate), faces)


class Controller:
    """The rules of stream control over a running pipeline."""

    def __init__(self, target: ControlTarget, first_seq: Callable[[str], int] | None = None) -> None:
        self._target = target
        self._first_seq = first_seq or (lambda name: 0)  # the event log's next seq for a name

    def entries(self) -> list[StreamEntry]:
        outcomes = self._target.outcomes
        running = set(self._target.running_stream_ids())
        entries = []
        for name in self._target.stream_ids:
            outcome = outcomes.get(name)
            ended_as = outcome.outcome.value if outcome is not None and outcome.outcome is not None else None
            entries.append(StreamEntry(name=name, uri=self._target.stream_uri(name) or "", running=name in running,
                                       rate=self._target.stream_rate(name), ended=ended_as if name not in running else None,
                                       faces=self._target.stream_faces(name)))
        return entries

    def add(self, request: StreamRequest) -> StreamEntry:
        if request.name in self._target.running_stream_ids():
            raise ControlError(409, f"a stream named {request.name!r} is running: remove it first or pick another name")
        try:
            self._target.add_stream(request.name, request.uri, first_seq=self._first_seq(request.name),
                                    rate_hz=request.rate_hz, faces=request.faces)
        except PipelineError as error:
            raise ControlError(409, str(error)) from None
        return StreamEntry(name=request.name, uri=request.uri, running=True, rate=request.rate_hz,
                           faces=self._target.stream_faces(request.name))

    def remove(self, name: str) -> None:
        if name not in self._target.running_stream_ids():
            raise ControlError(404, f"no running stream {name!r}: the running ones are "
                                    f"{', '.join(self._target.running_stream_ids()) or 'none'}")
        try:
            self._target.remove_stream(name)
        except PipelineError as error:
            raise ControlError(404, str(error)) from None

    def on_message(self, request: dict[str, Any]) -> StreamControlReply:
        """A websocket control message, answered (never raised)."""
        action = str(request.get("type"))
        try:
            if action == "list_streams":
                return StreamControlReply(action=action, ok=True, streams=tuple(self.entries()))
            if action == "add_stream":
                entry = self.add(stream_request(request))
                return StreamControlReply(action=action, ok=True, stream=entry.name)
            name = request.get("name")
            if not isinstance(name, str):
                raise ControlError(400, 'remove_stream needs "name"')
            self.remove(name)
            return StreamControlReply(action=action, ok=True, stream=name)
        except ControlError as error:
            named = request.get("name")
            return StreamControlReply(action=action, ok=False, stream=named if isinstance(named, str) else None,
                                      error=str(error), status=error.status)


class ControlRoutes:
    """``/api/streams`` over a ``Controller`` (attached once the pipeline exists)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.controller: Controller | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        refused = self._admission.check_client(request.headers, request.query_string)
        if refused is not None:
            return _error(int(refused.status), refused.text.strip())
        if self.controller is None:
            return _error(503, "the pipeline is still starting; retry in a moment")
        tail = request.path[len("/api/streams"):].strip("/")
        try:
            if request.method == "GET" and not tail:
                return web.json_response({"streams": [e.to_wire() for e in self.controller.entries()]})
            if request.method == "POST" and not tail:
                try:
                    body = json.loads(await request.text())
                except (ValueError, UnicodeDecodeError):
                    raise ControlError(400, 'the body is not JSON: send {"name": "door", "uri": "rtsp://..."}') from None
                entry = self.controller.add(stream_request(body))
                return web.json_response(entry.to_wire(), status=201)
            if request.method == "DELETE" and tail:
                self.controller.remove(tail)
                return web.json_response({"name": tail, "stopping": True}, status=202)
        except ControlError as error:
            return _error(error.status, str(error))
        allow = "DELETE" if tail else "GET, POST"
        response = _error(405, f"{request.method} {request.path}: use {allow}")
        response.headers["Allow"] = allow
        return response


def _error(status: int, text: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": text}, status=status, headers={"Cache-Control": "no-store"})
