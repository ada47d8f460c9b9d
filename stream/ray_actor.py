"""`run --ray`: the actor that reads, samples and analyses some of a run's streams, on any node.

A ``StreamWorker`` (a Ray actor through ``actor_class``) runs the in-process ``Pipeline`` over its
streams, with the models replaced by calls to the cluster's deployment (stream/ray_models.py): per-stream
state (sampling, detection schedule, the temporal head, the sessions and their seqs) lives here, with
the stream. Its records wait in an ``Outbox`` until the run's driver has taken them: ``drain(after)``
hands over those after the seqs the driver already has and forgets those it has (idempotent, so a reply
lost with a dying node is asked for again from a new actor's numbering, never skipped).

A stream restarted here after another actor died (``StreamSpec.resume_ts``) opens its file at the media
time where the driver's last estimate of it was; a live source simply opens again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from affectstream.engine.face_engine import FaceModel
from affectstream.engine.interfaces import TemporalHead
from affectstream.errors import PipelineError
from affectstream.stream.messages import Record, StreamRecord
from affectstream.stream.pipeline import Pipeline, PipelineConfig, StreamOutcome
from affectstream.stream.ray_models import EncoderInfo, RemoteEncoder
from affectstream.stream.sources import Source, SourceConfig, SourceInfo, open_source

log = logging.getLogger(__name__)

MAX_DRAIN = 2000  # records per drain reply: the driver asks again at once when there were more


@dataclass(frozen=True)
class StreamKit:
    """What every stream actor of a run is built from (sent once, by the driver)."""

    config: PipelineConfig
    labels: tuple[str, ...]
    frame_labels: tuple[str, ...]
    head: TemporalHead | None  # a fresh head: its state is per stream, so each actor has its own copy
    encoder: EncoderInfo | None  # None: no whole-frame model in this run
    faces: FaceModel | None  # a RemoteFaceModel: the face stage's settings, its models on the deployment
    models: Any  # the deployment's handle


@dataclass(frozen=True)
class StreamSpec:
    """One stream to run on an actor."""

    name: str
    uri: str
    first_seq: int = 0
    rate_hz: float | None = None
    faces: bool | None = None
    resume_ts: float | None = None  # restarted: a file opens here (media seconds)


@dataclass(frozen=True)
class DrainReply:
    records: tuple[StreamRecord, ...]
    outcomes: Mapping[str, StreamOutcome]
    more: bool  # records were left for the next call
    node: str


class Outbox:
    """The pipeline's sink on an actor: records kept, in order, until the driver has them."""

    def __init__(self) -> None:
        self._records: list[StreamRecord] = []
        self._changed = threading.Condition()

    def write(self, record: Record) -> None:
        if not isinstance(record, StreamRecord):
            raise PipelineError(f"a stream actor sends stream records, not {type(record).__name__}")
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()

    def take(self, after: Mapping[str, int], wait_s: float) -> tuple[list[StreamRecord], bool]:
        """The records past ``after`` (the driver's last seq per stream), waiting up to ``wait_s`` for one;
        those at or before it are forgotten."""
        with self._changed:
            self._forget(after)
            if not self._records and wait_s > 0:
                self._changed.wait(wait_s)
                self._forget(after)
            return self._records[:MAX_DRAIN], len(self._records) > MAX_DRAIN

    def _forget(self, after: Mapping[str, int]) -> None:
        self._records = [r for r in self._records if r.seq > after.get(r.stream, -1)]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Resumed:
    """A file source that starts at ``ts`` (a stream restarted from where its estimates had got to)."""

    def __init__(self, source: Source, ts: float) -> None:
        self._source = source
        self._ts = ts
        self._skip_until: float | None = None  # after the seek: frames up to ts were analysed already

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def open(self) -> SourceInfo:
        info = self._source.open()
        seek = getattr(self._source, "seek", None)
        if not info.is_live and seek is not None and self._ts > 0:
            seek(self._ts)  # to the keyframe at or before it
            self._skip_until = self._ts
        return info

    def read(self) -> Any:
        while True:
            frame = self._source.read()
            if frame is None or self._skip_until is None or frame.pts > self._skip_until:
                return frame

    def close(self) -> None:
        self._source.close()


@dataclass
class StreamWorker:
    """The actor's body (plain Python: tests may run it in a thread)."""

    kit: StreamKit
    outbox: Outbox = field(default_factory=Outbox)
    resume_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kit = self.kit
        encoder = RemoteEncoder(kit.models, kit.encoder) if kit.encoder is not None else None
        # kit.faces is a RemoteFaceModel; this actor's copy of it has its own detection schedule.
        self.pipeline = Pipeline([], encoder, kit.head, self.outbox, kit.labels,
                                 kit.config, source_factory=self._open, faces=kit.faces, allow_empty=True,
                                 frame_labels=kit.frame_labels)
        self.pipeline.start()

    def _open(self, uri: str, stream_id: str, config: SourceConfig) -> Source:
        source = open_source(uri, stream_id, config)
        ts = self.resume_at.pop(stream_id, None)
        return source if ts is None else _Resumed(source, ts)  # type: ignore[return-value]

    def add(self, spec: StreamSpec) -> None:
        if spec.resume_ts is not None:
            self.resume_at[spec.name] = spec.resume_ts
        self.pipeline.add_stream(spec.name, spec.uri, first_seq=spec.first_seq, rate_hz=spec.rate_hz, faces=spec.faces,
                                 start_ts=spec.resume_ts or 0.0)

    def remove(self, name: str) -> None:
        self.pipeline.remove_stream(name)

    def drain(self, after: Mapping[str, int], wait_s: float = 0.5) -> DrainReply:
        records, more = self.outbox.take(after, wait_s)
        return DrainReply(tuple(records), self.pipeline.outcomes, more, node_id())

    def stop(self, after: Mapping[str, int]) -> DrainReply:
        """Stop every stream (each ends with its summaries and ``stream_ended``); what is left to take."""
        self.pipeline.stop()
        records, more = self.outbox.take(after, 0)
        return DrainReply(tuple(records), self.pipeline.outcomes, more, node_id())


def node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # not in Ray (a test driving the worker directly)
        return "local"


def actor_class(cpus: float) -> Any:
    """``StreamWorker`` as a Ray actor class: threaded, so that a waiting ``drain`` does not hold up an
    ``add`` or ``remove``."""
    import ray

    if cpus < 0:
        raise PipelineError(f"--ray-stream-cpus is >= 0, got {cpus:g}")
    remote: Any = ray.remote  # its overloads do not cover a class with options
    return remote(num_cpus=cpus, max_concurrency=8, max_restarts=0)(StreamWorker)
