"""The runtime: sources → ring buffers → samplers → batcher → encoder → head → sessions → sinks.

Threads, one role each (every one is a thin adapter around a sans-I/O part):

- a grabber per source (stream/grabber.py) keeps reading into that source's ring buffer;
- a pump per source takes frames and lifecycle events from the ring, keeps the sampled frames
  (MediaTimeSampler), bounds how many frames of the stream are in flight, and hands both to the
  shared batch queue in the order it read them;
- one inference worker takes batches across streams, encodes their frames in one call, and advances
  the temporal head one step per frame, streams batched together (``split_waves``);
- one emitter turns results into protocol records through each stream's StreamSession and writes
  them to the sinks, and emits periodic `stats`.

Source lifecycle events travel in band: the grabber puts them into the ring behind the frames read
before them, and from there they ride the batch queue behind those frames. So a stream's messages
keep their causal order (stream_started, estimates, reconnecting, estimates, stream_ended) by
construction, and the head is reset exactly between the frames of two connections.

Whether a stream is live is what its opened source says (``SourceInfo.is_live``, one rule in
stream/sources.py): it arrives with the RUNNING event and sets the sampling rate and whether frames
may be dropped when the encoder is behind.

Streams may be added while the pipeline runs (``add_stream``: a browser's camera that connected). The
table of streams is then shared with the caller's thread: it is replaced, never changed, once the
pipeline runs (a thread iterating it keeps the one it took), and ``_lock`` orders additions against
``start``, ``stop``, the emitter's decision that the run is over, and a finished stream's last stats.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from affectstream.engine.face_crops import primary_crop
from affectstream.engine.face_engine import FaceModel, FaceObservation
from affectstream.engine.interfaces import ImageEncoder, TemporalHead
from affectstream.errors import PipelineError, SourceOutcome
from affectstream.stream.batcher import BatchConfig, BatchQueue, split_waves
from affectstream.stream.face_session import FaceConfig
from affectstream.stream.frames import SourceEvent, SourceState, VideoFrame
from affectstream.stream.grabber import Grabber, RingModes
from affectstream.stream.messages import SinkLag, StreamRecord, wall_ms
from affectstream.stream.pacing import PacedSource
from affectstream.stream.ring import DEFAULT_MAX_BYTES, RingBuffer
from affectstream.stream.sampler import DEFAULT_FILE_RATE_HZ, DEFAULT_LIVE_RATE_HZ, MediaTimeSampler
from affectstream.stream.session import AnalyticsConfig, StreamSession
from affectstream.stream.sinks import Sink
from affectstream.stream.sources import Source, SourceConfig, is_live, open_source
from affectstream.stream.stats import StreamStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """Every runtime setting, read once by the CLI and passed down."""

    rate_hz: float | None = None  # None: DEFAULT_LIVE_RATE_HZ for live sources, DEFAULT_FILE_RATE_HZ for files
    pace_files: bool = True  # `run` plays files at their own speed; `analyze` and `--fast` do not
    batch: BatchConfig = field(default_factory=BatchConfig)
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    # A stream with faces off in a run with the face stage (``add_stream(faces=False)``) scores with the
    # whole-frame head, whose scores want their own event thresholds; None: ``analytics``.
    frame_analytics: AnalyticsConfig | None = None
    source: SourceConfig = field(default_factory=SourceConfig)
    ring: RingModes = field(default_factory=RingModes)
    ring_max_bytes: int = DEFAULT_MAX_BYTES  # pixels one stream's ring may hold, whatever its capacity in frames
    faces: FaceConfig = field(default_factory=FaceConfig)  # used when the pipeline has a face model
    # What CLIP encodes when both run: "frame", or "face" (each frame's primary face, engine/face_crops.py).
    clip_input: str = "frame"
    max_in_flight: int = 8  # sampled frames per stream between pump and emitter
    stats_interval_s: float = 2.0

    def rate_for(self, is_live: bool, stream_rate_hz: float | None = None) -> float | None:
        """The sampling rate of a stream (None: every frame); a stream's own rate (``add_stream``,
        ``--config``) comes first, then ``--rate``, then the live or file default."""
        rate = stream_rate_hz if stream_rate_hz is not None else self.rate_hz
        if rate is not None:
            return rate if rate > 0 else None
        return DEFAULT_LIVE_RATE_HZ if is_live else DEFAULT_FILE_RATE_HZ


@dataclass(frozen=True, slots=True)
class SampledFrame:
    """A sampled frame on its way through the batch queue."""

    frame: VideoFrame
    queued_ns: int

    @property
    def stream_id(self) -> str:
        return self.frame.stream_id


@dataclass(frozen=True, slots=True)
class StreamMarker:
    """A source lifecycle event, in band with the frames of its stream."""

    event: SourceEvent

    @property
    def stream_id(self) -> str:
        return self.event.stream_id


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What the inference worker hands to the emitter for one frame."""

    frame: VideoFrame
    scores: np.ndarray | None  # the whole-frame head's (None without CLIP)
    sentiment: float | None
    faces: tuple[FaceObservation, ...] | None  # None without the face stage; boxes in source pixels
    stage_ms: dict[str, float]


