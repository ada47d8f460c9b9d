"""The video routes of the server: WebRTC offers, MJPEG, and browser cameras (docs/protocol.md "Video").

- ``POST /webrtc/NAME`` JSON ``{"sdp", "type": "offer"}`` -> ``{"sdp", "type": "answer", "peer"}``:
  watch stream NAME over WebRTC (stream/webrtc.py).
- ``GET /video/NAME.mjpg``: the same video as MJPEG (``multipart/x-mixed-replace``), for when WebRTC
  cannot connect and for any program that shows an ``<img>``.
- ``POST /capture/NAME`` JSON ``{"sdp", "type": "offer", "stamp": false}``: the browser's camera
  becomes stream NAME, when the run allows it (``--allow-browser-sources``).

Every route applies the websocket's rules (stream/admission.py: Host, token, Origin) and answers
errors as JSON ``{"error": text}``. One ``VideoService`` per run: it is mounted on the server before
the server starts and attached to the pipeline once that exists (a capture needs one).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from affectstream.errors import MissingExtraError, PipelineError
from affectstream.stream.admission import Admission
from affectstream.stream.control import NAME_RULE, STREAM_NAME
from affectstream.stream.messages import Event, EventKind, StreamRecord
from affectstream.stream.video_feed import VideoHub, VideoSettings
from affectstream.stream.webrtc import DEFAULT_MAX_PEERS, SignalingError, WebRtcPeers, require_aiortc

if TYPE_CHECKING:
    from aiohttp import web

    from affectstream.stream.pipeline import Pipeline
    from affectstream.stream.server import StreamServer
    from affectstream.stream.sources import SourceConfig

log = logging.getLogger(__name__)

MJPEG_BOUNDARY = "frame"
MJPEG_WRITE_TIMEOUT_S = 10.0  # a viewer that takes no bytes for this long is closed
JSON_HEADERS = {"Cache-Control": "no-store"}


class VideoService:
    """The hub of every stream's video, the WebRTC peers, and the routes that reach them."""

    def __init__(self, settings: VideoSettings | None = None, max_peers: int = DEFAULT_MAX_PEERS,
                 allow_browser_sources: bool = False, source_config: SourceConfig | None = None) -> None:
        from affectstream.stream.sources import SourceConfig

        self.hub = VideoHub(settings)
        self.source_config = source_config or SourceConfig()
        self.peers = WebRtcPeers(self.hub, max_peers, self.source_config.max_frame_side)
        self.allow_browser_sources = allow_browser_sources
        self._admission: Admission | None = None
        self._pipeline: Pipeline | None = None
        self._first_seq: Callable[[str], int] = lambda name: 0
        self._mjpeg_viewers = 0

    # -- wiring -----------------------------------------------------------------------------------------

    def mount(self, server: StreamServer) -> None:
        self._admission = server.admission
        self._first_seq = server.next_seq
        server.mount("/webrtc/", self._webrtc, on_start=self.hub.bind, on_stop=self.peers.close)
        server.mount("/video/", self._mjpeg)
        server.mount("/capture/", self._capture)

    def attach(self, pipeline: Pipeline) -> None:
        """The pipeline that browser cameras join and whose streams the routes know."""
        self._pipeline = pipeline

    def on_decoded(self, frame: Any, sampled: bool, live: bool) -> None:
        self.hub.offer(frame)

    def on_record(self, record: StreamRecord) -> None:
        if isinstance(record, Event) and record.kind is EventKind.STREAM_ENDED:
            self.hub.end(record.stream)

    def close(self) -> None:
        self.hub.close()

    # -- routes -------------------------------------------------------------------------------------------

    async def _webrtc(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request, "POST")
        if refused is not None:
            return refused
        stream = request.path[len("/webrtc/"):]
        if not self._known(stream):
            return _error(404, f"no stream {stream!r}: the streams are {', '.join(self._streams()) or 'none yet'}")
        self.hub.get(stream)  # its video exists from now on, frames or not
        return await self._negotiate(request, lambda offer: self.peers.answer_viewer(stream, offer))

    async def _capture(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request, "POST")
        if refused is not None:
            return refused
        if not self.allow_browser_sources:
            return _error(403, "this run takes no browser cameras: start it with --allow-browser-sources")
        name = request.path[len("/capture/"):]
        if not STREAM_NAME.fullmatch(name):
            return _error(400, NAME_RULE)
        pipeline = self._pipeline
        if pipeline is None:
            return _error(503, "the pipeline is still starting; retry in a moment")
        if name in pipeline.running_stream_ids():
            return _error(409, f"a stream named {name!r} is running: pick another name")

        async def answer(offer: dict[str, Any]) -> dict[str, str]:
            from affectstream.stream.push_source import PushSource

            source = PushSource(name, self.source_config, uri=f"browser:{name}")
            try:
                reply = await self.peers.answer_capture(name, offer, source, bool(offer.get("stamp")))
            except BaseException:
                source.end("the offer was refused")
                raise
            try:
                pipeline.add_stream(name, f"browser:{name}", source=source, first_seq=self._first_seq(name))
            except PipelineError as error:  # another page took the name meanwhile, or the run is ending
                source.end("the stream could not be added")
                await self.peers.close_peer(reply["peer"])
                raise SignalingError(409, str(error)) from None
            log.info("browser camera %r joined as a stream", name)
            return reply

        return await self._negotiate(request, answer)

    async def _mjpeg(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        refused = self._refused(request, "GET")
        if refused is not None:
            return refused
        name = request.path[len("/video/"):]
        if not name.endswith(".mjpg") or not self._known(name[:-5]):
            return _error(404, f"no such video: the streams are at /video/NAME.mjpg for {', '.join(self._streams())}")
        video = self.hub.get(name[:-5])
        if video is None:
            return _error(503, "the server is shutting down")
        if self._mjpeg_viewers >= self.peers.max_peers:
            return _error(503, f"the cap of {self.peers.max_peers} MJPEG viewers is reached; retry later")
        response = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}",
            "Cache-Control": "no-cache, no-store", "X-Content-Type-Options": "nosniff"})
        self._mjpeg_viewers += 1
        try:
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            with video.watch_jpegs() as viewer:
                async for jpeg in viewer:
                    head = (f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg.data)}\r\n"
                            f"X-Media-Time: {jpeg.ts:.6f}\r\n\r\n").encode()
                    await asyncio.wait_for(response.write(head + jpeg.data + b"\r\n"), MJPEG_WRITE_TIMEOUT_S)
        except (ConnectionError, RuntimeError, TimeoutError):
            pass  # the viewer went away or stopped reading: only its own response ends
        finally:
            self._mjpeg_viewers -= 1
        return response

    # -- helpers ----------------------------------------------------------------------------------------

    def _refused(self, request: web.Request, method: str) -> web.StreamResponse | None:
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            response = _error(405, f"{request.method} is not supported here; use {method}")
            response.headers["Allow"] = method if method != "GET" else "GET, HEAD"
            return response
        assert self._admission is not None, "mount() before serving"
        refused = self._admission.check_client(request.headers, request.query_string)
        return None if refused is None else _error(int(refused.status), refused.text.strip())

    async def _negotiate(self, request: web.Request, answer: Callable[[dict[str, Any]], Any]) -> web.StreamResponse:
        from aiohttp import web

        try:
            require_aiortc("WebRTC video")
        except MissingExtraError as error:
            return _error(501, str(error))
        try:
            offer = json.loads(await request.text())
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'the body is not JSON: send {"sdp": "...", "type": "offer"}')
        if not isinstance(offer, dict):
            return _error(400, 'send a JSON object: {"sdp": "...", "type": "offer"}')
        try:
            reply = await answer(offer)
        except SignalingError as error:
            return _error(error.status, str(error))
        return web.json_response(reply, headers=JSON_HEADERS)

    def _streams(self) -> list[str]:
        return self._pipeline.stream_ids if self._pipeline is not None else self.hub.stream_ids()

    def _known(self, stream: str) -> bool:
        return stream in self._streams()


def _error(status: int, text: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": text}, status=status, headers=JSON_HEADERS)
