"""What `run`, `analyze` and `bundle` do, given parsed arguments (affectstream/cli.py parses them)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from affectstream._shutdown import HurryOnSignal
from affectstream.checks import parse_windows
from affectstream.engine.runtime import Engine, EngineChoice, load_engine
from affectstream.errors import ConfigError, ExitStatus, SourceOutcome
from affectstream.stream.batcher import BatchConfig
from affectstream.stream.face_session import FaceConfig
from affectstream.stream.messages import StreamRecord
from affectstream.stream.netloc import host_port
from affectstream.stream.pipeline import Pipeline, PipelineConfig, StreamOutcome, faces_refusal
from affectstream.stream.session import AnalyticsConfig
from affectstream.stream.sinks import FanoutSink, JsonlSink, Sink
from affectstream.stream.sources import SourceConfig

if TYPE_CHECKING:
    from affectstream.engine.interfaces import EventThresholds
    from affectstream.stream.delivery import Delivery
    from affectstream.stream.frames import VideoFrame
    from affectstream.stream.ray_run import RayPipeline
    from affectstream.stream.recording import AnnotatedRecorder
    from affectstream.stream.server import StreamServer
    from affectstream.stream.stream_config import ConfigReloader, RunConfig
    from affectstream.stream.video_routes import VideoService

log = logging.getLogger("affectstream")

SINK_FLUSH_S = 5.0  # at the end of a run, how long sinks may take to send what waits (then the log keeps it)

# Outcomes after which nothing at all was read from a source.
_NOTHING_READ = {
    SourceOutcome.MISSING, SourceOutcome.EMPTY, SourceOutcome.NOT_VIDEO, SourceOutcome.NO_VIDEO_TRACK,
    SourceOutcome.OPEN_TIMEOUT, SourceOutcome.DEVICE_UNAVAILABLE, SourceOutcome.NO_SUCH_DEVICE,
    SourceOutcome.CONNECTION_LOST, SourceOutcome.DENIED,
}




def parse_sources(specs: list[str]) -> list[tuple[str, str]]:
    """``NAME=URI`` names a stream; otherwise streams are called s0, s1, …"""
    sources = []
    for index, spec in enumerate(specs):
        name, sep, uri = spec.partition("=")
        if sep and name and "://" not in name and "/" not in name:
            sources.append((name, uri))
        else:
            sources.append((f"s{index}", spec))
    return sources


def pipeline_config(args: argparse.Namespace, pace_files: bool, engine: Engine) -> PipelineConfig:
    """The run's settings; event thresholds default to the model's own (softmax scores over seven
    classes rarely pass the whole-frame head's 0.6), ``--onset``/``--offset`` override them. A run with
    faces and CLIP has the whole-frame head's too, for a stream with faces off (``--config``)."""
    analytics = _analytics(args, engine.thresholds)
    frame_analytics = None
    if engine.faces is not None and engine.encoder is not None:
        frame_analytics = _analytics(args, engine.frame_thresholds)
    return PipelineConfig(
        rate_hz=args.rate,
        pace_files=pace_files,
        batch=BatchConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms),
        analytics=analytics,
        frame_analytics=frame_analytics,
        source=SourceConfig(open_timeout_s=args.open_timeout, read_timeout_s=args.read_timeout,
                            open_retries=None if args.open_retries < 0 else int(args.open_retries),
                            max_frame_side=args.max_frame_side or None),
        faces=FaceConfig(uncertain_below=args.uncertain_below),
        clip_input=_clip_input(args, engine),
        stats_interval_s=args.stats_interval,
    )


def _analytics(args: argparse.Namespace, thresholds: EventThresholds) -> AnalyticsConfig:
    onset = args.onset if args.onset is not None else thresholds.onset
    offset = args.offset if args.offset is not None else min(thresholds.offset, onset)
    if offset > onset:
        raise ConfigError(f"--offset {offset:g} is above this model's onset threshold {onset:g}: pass a lower "
                          f"--offset or an --onset of at least {offset:g}")
    return AnalyticsConfig(windows_s=parse_windows(args.windows), onset_threshold=onset, offset_threshold=offset)


def _clip_input(args: argparse.Namespace, engine: Engine) -> str:
    """``--clip-input``; auto: what the bundle's LSTM was trained on (faces after ``extract --faces``)."""
    if args.clip_input != "auto":
        return str(args.clip_input)
    return engine.clip_input if engine.faces is not None and engine.encoder is not None else "frame"


def engine_from_args(args: argparse.Namespace, offline: bool = False) -> Engine:
    return load_engine(engine_choice(args, offline))