@dataclass(frozen=True, slots=True)
class BatchDone:
    """Per batch, for stats."""

    size: int


@dataclass(frozen=True)
class StreamOutcome:
    """How one stream went, for exit statuses and reports (``Pipeline.outcomes``)."""

    started: bool = False  # a source opened (stream_started was sent)
    estimates: int = 0
    ended: bool = False  # the terminal event has been emitted
    state: SourceState | None = None  # ENDED or FAILED once ended
    outcome: SourceOutcome | None = None  # how it ended; None for an internal error
    detail: str = ""
    damage: Mapping[str, object] | None = None  # what the reader counted as damaged (files)


def in_source_pixels(found: tuple[FaceObservation, ...], frame: VideoFrame) -> tuple[FaceObservation, ...]:
    """Boxes found on a reduced frame, on the frame the user sees (``VideoFrame.source_size``): the one
    place where they change scale, so tracks, wire messages and reports are all in source pixels."""
    scale = frame.source_scale
    return found if scale == 1.0 else tuple(observation.scaled(scale) for observation in found)


_IDLE = BatchDone(0)  # what the emitter sees when nothing arrived for a while
_Outbox = queue.SimpleQueue[FrameResult | StreamMarker | BatchDone | None]
_BatchItem = SampledFrame | StreamMarker


class _StreamRuntime:
    """Everything the pipeline keeps for one stream."""

    def __init__(self, stream_id: str, uri: str, ring: RingBuffer, max_in_flight: int, session: StreamSession,
                 live: bool, source: Source | None) -> None:
        self.stream_id = stream_id
        self.uri = uri
        self.ring = ring
        self.session = session
        self.stats = StreamStats()
        self.source = source  # given to add_stream: the one source of this stream, never reconnected
        self.is_live = live  # until the source opens and says
        self.last_ts = 0.0  # media time of the last estimate (written by the emitter only)
        self.in_flight = threading.BoundedSemaphore(max_in_flight)
        self.dropped_in_flight = 0  # live frames dropped because the encoder was behind
        self.sampled = 0
        self.outcome = StreamOutcome()  # written by the emitter only
        self.finished = threading.Event()  # the terminal event has passed the emitter
        self.final_stats_sent = False  # the stats after its end went out: no more for this stream
        self.grabber: Grabber | None = None
        self.pump: threading.Thread | None = None
        self.rate_hz: float | None = None  # its own sampling rate (None: the run's)
        self.faces = session.has_faces  # the face stage analyses its frames


