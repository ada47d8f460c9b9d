"""Video sources: files, webcams and network URLs, each giving ``VideoFrame``s with media timestamps.

``open_source(uri, stream_id, config)`` classifies the uri and returns a ``Source``; ``open()`` then
says what the source is (``SourceInfo``) or raises ``SourceOpenError`` with a typed outcome, and
``read()`` gives frames until ``None`` (the normal end of a file) or raises ``SourceReadError``.

- Files and URLs (rtsp, rtmp, http(s), hls, udp, srt) are read with PyAV (stream/pyav_source.py),
  so ``pts`` comes from the container's presentation timestamps (corrected like FFmpeg's best-effort timestamp where a
  container's pts are out of order). Bad packets are skipped and counted; at the end of a file
  ``source.damage`` says whether it was truncated or corrupt.
- Webcams (an index such as ``"0"`` or ``/dev/videoN``) are read with OpenCV's V4L2 backend
  (stream/webcam.py).

No source raises anything but ``SourceError`` from ``open()``/``read()``: odd media must give its
typed outcome, never crash the grabber thread.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from affectstream.errors import ConfigError, SourceOutcome
from affectstream.stream.frames import VideoFrame

# Streaming protocols: what they carry is live (it reconnects when it stops), whatever it shows.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "tcp", "udp")
# Request-response protocols: a file, a VOD playlist or a live HLS playlist; the opened media decides.
ON_DEMAND_SCHEMES = ("http", "https")
URL_SCHEMES = tuple(f"{scheme}://" for scheme in LIVE_SCHEMES + ON_DEMAND_SCHEMES)


class SourceKind(str, enum.Enum):
    FILE = "file"
    WEBCAM = "webcam"
    URL = "url"
    # A browser's camera, pushed over WebRTC (stream/push_source.py); never a uri's kind (classify_uri).
    BROWSER = "browser"


DEFAULT_FRAME_SIDE = 1920  # the long side decoded frames are reduced to (docs/architecture.md "Frame size")
MIN_FRAME_SIDE = 64  # the smallest reduction allowed: what the face detectors still read


@dataclass(frozen=True)
class SourceConfig:
    """How sources open, time out and reconnect (the grabber reads the reconnect settings)."""

    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 8.0
    reconnect_factor: float = 2.0
    max_reconnect_attempts: int | None = None  # None: a live source retries forever
    # A live source that has never connected gives up after this many failed opens (None: forever);
    # one that was up and went away keeps reconnecting (max_reconnect_attempts).
    open_retries: int | None = 5
    rtsp_transport: str = "tcp"  # "tcp" survives lossy networks and NAT; "udp" has less latency
    max_plausible_fps: float = 240.0  # a header claiming more than this is treated as absent
    live_probe_s: float = 1.0  # how much of a live stream FFmpeg may analyse before the first frame
    # Decoded frames are reduced so that their long side is at most this (None: full resolution); see
    # docs/architecture.md "Frame size": 1080p keeps a 32 px face (CropPolicy.min_size) findable.
    max_frame_side: int | None = DEFAULT_FRAME_SIDE

    def __post_init__(self) -> None:
        for name in ("open_timeout_s", "read_timeout_s", "reconnect_initial_s", "reconnect_max_s",
                     "max_plausible_fps", "live_probe_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"SourceConfig.{name} must be a positive number of seconds, got {value!r}")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ConfigError(
                f"SourceConfig.reconnect_max_s ({self.reconnect_max_s}) must be at least "
                f"reconnect_initial_s ({self.reconnect_initial_s})"
            )
        if not isinstance(self.reconnect_factor, (int, float)) or self.reconnect_factor < 1:
            raise ConfigError(f"SourceConfig.reconnect_factor must be >= 1, got {self.reconnect_factor!r}")
        for name in ("max_reconnect_attempts", "open_retries"):
            attempts = getattr(self, name)
            if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0):
                raise ConfigError(f"SourceConfig.{name} must be a non-negative integer or None (forever), "
                                  f"got {attempts!r}")
        side = self.max_frame_side
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side < MIN_FRAME_SIDE):
            raise ConfigError(f"SourceConfig.max_frame_side must be an integer of at least {MIN_FRAME_SIDE} pixels or None "
                              f"(full resolution), got {side!r}")
        if self.rtsp_transport not in ("tcp", "udp", "udp_multicast", "http", "https"):
            raise ConfigError(f"SourceConfig.rtsp_transport must be tcp, udp, udp_multicast, http or https, "
                              f"got {self.rtsp_transport!r}")

    def backoff_s(self, attempt: int) -> float:
        """Delay before reconnect ``attempt`` (1-based): exponential, capped at ``reconnect_max_s``."""
        delay = self.reconnect_initial_s * self.reconnect_factor ** max(0, attempt - 1)
        return float(min(delay, self.reconnect_max_s))


@dataclass(frozen=True)
class SourceInfo:
    """What an opened source is."""

    uri: str
    kind: SourceKind
    is_live: bool
    width: int
    height: int
    nominal_fps: float | None  # None when the header has none, 0, or an absurd rate
    duration_s: float | None  # None when unknown (live sources, some containers)
    codec: str

    def describe(self) -> str:
        fps = f"{self.nominal_fps:g} fps" if self.nominal_fps else "fps unknown"
        return f"{self.kind.value} {self.width}x{self.height} {self.codec}, {fps}"


class DamageKind(str, enum.Enum):
    """What a stretch of a file had wrong with it (``DamageSpan.kind``)."""

    DECODE_ERROR = "decode_error"  # packets that failed to demux or decode, skipped
    CORRUPT_FRAME = "corrupt_frame"  # frames decoded, but flagged corrupt (the decoder concealed damage)
    MISSING_PTS = "missing_pts"  # frames without any timestamp: given the previous one plus a frame
    REPAIRED_PTS = "repaired_pts"  # timestamps that did not advance (a stuck clock): respaced
    TRUNCATED = "truncated"  # the file stops before the end it states: from here on nothing was read


# The stretches kept per kind; further ones extend the last (memory stays flat on a damaged hour).
MAX_SPANS_PER_KIND = 32
# Damage this close (media s) to a stretch of the same kind extends it instead of starting another.
SPAN_MERGE_S = 1.0


@dataclass(frozen=True)
class DamageSpan:
    """One stretch of media time (s, the estimates' clock) where the reader met ``kind``, ``count`` times."""

    kind: DamageKind
    start: float
    end: float
    count: int


class DamageLog:
    """Where damage was: per kind, stretches of media time, nearby ones merged, at most
    ``MAX_SPANS_PER_KIND`` (the last one grows beyond that)."""

    def __init__(self) -> None:
        self._spans: dict[DamageKind, list[DamageSpan]] = {}

    def note(self, kind: DamageKind, ts: float | None, count: int = 1) -> None:
        at = float(ts) if ts is not None else 0.0
        spans = self._spans.setdefault(kind, [])
        if spans and (at - spans[-1].end <= SPAN_MERGE_S or len(spans) >= MAX_SPANS_PER_KIND):
            last = spans[-1]
            spans[-1] = DamageSpan(kind=kind, start=min(last.start, at), end=max(last.end, at), count=last.count + count)
        else:
            spans.append(DamageSpan(kind=kind, start=at, end=at, count=count))

    def spans(self) -> tuple[DamageSpan, ...]:
        """Every stretch, in media-time order."""
        return tuple(sorted((span for spans in self._spans.values() for span in spans),
                            key=lambda span: (span.start, span.kind.value)))


@dataclass(frozen=True)
class SourceDamage:
    """What went wrong while reading, for the report of ``affectstream analyze``."""

    frames: int = 0  # frames delivered
    decode_errors: int = 0  # packets that failed to demux or decode (skipped) or came flagged corrupt
    corrupt_frames: int = 0  # frames delivered, but flagged corrupt by the decoder (concealed damage)
    missing_pts: int = 0  # frames without a timestamp (given previous + 1/fps)
    repaired_pts: int = 0  # frames whose timestamp did not advance (a stuck clock; given previous + 1/fps)
    last_pts: float | None = None
    expected_duration: float | None = None  # what the container claims, s
    expected_frames: int | None = None  # what the container claims
    truncated: bool = False  # reading stopped well before the container's stated end
    spans: tuple[DamageSpan, ...] = ()  # where each kind of damage was, in media time

    @property
    def outcome(self) -> SourceOutcome | None:
        """TRUNCATED or CORRUPT when damage was seen, else None."""
        if self.truncated:
            return SourceOutcome.TRUNCATED
        if self.decode_errors or self.corrupt_frames:
            return SourceOutcome.CORRUPT
        return None

    def describe(self) -> str:
        parts = [f"{self.frames} frames read"]
        if self.last_pts is not None:
            parts.append(f"up to {self.last_pts:.3f} s")
        if self.expected_duration is not None:
            parts.append(f"of {self.expected_duration:.3f} s stated")
        if self.decode_errors:
            parts.append(f"{self.decode_errors} damaged packets")
        if self.corrupt_frames:
            parts.append(f"{self.corrupt_frames} frames decoded with errors")
        if self.missing_pts:
            parts.append(f"{self.missing_pts} frames without timestamp")
        if self.repaired_pts:
            parts.append(f"{self.repaired_pts} timestamps that did not advance respaced")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The wire form (the terminal event's ``damage``): plain values, spans as objects."""
        fields = asdict(self)
        fields["spans"] = [{"kind": span.kind.value, "start": round(span.start, 6), "end": round(span.end, 6),
                            "count": span.count} for span in self.spans]
        return fields

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> SourceDamage:
        """Back from ``as_dict`` (what the terminal event carried); unknown keys are left out."""
        known = {name: fields[name] for name in cls.__dataclass_fields__ if name in fields and name != "spans"}
        spans = tuple(DamageSpan(kind=DamageKind(span["kind"]), start=float(span["start"]), end=float(span["end"]),
                                 count=int(span["count"]))
                      for span in fields.get("spans") or () if span.get("kind") in _DAMAGE_KINDS)
        return cls(**known, spans=spans)


_DAMAGE_KINDS = {kind.value for kind in DamageKind}


class Source(Protocol):
    """One video input. Not thread-safe: one grabber thread opens, reads and closes it.

    ``is_live`` is ``is_live(uri)`` until ``open()``; after it, ``SourceInfo.is_live`` (the same rule
    with what the media says of itself) and ``is_live`` agree.
    """

    @property
    def stream_id(self) -> str: ...

    @property
    def uri(self) -> str: ...

    @property
    def is_live(self) -> bool: ...

    @property
    def damage(self) -> SourceDamage: ...

    def open(self) -> SourceInfo: ...

    def read(self) -> VideoFrame | None: ...

    def close(self) -> None: ...


def classify_uri(uri: str) -> SourceKind:
    """Webcam for a device index or /dev/videoN, URL for a network scheme, else a file."""
    stripped = uri.strip()
    if stripped.isdigit() or stripped.startswith("/dev/video"):
        return SourceKind.WEBCAM
    if stripped.lower().startswith(URL_SCHEMES) or (stripped.lower().endswith(".m3u8") and "://" in stripped):
        return SourceKind.URL
    return SourceKind.FILE


def is_live(uri: str, duration_s: float | None = None, opened: bool = False) -> bool:
    """The one rule for live versus file (ring policy, sampling rate, pacing, reconnecting).

    Media that ends is a file wherever it comes from: an http(s) URL with a finite duration once
    opened (an mp4 on a web server, a VOD HLS playlist with #EXT-X-ENDLIST) is read like a local file.
    Webcams and the streaming protocols (LIVE_SCHEMES) are live; an http(s) URL is live until it is
    opened (it may be a camera that is not up yet) and afterwards only if it has no duration.
    """
    kind = classify_uri(uri)
    if kind is SourceKind.WEBCAM:
        return True
    if kind is SourceKind.FILE:
        return False
    if is_on_demand(uri) and opened:
        return duration_s is None or not duration_s > 0
    return True


class SourceWrapper:
    """A source that delegates everything to ``inner``; subclasses override what they change."""

    def __init__(self, inner: Source) -> None:
        self._inner = inner

    @property
    def stream_id(self) -> str:
        return self._inner.stream_id

    @property
    def uri(self) -> str:
        return self._inner.uri

    @property
    def is_live(self) -> bool:
        return self._inner.is_live

    @property
    def damage(self) -> SourceDamage:
        return self._inner.damage

    def open(self) -> SourceInfo:
        return self._inner.open()

    def read(self) -> VideoFrame | None:
        return self._inner.read()

    def close(self) -> None:
        self._inner.close()


def is_on_demand(uri: str) -> bool:
    """An http(s) URL: each request gets an answer about that address (a 404 or a web page stays one),
    unlike a camera or streaming server, which may refuse its stream while it restarts."""
    return uri.strip().lower().partition("://")[0] in ON_DEMAND_SCHEMES


def open_source(uri: str, stream_id: str, config: SourceConfig) -> Source:
    """The source for ``uri`` (not opened yet: call ``open()``)."""
    uri = uri.strip()
    kind = classify_uri(uri)
    # Imported here: the readers import this module's types.
    if kind is SourceKind.WEBCAM:
        from affectstream.stream.webcam import WebcamSource

        return WebcamSource(uri, stream_id, config)
    from affectstream.stream.pyav_source import PyAVSource

    if kind is SourceKind.FILE and uri.startswith("file://"):
        uri = uri[len("file://"):]
    return PyAVSource(uri, stream_id, config, kind)