def engine_choice(args: argparse.Namespace, offline: bool = False) -> EngineChoice:
    return EngineChoice(
        offline=offline,
        model=args.model,
        bundle=Path(args.bundle) if args.bundle else None,
        head=args.head,
        device=args.device,
        dynamic_threshold=args.dynamic_threshold,
        backend=getattr(args, "backend", "auto"),
        precision=getattr(args, "precision", "auto"),
        faces=args.faces,
        detector=args.detector,
        expression=Path(args.expression) if args.expression else None,
        detect_interval_s=args.detect_every,
    )


def stream_status(outcome: StreamOutcome) -> int:
    """The exit status one stream earns (docs/cli.md)."""
    if not outcome.ended or outcome.outcome is SourceOutcome.STOPPED:
        # Stopped (Ctrl-C, --duration): fine if it ever started; a camera that never answered is not.
        return ExitStatus.OK if outcome.started else ExitStatus.NOTHING
    if outcome.outcome is SourceOutcome.ENDED:
        return ExitStatus.OK
    if not outcome.estimates and (outcome.outcome in _NOTHING_READ or not outcome.started):
        return ExitStatus.NOTHING  # a source that never opened gave nothing, whatever its outcome
    return ExitStatus.PARTIAL


def exit_status(outcomes: Mapping[str, StreamOutcome]) -> int:
    """0 if every stream ended well, 4 if none gave anything, else 3."""
    statuses = {stream_status(outcome) for outcome in outcomes.values()}
    if not statuses:
        return ExitStatus.OK  # a run that waited for browser cameras and none came: nothing went wrong
    if statuses == {ExitStatus.NOTHING}:
        return ExitStatus.NOTHING
    return ExitStatus.OK if statuses == {ExitStatus.OK} else ExitStatus.PARTIAL


def run_command(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.checks import preflight_run

    sources = parse_sources(args.sources)
    run_config = _run_config(args, sources)
    preflight_run(args, sources)  # before the model loads: a mistake costs a second, not the load
    # --ray: the models run on the cluster's replicas (on --device, --backend there); the driver's copy
    # gives the labels, thresholds and the head each stream actor gets: torch on the CPU, like the
    # actors that step it (an ONNX Runtime head cannot travel to them).
    if args.ray:
        engine = load_engine(replace(engine_choice(args), device="cpu", backend="torch", precision="auto"))
    else:
        engine = engine_from_args(args)
    config = pipeline_config(args, pace_files=not args.fast, engine=engine)
    _check_stream_faces(args, run_config, engine, config)
    recorder = _recorder(args, engine.labels)  # --record: its directory is made here
    sinks: list[Sink] = []
    if not args.quiet:
        # A person at a terminal reads lines; a program at the other end of a pipe gets JSON Lines.
        sinks.append(JsonlSink.to_stdout(readable=sys.stdout.isatty() and not args.jsonl))
    if args.out:
        sinks.append(JsonlSink.to_path(Path(args.out), line_flush=True))
    cluster = None
    if args.ray:  # before the server: a cluster that cannot take the run stops it with nothing started
        from affectstream.stream.ray_run import RayCluster

        cluster = RayCluster.connect(args, engine_choice(args))
        engine = replace(engine, model_info=cluster.model_info(engine))  # the hello says what the replicas run
    server = None
    video = None
    delivery = None
    streams: list[Pipeline | RayPipeline] = []  # the hello lists the pipeline's streams, browser cameras included
    if not args.no_serve:
        from affectstream.stream.server import server_from_args

        initial = [sid for sid, _ in sources]
        server = server_from_args(args, environment, engine, lambda: streams[0].stream_ids if streams else initial)
        sinks.append(server)
        video = None if args.ray else _video_service(args, config)  # --ray: the frames stay on the nodes
        if video is not None:
            video.mount(server)
        delivery = _delivery(args, server)
    sink = FanoutSink(sinks)
    first_seqs: dict[str, int] = {}
    if server is not None:
        server.start()
        if delivery is not None:
            delivery.start()
        log.info("dashboard and websocket at http://%s/", host_port(args.host, server.port))
        if args.allow_browser_sources:
            log.info("browser cameras join at http://%s/capture", host_port(args.host, server.port))
        first_seqs = {sid: server.next_seq(sid) for sid, _ in sources}
    # Streams may come at any time (browser cameras, the API, a re-read --config): such a run lasts
    # until it is stopped (or --duration).
    if cluster is not None:
        pipeline: Pipeline | RayPipeline = cluster.pipeline(sources, engine, config, sink, first_seqs,
                                                            allow_empty=_keeps_running(args))
    else:
        pipeline = Pipeline(sources, engine.encoder, engine.head, sink, engine.labels, config,
                            first_seqs=first_seqs, faces=engine.faces, allow_empty=_keeps_running(args),
                            frame_labels=engine.frame_labels)
    streams.append(pipeline)
    if delivery is not None:
        pipeline.sink_lags = delivery.lags_of
    reloader = _control(args, server, pipeline, run_config)
    if video is not None and isinstance(pipeline, Pipeline):  # --ray has no video here
        video.attach(pipeline)
    overlay = None
    if args.show:
        from affectstream.stream.overlay import OverlayWindow

        overlay = OverlayWindow(engine.labels)
        pipeline.on_frame = overlay.on_frame
        pipeline.on_record = overlay.on_record
    _attach_taps(pipeline, [tap for tap in (recorder, video) if tap is not None])
    pipeline.start()
    interrupted = False
    try:
        deadline = None if args.duration is None else time.monotonic() + args.duration
        if overlay is not None:
            stop = threading.Event()
            if deadline is not None:
                timer = threading.Timer(args.duration, stop.set)
                timer.daemon = True  # a file that ends first must not wait for it
                timer.start()
            overlay.run(stop, _DoneEvent(pipeline))
        else:
            while not pipeline.wait(0.2):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if reloader is not None:
                    reloader.poll()
            if server is not None and args.linger > 0 and pipeline.wait(0):
                _linger(args.linger, server.port, args.host)
    except KeyboardInterrupt:
        interrupted = True
        log.info("stopping: flushing what is in flight")
    finally:
        with HurryOnSignal(_hurry(pipeline, recorder)) as guard:
            pipeline.stop()
            sink.flush()
            recorded = _close_recorder(recorder)
            if server is not None:
                if delivery is not None:
                    server.settle()  # the last messages are stored, so the sinks can send them
                    delivery.close(SINK_FLUSH_S)
                server.stop()
            if video is not None:
                video.close()
            if cluster is not None:
                cluster.close()
            sink.close()
    status = exit_status(pipeline.outcomes)
    if not recorded and status == ExitStatus.OK:
        status = ExitStatus.PARTIAL  # analysed, but the video asked for is not (all) written
    if server is not None and server.log_health.failed and status == ExitStatus.OK:
        status = ExitStatus.PARTIAL  # delivered live, but a later resume will not find all of it
    if (interrupted or guard.status is not None) and status == ExitStatus.OK:
        return ExitStatus.OK  # a live run stopped on request ends well
    return status


def _linger(seconds: float, port: int, host: str) -> None:
    """Every stream ended: the server stays up so that the dashboard can still be looked at."""
    log.info("every stream ended; the dashboard stays at http://%s/ for %g s (Ctrl-C to stop sooner)",
             host_port(host, port), seconds)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.2, left))