class Pipeline:
    """Runs any number of sources through one encoder and head; see the module docstring."""

    def __init__(
        self,
        sources: Sequence[tuple[str, str]],
        encoder: ImageEncoder | None,
        head: TemporalHead | None,
        sink: Sink,
        labels: tuple[str, ...],
        config: PipelineConfig,
        source_factory: Callable[[str, str, SourceConfig], Source] = open_source,
        first_seqs: Mapping[str, int] | None = None,
        faces: FaceModel | None = None,
        allow_empty: bool = False,
        frame_labels: tuple[str, ...] | None = None,
    ) -> None:
        # allow_empty: streams come later (add_stream), and the run lasts until stop() (see wait()).
        # labels: what the sessions score (the face stage's when there is one); frame_labels: the
        # whole-frame head's, for a stream with faces off in a run with both (default: labels).
        if not sources and not allow_empty:
            raise PipelineError("no source given: pass at least one file, camera or URL")
        if (encoder is None) != (head is None):
            raise PipelineError("the whole-frame encoder and its head come together: pass both or neither")
        if encoder is None and faces is None:
            raise PipelineError("nothing to analyse with: pass a whole-frame encoder and head, a face model, or both")
        if config.clip_input not in ("frame", "face"):
            raise PipelineError(f"clip_input is 'frame' or 'face', got {config.clip_input!r}")
        if config.clip_input == "face" and faces is None:
            raise PipelineError("CLIP on faces needs the face stage: turn --faces on, or use --clip-input frame")
        ids = [stream_id for stream_id, _ in sources]
        if len(set(ids)) != len(ids):
            raise PipelineError(f"stream ids must be unique, got {ids}")
        self._encoder = encoder
        self._head = head
        self._faces = faces
        self._head_lock = threading.Lock()
        self._sink = sink
        self._labels = labels
        self._frame_labels = frame_labels or labels
        self._config = config
        self._source_factory = source_factory
        self._stop = threading.Event()
        self._hurrying = False  # hurry(): sampled frames still queued are skipped (a plain flag: no lock)
        self._batches: BatchQueue[_BatchItem] = BatchQueue(config.batch.max_batch, config.batch.max_wait_ms)
        self._outbox: _Outbox = queue.SimpleQueue()
        self._allow_empty = allow_empty
        self._lock = threading.Lock()  # see the module docstring
        self._sealed = False  # the run is over: no stream may be added
        # A server with an event log hands over where each stream's numbering left off, so that
        # `resume` from a seq keeps working across restarts of affectstream.
        first_seqs = first_seqs or {}
        self._streams: dict[str, _StreamRuntime] = {
            sid: self._new_runtime(sid, uri, first_seqs.get(sid, 0), None, None) for sid, uri in sources}
        self._threads: list[threading.Thread] = []
        self._started = False
        self._done = threading.Event()
        self.on_record: Callable[[StreamRecord], None] | None = None  # extra tap, e.g. the --show overlay
        self.on_frame: Callable[[VideoFrame], None] | None = None  # sampled frames, e.g. for --show
        # Every frame a pump reads, sampled or not: (frame, sampled, its stream is live), e.g. for the
        # annotated video (stream/recording.py). Called before a sampled frame is queued, so its estimate
        # always comes after it; it may block a file's pump (back-pressure), never a live one's.
        self.on_decoded: Callable[[VideoFrame, bool, bool], None] | None = None
        # --sink: each sink's state and lag for a stream, for its stats (stream/delivery.py; a snapshot).
        self.sink_lags: Callable[[str], tuple[SinkLag, ...]] | None = None

    @property
    def stream_ids(self) -> list[str]:
        """Every stream's id, added ones included (any thread)."""
        return list(self._streams)

    def running_stream_ids(self) -> list[str]:
        """The ids of the streams that have not finished (any thread): the ids ``add_stream`` refuses."""
        return [sid for sid, runtime in self._streams.items() if not runtime.finished.is_set()]

    @property
    def outcomes(self) -> dict[str, StreamOutcome]:
        """How each stream went so far (complete once ``wait`` returned True); a stream id taken again
        by ``add_stream`` gives its newest stream's."""
        return {sid: runtime.outcome for sid, runtime in self._streams.items()}

    @property
    def open_faces(self) -> int:
        """Face tracks the sessions hold state for, all streams (a gauge, read from any thread: the
        emitter changes the counts, a reader may see one that is a frame old)."""
        return sum(runtime.session.open_faces for runtime in self._streams.values())

    def add_stream(self, stream_id: str, uri: str, source: Source | None = None, first_seq: int = 0,
                   rate_hz: float | None = None, faces: bool | None = None, start_ts: float = 0.0) -> None:
        """Add a stream before ``start()`` or while the pipeline runs (any thread; it does not wait).

        ``source``: this stream's one source, e.g. a ``PushSource`` fed by the WebRTC side; it is never
        reconnected, so its end or failure is the stream's (stream/grabber.py). Without it the source
        comes from ``source_factory(uri, ...)`` and reconnects like the constructor's streams.
        ``first_seq``: where an event log's numbering of this id left off (see the constructor).
        ``rate_hz``: this stream's own sampling rate (0: every frame; None: the run's ``--rate``).
        ``faces``: whether the face stage analyses this stream (None: whenever the run has one). False
        in a run with faces scores the stream with the whole-frame head alone (its own labels and
        thresholds, ``frame_labels``/``frame_analytics``); it needs that head, and True needs the
        face stage: PipelineError otherwise.
        ``start_ts``: the media time its lifecycle events carry until its first estimate (a stream that
        goes on elsewhere, ``run --ray``'s restart: its `stream_started` must not say 0).

        The id must not be a running stream's. A finished stream's id may be taken again (a reloaded
        capture page): the new stream replaces it in ``outcomes``, and its seqs continue after the old
        ones, so that resume by seq stays monotonic. Refused once ``stop()`` was called or the run is
        over (``wait()`` returned True).
        """
        if not stream_id:
            raise PipelineError("a stream needs a non-empty id")
        self._check_faces(stream_id, faces)
        with self._lock:
            if self._stop.is_set() or self._sealed:
                raise PipelineError(f"cannot add stream {stream_id!r}: the pipeline has "
                                    f"{'stopped' if self._stop.is_set() else 'finished (every stream ended)'}")
            old = self._streams.get(stream_id)
            if old is not None:
                if not old.finished.is_set():
                    raise PipelineError(f"stream id {stream_id!r} is in use by a stream that has not ended: "
                                        "pick another name, or wait until it has (wait_stream)")
                # Its last stats, if not out yet, are skipped: the emitter reads the table under the lock.
                first_seq = max(first_seq, old.session.next_seq)
            runtime = self._new_runtime(stream_id, uri, first_seq, source, faces)
            runtime.rate_hz = rate_hz
            runtime.last_ts = start_ts
            self._streams = {**self._streams, stream_id: runtime}
            if self._started:
                self._launch(runtime)

    def remove_stream(self, stream_id: str) -> None:
        """Stop one stream (any thread; returns at once): it ends with `stream_ended` (outcome stopped)
        within the grabber's stop grace; the others go on. PipelineError for an id that is not running."""
        with self._lock:
            runtime = self._streams.get(stream_id)
            if runtime is None or runtime.finished.is_set():
                raise PipelineError(f"no running stream {stream_id!r}: the running ones are "
                                    f"{', '.join(self.running_stream_ids()) or 'none'}")
            grabber = runtime.grabber
        if grabber is not None:
            grabber.stop()

    def stream_uri(self, stream_id: str) -> str | None:
        runtime = self._streams.get(stream_id)
        return None if runtime is None else runtime.uri

    def stream_rate(self, stream_id: str) -> float | None:
        runtime = self._streams.get(stream_id)
        return None if runtime is None else runtime.rate_hz

    def stream_faces(self, stream_id: str) -> bool | None:
        """Whether the face stage analyses the stream (None: no such stream)."""
        runtime = self._streams.get(stream_id)
        return None if runtime is None else runtime.faces

    def _check_faces(self, stream_id: str, faces: bool | None) -> None:
        refusal = faces_refusal(faces, self._faces is not None, self._encoder is not None, self._config.clip_input)
        if refusal is not None:
            raise PipelineError(f"stream {stream_id!r}: {refusal}")

    def start(self) -> None:
        with self._lock:
            if self._started:
                raise PipelineError("a pipeline can be started once")
            self._started = True
            self._spawn("affectstream-infer", self._infer_loop)
            self._spawn("affectstream-emit", self._emit_loop)
            for runtime in self._streams.values():
                self._launch(runtime)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run is over and its last message is written; False on timeout.

        Without ``allow_empty`` the run is over when every stream has ended (and then no stream can be
        added). With it, streams may come at any time, so the run lasts until ``stop()``."""
        return self._done.wait(timeout)

    def wait_stream(self, stream_id: str, timeout: float | None = None) -> bool:
        """Block until the stream has finished (its last message is written, so ``add_stream`` may take
        its id again, e.g. after ending the source of a reloaded capture page); False on timeout."""
        runtime = self._streams.get(stream_id)
        if runtime is None:
            raise PipelineError(f"no stream {stream_id!r} in this pipeline (it has {self.stream_ids})")
        return runtime.finished.wait(timeout)

    def hurry(self) -> None:
        """Skip the frames not yet analysed (a second Ctrl-C during ``stop()``): every stream still gets
        its final summary and `stream_ended`, and the skipped frames count as dropped. Takes no lock, so
        a signal handler may call it; the batch being analysed finishes first."""
        self._hurrying = True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the sources, let what is in flight finish, flush the sinks. Safe to call twice."""
        with self._lock:  # no stream is added after this
            self._stop.set()
            runtimes = list(self._streams.values())
        for runtime in runtimes:
            if runtime.grabber is not None:
                runtime.grabber.stop()
        self._done.wait(timeout)
        self._batches.close()
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._sink.flush()

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- wiring ---------------------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _new_runtime(self, stream_id: str, uri: str, first_seq: int, source: Source | None,
                     faces: bool | None) -> _StreamRuntime:
        live = source.is_live if source is not None else is_live(uri)
        # The ring starts in the mode the uri suggests; the grabber sets it from the opened source.
        policy, capacity = self._config.ring.mode(live)
        if self._faces is not None and faces is not False:
            session = StreamSession(stream_id, self._labels, self._config.analytics, first_seq=first_seq,
                                    faces=self._config.faces)
        else:
            analytics = self._config.analytics if self._faces is None else (
                self._config.frame_analytics or self._config.analytics)
            session = StreamSession(stream_id, self._frame_labels, analytics, first_seq=first_seq)
        return _StreamRuntime(stream_id, uri, RingBuffer(capacity, policy, self._config.ring_max_bytes),
                              self._config.max_in_flight, session, live, source)

    def _launch(self, runtime: _StreamRuntime) -> None:
        """The stream's grabber and pump (called with ``_lock`` held)."""
        self._threads = [thread for thread in self._threads if thread.is_alive()]  # ended pumps of a long run
        runtime.grabber = Grabber(runtime.stream_id, self._make_source_factory(runtime), runtime.ring, None,
                                  self._config.source, stop_event=self._stop, modes=self._config.ring,
                                  reconnects=runtime.source is None)
        runtime.grabber.start()
        runtime.pump = self._spawn(f"affectstream-pump-{runtime.stream_id}", self._pump_loop, runtime)

    def _make_source_factory(self, runtime: _StreamRuntime) -> Callable[[], Source]:
        def factory() -> Source:
            source = runtime.source
            if source is None:
                source = self._source_factory(runtime.uri, runtime.stream_id, self._config.source)
            # PacedSource paces only media that ends; a live source passes straight through.
            return PacedSource(source, self._stop) if self._config.pace_files else source

        return factory

    # -- pump: ring → sampler → batch queue -----------------------------------------------------

    def _pump_loop(self, runtime: _StreamRuntime) -> None:
        sampler: MediaTimeSampler | None = None
        try:
            while True:
                item = runtime.ring.get(timeout=0.05)
                if item is None:
                    if runtime.ring.drained:  # the grabber always ends with a terminal event; be safe
                        raise PipelineError("the ring closed without a terminal event")
                    continue
                if isinstance(item, SourceEvent):
                    if item.info is not None:
                        runtime.is_live = item.info.is_live
                        sampler = MediaTimeSampler(self._config.rate_for(runtime.is_live, runtime.rate_hz))
                    self._batches.put(StreamMarker(item))
                    if item.terminal:
                        return
                    continue
                if sampler is None:
                    sampler = MediaTimeSampler(self._config.rate_for(runtime.is_live, runtime.rate_hz))
                sampled = sampler.offer(item.pts) and self._acquire_slot(runtime)
                if self.on_decoded is not None:
                    self.on_decoded(item, sampled, runtime.is_live)
                if not sampled:
                    continue
                runtime.sampled += 1
                if self.on_frame is not None:
                    self.on_frame(item)
                self._batches.put(SampledFrame(item, time.monotonic_ns()))
        except Exception:  # a broken pump must not take the process down; the stream ends with an error
            log.exception("pump of stream %s failed", runtime.stream_id)
            failure = SourceEvent(runtime.stream_id, SourceState.FAILED, wall_ms(), detail="internal pump error")
            self._batches.put(StreamMarker(failure))

    def _acquire_slot(self, runtime: _StreamRuntime) -> bool:
        if runtime.is_live:
            # A live stream never waits for the encoder: a frame that finds no slot is dropped, so
            # the frames that are analysed stay fresh.
            if runtime.in_flight.acquire(blocking=False):
                return True
            runtime.dropped_in_flight += 1
            return False
        while not runtime.in_flight.acquire(timeout=0.1):
            if self._stop.is_set():
                return False
        return True

    # -- inference worker: batch → encoder → head ------------------------------------------------

    def _infer_loop(self) -> None:
        while True:
            batch = self._batches.get_batch(timeout=0.1)
            if not batch:
                if self._batches.closed:
                    return
                continue
            if self._hurrying:
                self._skip_batch(batch)
                continue
            try:
                self._infer_batch(batch)
            except Exception:
                log.exception("inference failed on a batch of %d", len(batch))
                for item in batch:
                    if isinstance(item, SampledFrame):
                        self._streams[item.frame.stream_id].in_flight.release()
                    else:
                        self._outbox.put(item)

    def _skip_batch(self, batch: list[_BatchItem]) -> None:
        skipped = 0
        for item in batch:
            if isinstance(item, SampledFrame):
                runtime = self._streams[item.frame.stream_id]
                runtime.in_flight.release()
                runtime.dropped_in_flight += 1  # reported in the final frames_dropped and stats
                skipped += 1
            else:
                self._apply_marker(item)
                self._outbox.put(item)
        log.debug("hurrying: %d sampled frame(s) skipped", skipped)

    def _infer_batch(self, batch: list[_BatchItem]) -> None:
        frames = [item for item in batch if isinstance(item, SampledFrame)]
        images = [item.frame.image for item in frames]
        started = time.monotonic_ns()
        stages: dict[str, float] = {}
        faces: list[tuple[FaceObservation, ...] | None] | None = None
        if self._faces is not None:
            # Before the batch is analysed: a (re)connection's frames must not reuse boxes from before
            # it (frames of the old connection in the same batch are merely detected again).
            for item in batch:
                if isinstance(item, StreamMarker) and item.event.new_context:
                    self._faces.schedule.forget(item.event.stream_id)
            faces = self._analyse_faces(frames, stages)
        features = None
        if self._encoder is not None and frames:
            encoded_at = time.monotonic_ns()
            clip_images = images
            if faces is not None and self._faces is not None and self._config.clip_input == "face":
                policy = self._faces.policy
                clip_images = [image if found is None else primary_crop(image, [o.box for o in found], policy)
                               for image, found in zip(images, faces)]
            features = self._encoder.encode(clip_images)
            # Encoders that time their own stages split the call into preprocess and model time.
            stages.update(self._encoder.last_stage_ms or {"encode": (time.monotonic_ns() - encoded_at) / 1e6})
        row_of = {id(item): row for row, item in enumerate(frames)}
        for wave in split_waves(batch, key=lambda item: item.stream_id,
                                is_barrier=lambda item: isinstance(item, StreamMarker)):
            sampled = [item for item in wave.items if isinstance(item, SampledFrame)]
            markers = [item for item in wave.items if isinstance(item, StreamMarker)]
            for marker in markers:
                self._apply_marker(marker)
                self._outbox.put(marker)
            if sampled:
                self._step_wave(sampled, features, faces, row_of, started, stages, len(frames))
        self._outbox.put(BatchDone(len(frames)))

    def _analyse_faces(self, frames: list[SampledFrame],
                       stages: dict[str, float]) -> list[tuple[FaceObservation, ...] | None]:
        """The face stage on the frames of the streams it analyses, in one call (its stage times join
        ``stages``); None for the others' frames."""
        assert self._faces is not None
        wanted = [row for row, item in enumerate(frames) if self._streams[item.frame.stream_id].faces]
        found: list[tuple[FaceObservation, ...] | None] = [None] * len(frames)
        if wanted:
            results = self._faces.analyse([frames[row].frame.image for row in wanted],
                                          [(frames[row].frame.stream_id, frames[row].frame.pts) for row in wanted])
            for row, observations in zip(wanted, results):
                found[row] = observations
            stages.update(self._faces.last_stage_ms)
        return found

    def _step_wave(self, wave: list[SampledFrame], features: np.ndarray | None,
                   faces: list[tuple[FaceObservation, ...] | None] | None, row_of: dict[int, int],
                   batch_started_ns: int, encode_stages: dict[str, float], batch_size: int) -> None:
        rows = [row_of[id(item)] for item in wave]
        scores: np.ndarray | None = None
        sentiment: np.ndarray | None = None
        head_ms = 0.0
        if features is not None and self._head is not None:
            head_started = time.monotonic_ns()
            with self._head_lock:
                output = self._head.step([item.frame.stream_id for item in wave], features[rows])
            head_ms = (time.monotonic_ns() - head_started) / 1e6
            scores, sentiment = output.scores, output.sentiment
        for i, item in enumerate(wave):
            stage_ms = {"queue": (batch_started_ns - item.frame.captured_ns) / 1e6, **encode_stages}
            if scores is not None:
                stage_ms["head"] = head_ms
            stage_ms["batch"] = float(batch_size)
            found = None if faces is None else faces[rows[i]]
            self._outbox.put(FrameResult(
                item.frame, None if scores is None else scores[i],
                None if sentiment is None else float(sentiment[i]),
                None if found is None else in_source_pixels(found, item.frame), stage_ms))

    def _apply_marker(self, marker: StreamMarker) -> None:
        # A new connection starts a new temporal context; state from before a gap is meaningless.
        # (The detection schedule was reset before the batch was analysed, in _infer_batch.)
        if marker.event.new_context and self._head is not None:
            with self._head_lock:
                self._head.reset(marker.event.stream_id)

    # -- emitter: results → sessions → sinks ------------------------------------------------------

    def _emit_loop(self) -> None:
        next_stats = time.monotonic() + self._config.stats_interval_s
        while True:
            try:
                item = self._outbox.get(timeout=0.1)
            except queue.Empty:
                item = _IDLE
            if item is None:
                return
            try:
                if item is not _IDLE:
                    self._emit_item(item)
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + self._config.stats_interval_s
                    self._emit_stats()
                if not self._done.is_set() and self._seal_if_over():
                    self._emit_stats()
                    self._sink.flush()
                    self._done.set()
            except Exception:  # one bad message must not end the emitter: log and go on
                log.exception("emitting a message failed")

    def _seal_if_over(self) -> bool:
        """Whether the run is over: every stream has finished and none may come any more (without
        ``allow_empty``, none is added once all have ended; with it, streams may come until stop()).
        Once it says so, ``add_stream`` refuses: the decision and the additions take the same lock."""
        with self._lock:
            if not self._sealed:
                more_may_come = self._allow_empty and not self._stop.is_set()
                self._sealed = not more_may_come and all(rt.finished.is_set() for rt in self._streams.values())
            return self._sealed

    def _emit_item(self, item: FrameResult | StreamMarker | BatchDone) -> None:
        if isinstance(item, BatchDone):
            if item.size:
                for runtime in self._streams.values():
                    runtime.stats.record_batch(item.size)
            return
        if isinstance(item, StreamMarker):
            self._emit_marker(item)
            return
        frame = item.frame
        runtime = self._streams[frame.stream_id]
        runtime.in_flight.release()
        now_ns = time.monotonic_ns()
        age_ms = (now_ns - frame.captured_ns) / 1e6
        stage_ms = {key: round(value, 3) for key, value in item.stage_ms.items() if key != "batch"}
        runtime.last_ts = frame.pts
        session = runtime.session
        if item.faces is not None:
            clip = None if item.scores is None or item.sentiment is None else (item.scores, item.sentiment)
            records = session.on_faces(frame.pts, wall_ms(), item.faces, clip, latency_ms=stage_ms,
                                       age_ms=round(age_ms, 3), source_size=frame.source_size or (frame.width, frame.height))
        else:
            assert item.scores is not None and item.sentiment is not None
            records = session.on_estimate(frame.pts, wall_ms(), item.scores, item.sentiment,
                                          latency_ms=stage_ms, age_ms=round(age_ms, 3))
        runtime.outcome = _counted(runtime.outcome)
        runtime.stats.record_estimate(frame.pts, age_ms, item.stage_ms)
        self._write(records)
        self._write(self._drop_records(runtime, frame.pts))

    def _emit_marker(self, marker: StreamMarker) -> None:
        event = marker.event
        runtime = self._streams[event.stream_id]
        ts = runtime.last_ts
        runtime.outcome = _with_event(runtime.outcome, event)
        if event.terminal:
            # The final drops, episodes and partial summaries first: `stream_ended` (or
            # `stream_error`) is the stream's last durable message, so a client may stop reading there.
            self._write(self._drop_records(runtime, ts))
            self._write(runtime.session.finish(ts, wall_ms()))
        self._write(runtime.session.on_source_event(event, ts))
        if event.terminal:
            runtime.finished.set()

    def _drop_records(self, runtime: _StreamRuntime, ts: float) -> list[StreamRecord]:
        dropped = runtime.ring.counters().overwritten + runtime.dropped_in_flight
        return runtime.session.on_drops(ts, wall_ms(), dropped)

    def _emit_stats(self) -> None:
        records: list[StreamRecord] = []
        # Under the lock: a finished stream's last stats take a seq, which add_stream must see when
        # the stream's id is taken again.
        with self._lock:
            for runtime in self._streams.values():
                if runtime.finished.is_set() and runtime.final_stats_sent:
                    continue  # an ended stream has said everything (its last stats follow its stream_ended)
                runtime.final_stats_sent = runtime.finished.is_set()
                counters = runtime.ring.counters()
                fields = runtime.stats.snapshot(
                    written=counters.written,
                    sampled=runtime.sampled,
                    dropped=counters.overwritten + runtime.dropped_in_flight,
                    queue_depth=len(runtime.ring) + self._batches.pending,
                )
                if self.sink_lags is not None:  # a snapshot: the emitter never waits on a sink
                    fields = dataclasses.replace(fields, sinks=self.sink_lags(runtime.stream_id))
                records.append(runtime.session.stats(runtime.last_ts, wall_ms(), fields))
        self._write(records)

    def _write(self, records: list[StreamRecord]) -> None:
        for record in records:
            self._sink.write(record)
            if self.on_record is not None:
                self.on_record(record)


def faces_refusal(faces: bool | None, has_faces: bool, has_encoder: bool, clip_input: str) -> str | None:
    """Why a run cannot analyse a stream with this ``faces`` setting (None: it can)."""
    if faces and not has_faces:
        return "it asks for faces, but this run has no face stage (it was started with --faces off)"
    if faces is False and has_faces and not has_encoder:
        return ("it asks for faces off, but this run has no whole-frame model to score it with: start the run "
                "with a CLIP --model or --bundle")
    if faces is False and has_faces and clip_input == "face":
        return ("it asks for faces off, but this run's CLIP encodes faces (--clip-input face): a stream "
                "without faces has none to encode")
    return None


def _counted(outcome: StreamOutcome) -> StreamOutcome:
    return replace(outcome, estimates=outcome.estimates + 1)


def _with_event(outcome: StreamOutcome, event: SourceEvent) -> StreamOutcome:
    """The outcome after a lifecycle event: started on RUNNING, how it ended on the terminal one."""
    if event.state is SourceState.RUNNING:
        return replace(outcome, started=True)
    if event.terminal:
        return replace(outcome, ended=True, state=event.state, outcome=event.ended_as, detail=event.detail,
                       damage=event.damage)
    return outcome
