"""WebRTC with aiortc: each stream's video to browsers, and a browser's camera into the pipeline.

Viewers (``POST /webrtc/NAME``, stream/video_routes.py): the page offers a recvonly video transceiver
and a data channel named ``clock``; the answer sends VP8 that was encoded once for all viewers of the
stream (stream/video_feed.py): the track hands aiortc ``av.Packet``s, which its sender only packetizes
(``Vp8Encoder.pack``), so a viewer costs RTP packing, not an encode. What is queued for a peer is one
cursor on the stream's newest packet: a peer that stalls skips to the next keyframe, one that vanishes
is closed when ICE says so, and neither touches anybody else.

Media time in the browser: aiortc adds a random origin to every RTP timestamp, so the packets' own
90 kHz media time (``EncodedVideo.pts``) reaches the page shifted. The track learns the origin once
the first packet went out (the sender's last RTP timestamp minus that packet's pts) and tells the page
on the ``clock`` channel, with the sizes it needs to scale boxes and the frame's wall time (for the
video's delay behind its source). The page then reads each shown frame's media time from
``requestVideoFrameCallback``'s ``rtpTimestamp`` and draws the estimate of that time, never a newer one.
Reading the origin uses one private attribute of aiortc's sender (pinned to aiortc 1.x in pyproject;
tests/test_webrtc.py checks it end to end on a real loopback connection); without it the page gets no
clock and draws the newest estimate instead.

Capture (``POST /capture/NAME``): the page sends its camera; each decoded frame is pushed into a
``PushSource`` (stream/push_source.py: drop-oldest, never blocks) that the pipeline reads as stream
NAME; the peer closing (the tab closed) ends the stream, a failed connection fails it.

Everything here runs on the server's event loop; aiortc decodes and encodes in its own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from affectstream.errors import MissingExtraError
from affectstream.stream.frames import fit_within
from affectstream.stream.video_feed import CLOCK_RATE, EncodedVideo, PacketViewer, VideoHub, to_av_packet

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpSender

    from affectstream.stream.push_source import PushSource

log = logging.getLogger(__name__)

RTP_WRAP = 1 << 32
DEFAULT_MAX_PEERS = 32
CONNECT_TIMEOUT_S = 30.0  # an answered peer not connected by then (the page went away) is closed
STAMP_BITS = 48  # the latency benchmark's time stamp: 48 squares of 8x8 px, top-left, most significant first
STAMP_BLOCK = 8


class SignalingError(Exception):
    """An offer that cannot be answered: ``status`` is the HTTP status the route answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def require_aiortc(feature: str) -> None:
    try:
        import aiortc  # noqa: F401
    except ImportError as error:
        raise MissingExtraError("aiortc", "video", feature) from error


def rtp_origin(sent_rtp_timestamp: int, sent_pts: int) -> int:
    """The sender's random origin: its last RTP timestamp minus the 90 kHz pts of the packet it was."""
    return (sent_rtp_timestamp - sent_pts) % RTP_WRAP


def read_stamp(image: np.ndarray) -> int | None:
    """The benchmark's time stamp (ms since epoch) painted in the top-left row, or None if the picture
    is too small or the squares are not clearly black or white (VP8 blurs their edges, not their middles)."""
    if image.ndim != 3 or image.shape[0] < STAMP_BLOCK or image.shape[1] < STAMP_BITS * STAMP_BLOCK:
        return None
    middle = STAMP_BLOCK // 2
    value = 0
    for bit in range(STAMP_BITS):
        x = bit * STAMP_BLOCK + middle
        level = float(image[middle - 2:middle + 2, x - 2:x + 2].mean())
        if 64 < level < 192:
            return None
        value = (value << 1) | int(level >= 128)
    return value


@dataclass
class _Peer:
    id: str
    kind: str  # "viewer" or "capture"
    stream: str
    connection: RTCPeerConnection
    created: float
    tasks: list[asyncio.Task[Any]]
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run once, at close


@functools.cache
def _packet_track_class() -> type:
    """The MediaStreamTrack aiortc sends from (made at first use: aiortc is an optional extra)."""
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError

    class PacketTrack(MediaStreamTrack):
        """The stream's shared VP8 packets, through this viewer's cursor."""

        kind = "video"

        def __init__(self, viewer: PacketViewer, on_clock: Callable[[EncodedVideo, int], None]) -> None:
            super().__init__()
            self._viewer = viewer
            self._on_clock = on_clock
            self.sender: RTCRtpSender | None = None
            self._last: EncodedVideo | None = None
            self._origin: int | None = None

        async def recv(self) -> Any:
            self._learn_origin()
            encoded = await self._viewer.next()
            if encoded is None:  # the stream ended or the viewer was closed
                self.stop()
                raise MediaStreamError
            if encoded.keyframe and self._origin is not None:
                self._on_clock(encoded, self._origin)
            self._last = encoded
            return to_av_packet(encoded)

        def _learn_origin(self) -> None:
            # recv() is called again only after the previous packet was sent, so the sender's last
            # RTP timestamp is that packet's.
            if self._origin is not None or self._last is None or self.sender is None:
                return
            sent = getattr(self.sender, "_RTCRtpSender__rtp_timestamp", None)
            if isinstance(sent, int):
                self._origin = rtp_origin(sent, self._last.pts)
                self._on_clock(self._last, self._origin)

        def stop(self) -> None:
            self._viewer.close()
            super().stop()

    return PacketTrack