class _DoneEvent(threading.Event):
    """Adapts ``Pipeline.wait`` to the ``is_set`` the overlay loop polls."""

    def __init__(self, pipeline: Pipeline | RayPipeline) -> None:
        super().__init__()
        self._pipeline = pipeline

    def is_set(self) -> bool:
        return self._pipeline.wait(0)


def _recorder(args: argparse.Namespace, labels: tuple[str, ...]) -> AnnotatedRecorder | None:
    """The annotated video's writer: ``--annotate FILE`` (analyze), ``--record DIR`` (run); else None."""
    from affectstream.stream.recording import DEFAULT_SEGMENT_S, AnnotatedRecorder

    if getattr(args, "annotate", None):
        return AnnotatedRecorder.to_file(Path(args.annotate), labels)
    if getattr(args, "record", None):
        directory = Path(args.record)
        try:
            directory.mkdir(exist_ok=True)
        except OSError as error:
            raise ConfigError(f"--record {directory}: {error.strerror or error}; pick another path") from None
        segment = args.record_segment if args.record_segment is not None else DEFAULT_SEGMENT_S
        return AnnotatedRecorder.to_directory(directory, labels, segment_s=segment)
    return None


class _Tap(Protocol):
    """What sees every frame the pumps read and every record: the annotated video, the dashboard's video."""

    def on_decoded(self, frame: VideoFrame, sampled: bool, live: bool) -> None: ...

    def on_record(self, record: StreamRecord) -> None: ...


def _attach_taps(pipeline: Pipeline | RayPipeline, taps: Sequence[_Tap]) -> None:
    """Every frame the pumps read, and the records, go to each tap too (besides any other record tap)."""
    if not taps:
        return
    other = pipeline.on_record

    def decoded(frame: VideoFrame, sampled: bool, live: bool) -> None:
        for tap in taps:
            tap.on_decoded(frame, sampled, live)

    def record(record: StreamRecord) -> None:
        if other is not None:
            other(record)
        for tap in taps:
            tap.on_record(record)

    pipeline.on_decoded = decoded
    pipeline.on_record = record


