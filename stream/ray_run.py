"""`run --ray ADDRESS`: a run's streams spread over a Ray cluster, supervised from the driver.

The driver (the ``run`` process: websocket server, event log, sinks) places each stream on a stream
actor (stream/ray_actor.py; ``RayPlacement.streams_per_actor`` per actor, spread over the nodes) and
the models on a Serve deployment (stream/ray_models.py). ``RayPipeline`` is what ``run`` drives instead
of the in-process ``Pipeline``: the same calls (start, add_stream, remove_stream, wait, stop,
outcomes), so the server, stream control, ``--config`` and the sinks work unchanged.

One supervisor thread keeps a long ``drain`` call open per actor (``ray.wait`` over them) and writes
what comes back to the run's sink, in each stream's seq order, skipping seqs it already has. When a
call fails because its actor died (its node was lost, its process killed), each of the actor's
streams that had not ended is restarted on a new actor, which Ray places on a node that is alive: the
driver writes a ``stream_restarted`` event first (the seq after the last one it had), and the new
actor numbers on from there and opens a file where the last estimate was. What the dead actor had
produced and not yet handed over is analysed again; nothing the driver had is lost or renumbered,
so the event log and the sinks see one gap-free numbering per stream.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from affectstream.errors import ConfigError, ModelError, PipelineError, SourceOutcome
from affectstream.stream.messages import (
    TERMINAL_KINDS,
    Estimate,
    Event,
    EventKind,
    SinkLag,
    Stats,
    StreamRecord,
    wall_ms,
)
from affectstream.stream.pipeline import StreamOutcome, faces_refusal
from affectstream.stream.ray_actor import DrainReply, StreamKit, StreamSpec, actor_class
from affectstream.stream.ray_models import ModelPlacement, ModelsInfo
from affectstream.stream.sinks import Sink

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0  # a stop call to an actor, the models' info
GIVE_UP_AFTER = 50  # supervisor rounds failing in a row (about 10 s) before every stream ends
# A stream whose actor is lost this many times within RESTART_WINDOW_S ends with stream_error: something
# about it (its source, its node's setup) kills every actor it goes to.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 120.0


@dataclass(frozen=True)
class RayPlacement:
    """Where a run's work goes on the cluster (``--ray-streams-per-actor``, ``--ray-stream-cpus``, the models')."""

    streams_per_actor: int = 1
    stream_cpus: float = 0.5  # Ray's CPU resource one stream actor reserves
    models: ModelPlacement = field(default_factory=ModelPlacement)

    def __post_init__(self) -> None:
        if self.streams_per_actor < 1:
            raise ConfigError(f"--ray-streams-per-actor must be >= 1, got {self.streams_per_actor}")


@dataclass
class _Stream:
    """What the driver keeps of one stream: where it runs and how far its records have come."""

    spec: StreamSpec
    next_seq: int
    actor: _Actor | None = None
    last_ts: float = 0.0
    outcome: StreamOutcome = field(default_factory=StreamOutcome)
    counted: int = 0  # estimates of actors that are gone (an actor's outcome counts its own only)
    finished: threading.Event = field(default_factory=threading.Event)
    removing: bool = False
    remove_sent: bool = False
    restarts: list[float] = field(default_factory=list)  # monotonic times of its restarts


@dataclass(eq=False)
class _Actor:
    handle: Any
    streams: set[str] = field(default_factory=set)
    pending: Any = None  # the open drain call
    adding: dict[str, Any] = field(default_factory=dict)  # add calls not known to have run
    node: str = "?"
    closing: bool = False


class RayPipeline:
    """The in-process ``Pipeline``'s interface over stream actors; see the module docstring."""

    def __init__(self, sources: Sequence[tuple[str, str]], kit: StreamKit, sink: Sink, placement: RayPlacement,
                 first_seqs: Mapping[str, int] | None = None, allow_empty: bool = False) -> None:
        import ray

        if not sources and not allow_empty:
            raise PipelineError("no source given: pass at least one file, camera or URL")
        self._ray = ray
        self._kit_ref = ray.put(kit)
        self._kit = kit
        self._sink = sink
        self._placement = placement
        self._actor_class = actor_class(placement.stream_cpus)
        self._allow_empty = allow_empty
        self._lock = threading.RLock()
        self._streams: dict[str, _Stream] = {}
        self._actors: list[_Actor] = []
        self._stop = threading.Event()
        self._done = threading.Event()
        self._started = False
        self._thread: threading.Thread | None = None
        for name, uri in sources:
            self._streams[name] = _Stream(StreamSpec(name, uri), (first_seqs or {}).get(name, 0))
        self.on_record: Callable[[StreamRecord], None] | None = None
        self.on_frame: Callable[[Any], None] | None = None  # frames stay on their nodes: never called
        self.on_decoded: Callable[[Any, bool, bool], None] | None = None  # likewise
        self.sink_lags: Callable[[str], tuple[SinkLag, ...]] | None = None

    # -- what run, the server and stream control read ---------------------------------------------

    @property
    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def running_stream_ids(self) -> list[str]:
        return [name for name, s in self._streams.items() if not s.finished.is_set()]

    @property
    def outcomes(self) -> dict[str, StreamOutcome]:
        return {name: s.outcome for name, s in self._streams.items()}

    @property
    def open_faces(self) -> int:
        return 0  # tracks live on the actors

    def stream_uri(self, stream_id: str) -> str | None:
        s = self._streams.get(stream_id)
        return None if s is None else s.spec.uri

    def stream_rate(self, stream_id: str) -> float | None:
        s = self._streams.get(stream_id)
        return None if s is None else s.spec.rate_hz

    def stream_faces(self, stream_id: str) -> bool | None:
        s = self._streams.get(stream_id)
        if s is None:
            return None
        return self._kit.faces is not None if s.spec.faces is None else s.spec.faces

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                raise PipelineError("a pipeline can be started once")
            self._started = True
            for name in list(self._streams):
                self._place(name)
        self._thread = threading.Thread(target=self._supervise, name="affectstream-ray", daemon=True)
        self._thread.start()

    def add_stream(self, stream_id: str, uri: str, source: Any = None, first_seq: int = 0,
                   rate_hz: float | None = None, faces: bool | None = None) -> None:
        if source is not None:
            raise PipelineError("a stream pushed from this process (a browser camera) cannot run on a Ray "
                                "cluster: its frames are here, the cluster's actors are not")
        refusal = faces_refusal(faces, self._kit.faces is not None, self._kit.encoder is not None,
                                self._kit.config.clip_input)
        if refusal is not None:
            raise PipelineError(f"stream {stream_id!r}: {refusal}")
        with self._lock:
            if self._stop.is_set() or self._done.is_set():
                raise PipelineError(f"cannot add stream {stream_id!r}: the run is over")
            old = self._streams.get(stream_id)
            if old is not None and not old.finished.is_set():
                raise PipelineError(f"stream id {stream_id!r} is in use by a stream that has not ended")
            if old is not None:
                first_seq = max(first_seq, old.next_seq)
            self._streams[stream_id] = _Stream(StreamSpec(stream_id, uri, first_seq, rate_hz, faces), first_seq)
            if self._started:
                self._place(stream_id)

    def remove_stream(self, stream_id: str) -> None:
        """Stop one stream (returns at once: the server's loop calls it); it ends with ``stream_ended``
        from its actor, which the supervisor asks once the stream's ``add`` has run there."""
        with self._lock:
            s = self._streams.get(stream_id)
            if s is None or s.finished.is_set():
                raise PipelineError(f"no running stream {stream_id!r}")
            s.removing = True
            if s.actor is None:
                self._end_here(stream_id, "removed")

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def wait_stream(self, stream_id: str, timeout: float | None = None) -> bool:
        s = self._streams.get(stream_id)
        if s is None:
            raise PipelineError(f"no stream {stream_id!r} in this run")
        return s.finished.wait(timeout)

    def hurry(self) -> None:
        log.info("--ray: each actor finishes what it has in flight")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every stream (each ends with its summaries and ``stream_ended``), write what is left."""
        with self._lock:
            self._stop.set()
            actors = list(self._actors)  # those already closing are stopped again: stop() is idempotent
            for actor in actors:
                actor.closing = True
        if self._thread is not None:
            self._thread.join(timeout)
        calls: dict[Any, _Actor] = {}
        for actor in actors:
            try:
                calls[actor.handle.stop.remote(self._after())] = actor
            except Exception as error:  # Ray itself is gone
                log.warning("an actor could not be stopped (%s)", type(error).__name__)
        for ref, actor in calls.items():
            try:
                reply = self._ray.get(ref, timeout=max(timeout, CALL_TIMEOUT_S))
                self._take(actor, reply)
                while reply.more:  # more than one reply's worth was waiting
                    reply = self._ray.get(actor.handle.drain.remote(self._after(), 0), timeout=CALL_TIMEOUT_S)
                    self._take(actor, reply)
            except Exception as error:
                log.warning("an actor did not stop cleanly (%s)", type(error).__name__)
        for name in self.running_stream_ids():
            self._end_here(name, "stopped while its actor was gone")
        for actor in list(self._actors):
            self._forget_actor(actor)
        self._done.set()
        self._sink.flush()

    def __enter__(self) -> RayPipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- placement ---------------------------------------------------------------------------------

    def _place(self, name: str, avoid: str | None = None) -> None:
        """Put the stream on an actor with room, or on a new one (called with the lock held; it does not
        wait: Ray starts the actor where there is room, or once there is, and runs its calls).

        ``avoid``: a node whose actor just died; until Ray has declared the node dead it could still be
        chosen, so a restarted stream is asked onto another node (softly: if none can take it, anywhere).
        """
        s = self._streams[name]
        actor = next((a for a in self._actors if not a.closing and a.node != avoid
                      and len(a.streams) < self._placement.streams_per_actor), None)
        if actor is None:
            actor = _Actor(self._actor_class.options(scheduling_strategy=self._strategy(avoid)).remote(self._kit_ref))
            self._actors.append(actor)
            self._warn_if_no_room(name)
        actor.adding[name] = actor.handle.add.remote(replace(s.spec, first_seq=s.next_seq))
        actor.streams.add(name)
        s.actor = actor

    def _warn_if_no_room(self, name: str) -> None:
        """Ray holds an actor back, silently, until a node has the CPUs it reserves: say so."""
        models = self._placement.models
        wanted = len(self._actors) * self._placement.stream_cpus + models.replicas * models.cpus
        cpus = float(self._ray.cluster_resources().get("CPU", 0))
        if wanted > cpus + 1e-9:
            log.warning("stream %s may wait for room: this run reserves %g Ray CPUs (%d stream actor(s) x "
                        "--ray-stream-cpus %g + %d replica(s) x --ray-cpus %g) and the cluster has %g; lower "
                        "them, raise --ray-streams-per-actor, or add nodes", name, wanted, len(self._actors),
                        self._placement.stream_cpus, models.replicas, models.cpus, cpus)

    def _strategy(self, avoid: str | None) -> Any:
        """SPREAD over the nodes; away from ``avoid``: the live node with the fewest of this run's actors."""
        if avoid is None:
            return "SPREAD"
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        others = [node["NodeID"] for node in self._ray.nodes()
                  if node.get("Alive") and node["NodeID"] != avoid and node.get("Resources", {}).get("CPU", 0) > 0]
        if not others:
            return "SPREAD"
        load = {node: sum(1 for a in self._actors if a.node == node) for node in others}
        return NodeAffinitySchedulingStrategy(node_id=min(others, key=lambda node: load[node]), soft=True)

    def _check_added(self) -> None:
        """An ``add`` that failed on a live actor (a bad source is not that: it ends as a stream):
        the stream ends here with the reason."""
        with self._lock:
            calls = {ref: (actor, name) for actor in self._actors for name, ref in actor.adding.items()}
        if not calls:
            return
        done, _ = self._ray.wait(list(calls), num_returns=len(calls), timeout=0)
        for ref in done:
            actor, name = calls[ref]
            actor.adding.pop(name, None)
            try:
                self._ray.get(ref)
            except self._ray.exceptions.RayTaskError as error:
                log.error("stream %s could not start on its actor: %s", name, error)
                with self._lock:
                    actor.streams.discard(name)
                    self._end_here(name, f"could not start: {_first_line(error.cause)}", EventKind.STREAM_ERROR)
            except Exception:  # the actor is gone: its drain call says so, and restarts the stream
                pass

    def _forget_actor(self, actor: _Actor) -> None:
        if actor in self._actors:
            self._actors.remove(actor)
        try:
            self._ray.kill(actor.handle)
        except Exception:  # already dead
            pass

    # -- supervisor --------------------------------------------------------------------------------

    def _after(self) -> dict[str, int]:
        """The last seq the driver has of each stream (every stream: an actor forgets what the driver has
        of its ended streams too)."""
        with self._lock:
            return {name: s.next_seq - 1 for name, s in self._streams.items()}

    def _supervise(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with self._lock:
                    for actor in self._actors:
                        if actor.pending is None and not actor.closing:
                            actor.pending = actor.handle.drain.remote(self._after())
                    pending = {a.pending: a for a in self._actors if a.pending is not None}
                if pending:
                    ready, _ = self._ray.wait(list(pending), num_returns=1, timeout=0.2)
                else:
                    ready = []
                    time.sleep(0.05)
                for ref in ready:
                    self._collect(pending[ref], ref)
                self._check_added()
                self._send_removes()
                self._seal_if_over()
                failures = 0
            except Exception:  # the supervisor must go on: log and continue, unless Ray is gone for good
                failures += 1
                log.exception("supervising the stream actors failed")
                if failures >= GIVE_UP_AFTER:
                    self._give_up()
                    return
                time.sleep(0.2)

    def _give_up(self) -> None:
        log.error("the Ray cluster has not answered for %d tries: every stream ends", GIVE_UP_AFTER)
        with self._lock:
            for name in self.running_stream_ids():
                self._end_here(name, "the Ray cluster stopped answering", EventKind.STREAM_ERROR)
            self._stop.set()
        self._sink.flush()
        self._done.set()

    def _collect(self, actor: _Actor, ref: Any) -> None:
        actor.pending = None
        try:
            reply = self._ray.get(ref)
        except Exception as error:  # RayActorError, ActorDiedError, ActorUnavailableError: the actor is gone
            self._actor_died(actor, error)
            return
        self._take(actor, reply)
        with self._lock:
            if actor.closing and reply.more:  # stopped, with more waiting than one reply holds
                actor.pending = actor.handle.drain.remote(self._after(), 0)
            elif actor.closing:  # its stop() answered: its streams' last stats came with it
                self._forget_actor(actor)
            elif not actor.streams:
                # Nothing left on it: stop() sends what its pipeline still has (each stream's last stats).
                actor.closing = True
                actor.pending = actor.handle.stop.remote(self._after())

    def _send_removes(self) -> None:
        """A removal goes to the actor once the stream's ``add`` has run there (the actor is threaded:
        calls sent together may run in any order)."""
        with self._lock:
            for name, s in self._streams.items():
                actor = s.actor
                if s.removing and not s.remove_sent and actor is not None and name not in actor.adding:
                    s.remove_sent = True
                    actor.handle.remove.remote(name)  # its end comes as stream_ended; a dead actor's, by restart rules

    def _take(self, actor: _Actor, reply: DrainReply) -> None:
        if actor.node != reply.node:
            actor.node = reply.node
            log.info("stream(s) %s run on node %s", ", ".join(sorted(actor.streams)), reply.node)
        with self._lock:  # outcomes first: the reply's terminal record ends the stream's outcome
            for name, outcome in reply.outcomes.items():
                s = self._streams.get(name)
                if s is not None and s.actor is actor and not s.finished.is_set():
                    s.outcome = replace(outcome, started=outcome.started or s.outcome.started,
                                        estimates=s.counted + outcome.estimates, ended=False)
        for record in reply.records:
            self._write_record(record, actor)
        with self._lock:
            for name in list(actor.streams):
                if self._streams[name].finished.is_set():
                    actor.streams.discard(name)

    def _write_record(self, record: StreamRecord, origin: _Actor | None = None) -> None:
        """Write one record in its stream's seq order; ``origin``: the actor it came from (None: made here)."""
        with self._lock:
            s = self._streams.get(record.stream)
            if s is None or record.seq < s.next_seq or (origin is not None and s.actor is not origin):
                # Handed over twice (a reply lost, asked for again), or from an actor the stream has left
                # (a removed name added again elsewhere): the first one, from the stream's actor, counts.
                return
            s.next_seq = record.seq + 1
            if isinstance(record, Estimate):
                s.last_ts = max(s.last_ts, record.ts)
        if isinstance(record, Stats) and self.sink_lags is not None:
            record = dataclasses.replace(record, fields=dataclasses.replace(record.fields,
                                                                            sinks=self.sink_lags(record.stream)))
        self._write(record)
        if isinstance(record, Event) and record.kind in TERMINAL_KINDS:
            with self._lock:
                s.outcome = replace(s.outcome, ended=True, outcome=record.outcome, detail=record.detail or "")
                s.finished.set()

    def _write(self, record: StreamRecord) -> None:
        self._sink.write(record)
        if self.on_record is not None:
            self.on_record(record)

    def _actor_died(self, actor: _Actor, error: Exception) -> None:
        with self._lock:
            self._forget_actor(actor)
            names = [name for name in actor.streams if not self._streams[name].finished.is_set()]
            actor.streams.clear()
            if actor.closing or self._stop.is_set():
                return
            if getattr(error, "actor_init_failed", False):  # it would fail the same way on any node
                log.error("a stream actor could not start: %s", _first_line(error))
                for name in names:
                    self._end_here(name, f"its actor could not start: {_first_line(error)}", EventKind.STREAM_ERROR)
                return
            log.warning("the actor of %s on node %s is gone (%s): restarting them on another node",
                        ", ".join(sorted(names)) or "no stream", actor.node[:12], type(error).__name__)
            for name in names:
                self._restart(name, actor.node, error)

    def _restart(self, name: str, node: str, error: Exception) -> None:
        """A stream whose actor died goes on on a new one (called with the lock held)."""
        s = self._streams[name]
        if s.removing:
            self._end_here(name, "removed while its actor was gone")
            return
        now = time.monotonic()
        s.restarts = [t for t in s.restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(s.restarts) > MAX_RESTARTS:
            self._end_here(name, f"its actor was lost {len(s.restarts)} times in {RESTART_WINDOW_S:g} s "
                                 f"(last: {type(error).__name__} on node {node[:12]}): not restarted again",
                           EventKind.STREAM_ERROR)
            return
        s.counted = s.outcome.estimates
        self._write_numbered(name, EventKind.STREAM_RESTARTED,
                             f"its actor on node {node[:12]} stopped ({type(error).__name__}); "
                             f"restarted from {s.last_ts:.1f} s")
        s.spec = replace(s.spec, resume_ts=s.last_ts)
        self._place(name, avoid=node)

    def _end_here(self, name: str, detail: str, kind: EventKind = EventKind.STREAM_ENDED) -> None:
        """A stream that can no longer end on an actor ends here: stopped, or (``STREAM_ERROR``) failed."""
        with self._lock:
            s = self._streams[name]
            if s.finished.is_set():
                return
            s.actor = None
            outcome = SourceOutcome.STOPPED if kind is EventKind.STREAM_ENDED else None
            self._write_numbered(name, kind, detail, outcome=outcome)

    def _write_numbered(self, name: str, kind: EventKind, detail: str, **fields: Any) -> None:
        s = self._streams[name]
        self._write_record(Event(stream=name, seq=s.next_seq, ts=s.last_ts, wall=wall_ms(), kind=kind,
                                 detail=detail, **fields))

    def _seal_if_over(self) -> None:
        with self._lock:
            if self._done.is_set() or self._allow_empty:
                return
            if all(s.finished.is_set() for s in self._streams.values()):
                self._stop.set()
        if self._stop.is_set():
            self._sink.flush()
            self._done.set()


class RayCluster:
    """The run's connection to Ray and its models' deployment (``run --ray``); ``close`` ends both."""

    def __init__(self, placement: RayPlacement, handle: Any, app: str, started_ray: bool, info: ModelsInfo) -> None:
        self.placement = placement
        self.handle = handle
        self.app = app
        self.info = info
        self._started_ray = started_ray

    @classmethod
    def connect(cls, args: Any, choice: Any) -> RayCluster:
        """Join the cluster at ``--ray`` (``local``: start Ray here) and deploy the models on it."""
        import socket

        from affectstream.stream.ray_models import app_name, deploy, import_serve

        import_serve()  # the extra is checked before Ray starts
        import ray

        placement = RayPlacement(streams_per_actor=args.ray_streams_per_actor, stream_cpus=args.ray_stream_cpus,
                                 models=ModelPlacement(replicas=args.ray_replicas, gpus=args.ray_gpus,
                                                       cpus=args.ray_cpus, max_batch=args.max_batch))
        started = not ray.is_initialized()
        if started:  # (preflight_run checked that the address answers)
            try:
                if args.ray == "local":
                    ray.init(include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=args.ray, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ConfigError(f"--ray {args.ray}: no Ray cluster answers there ({error}); start one with "
                                  "`ray start --head` or pass --ray local") from None
        resources = ray.cluster_resources()
        log.info("Ray cluster: %d node(s), %g CPUs, %g GPUs; deploying the models (%d replica(s))",
                 len([n for n in ray.nodes() if n.get("Alive")]), resources.get("CPU", 0),
                 resources.get("GPU", 0), placement.models.replicas)
        app = app_name(socket.gethostname(), None if args.no_serve else args.port, os.getpid())
        try:
            _check_room(placement.models, resources)  # Serve would wait for it forever
            handle = deploy(choice, placement.models, app)
            info = handle.info.remote().result(timeout_s=CALL_TIMEOUT_S)
        except Exception as error:  # no room, or a replica that cannot load the models (files missing on a node)
            if started:
                ray.shutdown()
            if isinstance(error, ConfigError):
                raise
            raise ModelError(f"the models' deployment did not start on the cluster: {_first_line(error)}") from None
        return cls(placement, handle, app, started, info)

    def pipeline(self, sources: Sequence[tuple[str, str]], engine: Any, config: Any, sink: Sink,
                 first_seqs: Mapping[str, int], allow_empty: bool) -> RayPipeline:
        from affectstream.stream.ray_models import RemoteFaceModel

        info = self.info
        faces = None
        if engine.faces is not None and info.detector is not None:
            faces = RemoteFaceModel(engine.faces, self.handle, info.detector)
        kit = StreamKit(config=config, labels=engine.labels, frame_labels=engine.frame_labels,
                        head=engine.head if info.encoder is not None else None, encoder=info.encoder,
                        faces=faces, models=self.handle)
        try:
            return RayPipeline(sources, kit, sink, self.placement, first_seqs, allow_empty=allow_empty)
        except TypeError as error:  # ray.put of the kit: a head that cannot travel
            raise ModelError(f"this model's temporal head cannot be sent to the stream actors ({error}): "
                             "pass --head zero-shot or a bundle with a torch LSTM") from None

    def model_info(self, engine: Any) -> dict[str, Any]:
        """The hello's model info, with the face stage as the replicas resolved it."""
        info = dict(engine.model_info)
        if self.info.faces is not None:
            info["faces"] = dict(self.info.faces)
        return info

    def close(self) -> None:
        from affectstream.stream.ray_models import shutdown

        shutdown(self.app)
        if self._started_ray:
            import ray

            ray.shutdown()


def _check_room(models: ModelPlacement, resources: Mapping[str, float]) -> None:
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if models.gpus and models.replicas * models.gpus > gpus + 1e-9:
        raise ConfigError(f"--ray-replicas {models.replicas} x --ray-gpus {models.gpus:g} needs "
                          f"{models.replicas * models.gpus:g} GPUs; the cluster has {gpus:g}")
    if models.replicas * models.cpus > cpus + 1e-9:
        raise ConfigError(f"--ray-replicas {models.replicas} x --ray-cpus {models.cpus:g} needs "
                          f"{models.replicas * models.cpus:g} CPUs; the cluster has {cpus:g}")


def check_reachable(address: str) -> None:
    """Ray's own connect waits minutes for an address where nothing listens: a TCP try first (5 s)."""
    import socket
    from urllib.parse import urlsplit

    if address in ("local", "auto"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ConfigError(f"--ray {address!r}: give HOST:PORT (the head's GCS, 6379 by default), ray://HOST:10001, "
                          "auto or local")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        raise ConfigError(f"--ray {address}: nothing answers there ({error.strerror or error}); start the head "
                          "with `ray start --head` or pass --ray local") from None


def _first_line(error: object) -> str:
    """An error's gist: Ray's exceptions carry whole remote tracebacks."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    gist = next((line for line in reversed(lines) if "Error" in line and not line.startswith("File ")), None)
    return (gist or (lines[0] if lines else type(error).__name__))[:300]