class WebRtcPeers:
    """All peer connections of one server: viewers of streams and browser cameras, at most ``max_peers``."""

    def __init__(self, hub: VideoHub, max_peers: int = DEFAULT_MAX_PEERS,
                 max_frame_side: int | None = 1920) -> None:
        self._hub = hub
        self.max_peers = max_peers
        self._max_frame_side = max_frame_side
        self._peers: dict[str, _Peer] = {}
        self._ids = itertools.count(1)
        self.connect_timeout_s = CONNECT_TIMEOUT_S

    @property
    def count(self) -> int:
        return len(self._peers)

    def counts(self) -> dict[str, int]:
        kinds = [peer.kind for peer in self._peers.values()]
        return {"viewers": kinds.count("viewer"), "captures": kinds.count("capture")}

    # -- viewers ------------------------------------------------------------------------------------

    async def answer_viewer(self, stream: str, offer: dict[str, Any]) -> dict[str, str]:
        """The answer to a page's offer to watch ``stream`` (its video must exist in the hub)."""
        video = self._hub.get(stream, create=False)
        if video is None:
            raise SignalingError(404, f"no video for stream {stream!r} (yet): is it running?")
        peer = await self._open("viewer", stream, offer)
        viewer = video.watch_packets()
        peer.cleanups.append(viewer.close)  # also when it never connected (no RTP loop to stop the track)
        clock: list[RTCDataChannel] = []
        pending: list[str] = []

        def send_clock(encoded: EncodedVideo, origin: int) -> None:
            text = json.dumps({"type": "clock", "stream": stream, "rtp_origin": origin, "clock_rate": CLOCK_RATE,
                               "source_size": list(encoded.source_size), "video_size": list(encoded.size),
                               "ts": encoded.ts, "wall": encoded.wall_ms})
            if clock and clock[0].readyState == "open":
                clock[0].send(text)
            else:
                pending[:] = [text]  # the newest is all the page needs

        @peer.connection.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            if channel.label != "clock":
                return
            clock[:] = [channel]

            @channel.on("open")
            def flush() -> None:
                for text in pending:
                    channel.send(text)
                pending.clear()

            if channel.readyState == "open":
                flush()

        track = _packet_track_class()(viewer, send_clock)
        try:
            transceiver = next((t for t in peer.connection.getTransceivers() if t.kind == "video"), None)
            if transceiver is None:
                raise SignalingError(400, "the offer has no video to receive: add a recvonly video transceiver")
            track.sender = sender = peer.connection.addTrack(track)
            # aiortc's sender honours a viewer's PLI/FIR only for frames it encodes itself; these are
            # encoded once for all, so a lost picture asks the stream's encoder (rate-limited there).
            sender._send_keyframe = video.request_keyframe  # type: ignore[method-assign]
            _prefer_vp8(transceiver)
            answer = await self._answer(peer)
        except BaseException:
            await self.close_peer(peer.id)
            raise
        video.request_keyframe()  # the new viewer starts decoding at once, not at the next periodic one
        return answer

    # -- browser cameras ----------------------------------------------------------------------------

    async def answer_capture(self, name: str, offer: dict[str, Any], source: PushSource, stamped: bool) -> dict[str, str]:
        """The answer to a capture page's offer; its camera's frames go into ``source``."""
        peer = await self._open("capture", name, offer)
        # setRemoteDescription made a receiving track for each video the browser sends.
        track = next((t.receiver.track for t in peer.connection.getTransceivers()
                      if t.kind == "video" and t.receiver.track is not None), None)
        if track is None:
            await self.close_peer(peer.id)
            raise SignalingError(400, "the offer sends no video: add the camera's track (sendonly)")

        @peer.connection.on("connectionstatechange")
        def on_state() -> None:
            state = peer.connection.connectionState
            if state == "failed":
                source.fail("the browser's connection failed")
            elif state == "closed":
                source.end("the browser closed the capture page")

        try:
            answer = await self._answer(peer)
        except BaseException:
            await self.close_peer(peer.id)
            raise
        peer.tasks.append(asyncio.create_task(self._pump_capture(peer, track, source, stamped)))
        return answer

    async def _pump_capture(self, peer: _Peer, track: Any, source: PushSource, stamped: bool) -> None:
        from aiortc.mediastreams import MediaStreamError

        clock = _RtpClock()
        try:
            while not source.finished:
                frame = await track.recv()
                image = frame.to_ndarray(format="rgb24")
                ts = clock.seconds(int(frame.pts or 0))
                if stamped:
                    stamp = read_stamp(image)
                    if stamp is not None and abs(stamp / 1000 - time.time()) < 3600:
                        ts = stamp / 1000
                image, size = _within(image, self._max_frame_side)
                source.push(image, ts, size)
        except MediaStreamError:
            source.end("the browser closed the capture page")
        except Exception:
            log.exception("capture %s: reading the browser's video failed", peer.stream)
            source.fail("the browser's video could not be decoded")
        finally:
            if not source.finished:
                source.end("the browser closed the capture page")
            await self.close_peer(peer.id)

    # -- shared ---------------------------------------------------------------------------------------

    async def _open(self, kind: str, stream: str, offer: dict[str, Any]) -> _Peer:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        sdp, offer_type = offer.get("sdp"), offer.get("type", "offer")
        if not isinstance(sdp, str) or not sdp.strip() or offer_type != "offer":
            raise SignalingError(400, 'send JSON {"sdp": "...", "type": "offer"}')
        if len(self._peers) >= self.max_peers:
            raise SignalingError(503, f"the cap of {self.max_peers} WebRTC peers is reached; retry later")
        # No STUN or TURN: the server answers with its own addresses (a browser on the LAN or this host).
        connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer = _Peer(f"p{next(self._ids)}", kind, stream, connection, time.monotonic(), [])
        self._peers[peer.id] = peer

        @connection.on("connectionstatechange")
        async def on_state() -> None:
            if connection.connectionState in ("failed", "closed"):
                await self.close_peer(peer.id)

        try:
            await connection.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as error:  # aiortc raises ValueError and others for SDP it cannot read
            await self.close_peer(peer.id)
            raise SignalingError(400, f"the offer's SDP cannot be used: {str(error)[:200]}") from None
        log.debug("%s %s for %s opened (%d peers)", kind, peer.id, stream, len(self._peers))
        peer.tasks.append(asyncio.create_task(self._close_unless_connected(peer)))
        return peer

    async def _close_unless_connected(self, peer: _Peer) -> None:
        # A page that posted its offer and went away never connects; ICE would give up on its own only
        # after its checks time out. Once connected, ICE consent (every 5 s) notices a peer that vanished.
        await asyncio.sleep(self.connect_timeout_s)
        if peer.connection.connectionState != "connected":
            log.info("%s %s for %s did not connect within %g s: closed", peer.kind, peer.id, peer.stream,
                     self.connect_timeout_s)
            await self.close_peer(peer.id)

    async def _answer(self, peer: _Peer) -> dict[str, str]:
        try:
            answer = await peer.connection.createAnswer()
            await peer.connection.setLocalDescription(answer)
        except SignalingError:
            raise
        except Exception as error:
            raise SignalingError(400, f"no answer to this offer: {str(error)[:200]}") from None
        local = peer.connection.localDescription
        return {"sdp": local.sdp, "type": local.type, "peer": peer.id}

    async def close_peer(self, peer_id: str) -> None:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        for task in peer.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for cleanup in peer.cleanups:
            cleanup()
        with contextlib.suppress(Exception):
            await peer.connection.close()
        log.debug("%s %s for %s closed (%d peers)", peer.kind, peer.id, peer.stream, len(self._peers))

    async def close(self) -> None:
        await asyncio.gather(*(self.close_peer(peer_id) for peer_id in list(self._peers)), return_exceptions=True)


class _RtpClock:
    """A browser's RTP timestamps (90 kHz, wrapping at 2^32, random start) as seconds from its first frame."""

    def __init__(self) -> None:
        self._first: int | None = None
        self._last = 0
        self._unwrapped = 0

    def seconds(self, rtp: int) -> float:
        if self._first is None:
            self._first = self._last = rtp
        step = (rtp - self._last) % RTP_WRAP
        if step >= RTP_WRAP // 2:
            step -= RTP_WRAP  # a reordered (older) frame, not 13 hours later
        self._unwrapped += step
        self._last = rtp
        return max(0.0, self._unwrapped / CLOCK_RATE)


def _within(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A browser frame reduced like a decoded one (``SourceConfig.max_frame_side``), with its own size."""
    height, width = image.shape[:2]
    size = fit_within(width, height, max_side)
    if size == (width, height):
        return image, None
    import cv2

    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), (width, height)


def _prefer_vp8(transceiver: Any) -> None:
    from aiortc import RTCRtpSender

    codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]
    try:
        transceiver.setCodecPreferences(codecs)
    except Exception as error:
        raise SignalingError(400, f"the browser offers no VP8 video, which this server sends ({error})") from None