def _keeps_running(args: argparse.Namespace) -> bool:
    return bool(args.allow_browser_sources or args.keep_running or args.config)


def _run_config(args: argparse.Namespace, sources: list[tuple[str, str]]) -> RunConfig | None:
    """``--config FILE``: its sinks join ``--sink``; its streams are added once the pipeline exists."""
    if not args.config:
        return None
    from affectstream.stream.stream_config import read_config

    run_config = read_config(Path(args.config))
    taken = {name for name, _ in sources} & {s.name for s in run_config.streams}
    if taken:
        raise ConfigError(f"stream name(s) {', '.join(sorted(taken))} are on the command line and in --config "
                          f"{args.config}: name each stream once")
    args.sink = [*args.sink, *run_config.sinks]
    return run_config


def _check_stream_faces(args: argparse.Namespace, run_config: RunConfig | None, engine: Engine,
                        config: PipelineConfig) -> None:
    """``--config`` streams' ``faces`` this run can do (a mistake in the file: exit status 2, nothing started)."""
    for request in run_config.streams if run_config is not None else ():
        refusal = faces_refusal(request.faces, engine.faces is not None, engine.encoder is not None, config.clip_input)
        if refusal is not None:
            raise ConfigError(f"--config {args.config}, stream {request.name!r}: {refusal}")


def _control(args: argparse.Namespace, server: StreamServer | None, pipeline: Pipeline | RayPipeline,
             run_config: RunConfig | None) -> ConfigReloader | None:
    """Stream control over this pipeline (the API, websocket messages) and ``--config``'s streams and
    SIGHUP; the reloader, when there is a file to re-read."""
    from affectstream.stream.control import Controller

    controller = Controller(pipeline, server.next_seq if server is not None else None)
    if server is not None:
        server.attach_control(controller)
    if run_config is None:
        return None
    from affectstream.stream.stream_config import ConfigReloader

    for request in run_config.streams:
        controller.add(request)  # what the file asks the run can do: _check_stream_faces said so
    reloader = ConfigReloader(Path(args.config), controller, pipeline.wait_stream, run_config)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: reloader.request())
    return reloader


def _delivery(args: argparse.Namespace, server: StreamServer) -> Delivery | None:
    """``--sink``: one thread per sink, sending from the server's event log (stream/delivery.py)."""
    if not args.sink:
        return None
    from affectstream.stream.brokers import parse_sink
    from affectstream.stream.delivery import Delivery

    delivery = Delivery([parse_sink(url) for url in args.sink], server.log_access(),
                        estimates_stored=server.config.estimate_retention_s > 0)
    server.attach_delivery(delivery)
    return delivery


def _video_service(args: argparse.Namespace, config: PipelineConfig) -> VideoService | None:
    """The dashboard's video and the browser cameras (``--no-video``: none)."""
    if args.no_video:
        return None
    from affectstream.stream.video_feed import VideoSettings
    from affectstream.stream.video_routes import VideoService

    settings = VideoSettings(max_lines=args.video_lines, max_fps=args.video_fps)
    return VideoService(settings, max_peers=args.max_peers, allow_browser_sources=args.allow_browser_sources,
                        source_config=config.source)


def _hurry(pipeline: Pipeline | RayPipeline, recorder: AnnotatedRecorder | None) -> Callable[[], None]:
    def hurry() -> None:
        if recorder is not None:
            recorder.hurry()
        pipeline.hurry()

    return hurry


def _close_recorder(recorder: AnnotatedRecorder | None) -> bool:
    """Write the rest and close the files (after ``pipeline.stop``); False if writing failed."""
    if recorder is None:
        return True
    return not recorder.close().errors  # each file and each failure was logged as it happened


def analyze_command(args: argparse.Namespace) -> int:
    """`affectstream analyze FILE|DIR …`: affectstream/analyze.py."""
    from affectstream.analyze import analyze_command as analyze

    return analyze(args)


def bundle_command(args: argparse.Namespace) -> int:
    if args.bundle_command == "create":
        from affectstream.engine.encoder import resolve_device
        from affectstream.engine.models import ModelSpec
        from affectstream.engine.runtime import create_zero_shot_bundle

        spec = ModelSpec.from_preset(args.model)
        path = create_zero_shot_bundle(spec, Path(args.out), resolve_device(args.device))
        print(path)
        return ExitStatus.OK
    from affectstream.engine.bundle import load_bundle

    bundle = load_bundle(Path(args.path))
    print(json.dumps(bundle.manifest, indent=2))
    return ExitStatus.OK
