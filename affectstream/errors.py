"""Every error affectstream raises on purpose, in one tree.

::

    AffectstreamError                 base: catch this to catch everything below
    ├── ConfigError                   a setting or CLI argument is invalid (message says which and why)
    ├── MissingExtraError             an optional dependency is absent: ``pip install affectstream[x]``
    ├── ModelError                    the model cannot be built or loaded
    │   ├── WeightsUnavailableError   weights cannot be fetched (offline): pass a local file instead
    │   ├── BundleError               a model bundle is missing files, has a bad manifest or wrong hashes
    │   └── ModelFilesMissingError    face model files are not in the model cache and cannot be fetched here
    ├── SourceError                   a video source cannot give frames; ``outcome`` says what kind
    │   ├── SourceOpenError           cannot be opened at all (missing, empty, not a video, no video track)
    │   └── SourceReadError           opened, then failed mid-stream (truncated, corrupt, connection lost)
    └── PipelineError                 the pipeline was used wrongly (e.g. started twice)

A failing source never raises out of the pipeline: it becomes a ``stream_error`` event for that stream
and the other streams go on. These exceptions cross API boundaries (``open_source``, ``load_bundle``,
``Encoder.from_config``) so that callers can react to the kind of failure.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """The exit status of every command (docs/cli.md, "Exit statuses"): one list, used everywhere."""

    OK = 0  # done: every source read to its end (or a live one stopped on request)
    BUG = 1  # an unexpected internal error: a bug, please report it with the log
    USAGE = 2  # usage or configuration: bad arguments, unknown model, bad bundle, port in use, refused
    PARTIAL = 3  # some input was damaged or failed; what could be read was analysed and written
    NOTHING = 4  # nothing could be analysed or received: missing, empty, not a video, unreachable
    INTERRUPTED = 130  # stopped by Ctrl-C before the end
    TERMINATED = 143  # stopped by SIGTERM before the end


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, docker stop): handled like Ctrl-C by every command, exit status 143."""


def interrupted_status(interrupt: KeyboardInterrupt) -> ExitStatus:
    return ExitStatus.TERMINATED if isinstance(interrupt, Terminated) else ExitStatus.INTERRUPTED


class AffectstreamError(Exception):
    """Base class of every error raised on purpose by affectstream."""


class ConfigError(AffectstreamError, ValueError):
    """A setting or CLI argument is invalid."""


class MissingExtraError(AffectstreamError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed: "
            f"run `pip install affectstream[{extra}]`"
        )
        self.package = package
        self.extra = extra


class ModelError(AffectstreamError):
    """The model cannot be built or loaded."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights cannot be fetched (no network or no such tag)."""


class BundleError(ModelError):
    """A model bundle directory is incomplete or inconsistent."""


class ModelFilesMissingError(ModelError):
    """Model files (face detector, expression classifier) are not in the model cache, or the package
    registry they come from is out of reach; the message gives the commands that get them."""


class SourceOutcome(str, enum.Enum):
    """Typed outcome of a source that stopped giving frames; carried by errors and events."""

    ENDED = "ended"  # a file reached its end normally
    MISSING = "missing"  # the path does not exist, or the server says the address does not (404, 410)
    DENIED = "denied"  # the server refuses access (401, 403): wrong or missing credentials
    EMPTY = "empty"  # the file has 0 bytes
    NOT_VIDEO = "not_video"  # exists but no decoder understands it
    NO_VIDEO_TRACK = "no_video_track"  # a media file without a video stream (e.g. audio-only)
    TRUNCATED = "truncated"  # decoding stopped before the container's stated end
    CORRUPT = "corrupt"  # frames failed to decode mid-stream
    OPEN_TIMEOUT = "open_timeout"  # a live source did not open in time
    READ_TIMEOUT = "read_timeout"  # a live source stopped delivering frames
    CONNECTION_LOST = "connection_lost"  # a live source failed after reconnect attempts ran out
    DEVICE_UNAVAILABLE = "device_unavailable"  # a webcam that exists but cannot be opened (busy, permissions)
    NO_SUCH_DEVICE = "no_such_device"  # a webcam index/path whose device node does not exist: fails at once
    STOPPED = "stopped"  # stopped on request (Ctrl-C, API)


class SourceError(AffectstreamError):
    """A video source cannot give frames."""

    def __init__(self, message: str, outcome: SourceOutcome, uri: str = "") -> None:
        super().__init__(message)
        self.outcome = outcome
        self.uri = uri


class SourceOpenError(SourceError):
    """A source cannot be opened at all."""


class SourceReadError(SourceError):
    """A source opened, then failed mid-stream."""


class PipelineError(AffectstreamError):
    """The pipeline was used wrongly."""
