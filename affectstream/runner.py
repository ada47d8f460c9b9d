"""What `run`, `analyze` and `bundle` do, given parsed arguments (affectstream/cli.py parses them)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from affectstream.engine.runtime import Engine, EngineChoice, load_engine
from affectstream.errors import ConfigError, SourceOutcome
from affectstream.stream.batcher import BatchConfig
from affectstream.stream.messages import Message
from affectstream.stream.pipeline import Pipeline, PipelineConfig
from affectstream.stream.session import AnalyticsConfig, StreamSession
from affectstream.stream.sinks import FanoutSink, JsonlSink, MemorySink, Sink
from affectstream.stream.sources import SourceConfig

log = logging.getLogger("affectstream")

EXIT_OK, EXIT_PARTIAL, EXIT_NOTHING, EXIT_INTERRUPTED = 0, 3, 4, 130
# Outcomes after which nothing at all was read from a source.
_NOTHING_READ = {
    SourceOutcome.MISSING, SourceOutcome.EMPTY, SourceOutcome.NOT_VIDEO, SourceOutcome.NO_VIDEO_TRACK,
    SourceOutcome.OPEN_TIMEOUT, SourceOutcome.DEVICE_UNAVAILABLE,
}


def parse_windows(text: str) -> tuple[float, ...]:
    try:
        windows = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"--windows takes seconds separated by commas, e.g. 5,60; got {text!r}") from error
    if not windows or any(w <= 0 for w in windows):
        raise ConfigError(f"--windows needs positive seconds, got {text!r}")
    return windows


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


def pipeline_config(args: argparse.Namespace, pace_files: bool) -> PipelineConfig:
    return PipelineConfig(
        rate_hz=args.rate,
        pace_files=pace_files,
        batch=BatchConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms),
        analytics=AnalyticsConfig(windows_s=parse_windows(args.windows)),
        source=SourceConfig(open_timeout_s=args.open_timeout, read_timeout_s=args.read_timeout),
        stats_interval_s=args.stats_interval,
    )


def engine_from_args(args: argparse.Namespace, offline: bool = False) -> Engine:
    return load_engine(EngineChoice(
        offline=offline,
        model=args.model,
        bundle=Path(args.bundle) if args.bundle else None,
        head=args.head,
        device=args.device,
        dynamic_threshold=args.dynamic_threshold,
        backend=getattr(args, "backend", "auto"),
        precision=getattr(args, "precision", "auto"),
    ))


class OutcomeTracker:
    """A sink that remembers how each stream ended, for the exit status."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        self.estimates: dict[str, int] = {}
        self.started: set[str] = set()

    def write(self, message: Message) -> None:
        if message.get("type") == "estimate":
            self.estimates[message["stream"]] = self.estimates.get(message["stream"], 0) + 1
        elif message.get("type") == "event" and message.get("kind") == "stream_started":
            self.started.add(message["stream"])
        elif message.get("type") == "event" and message.get("kind") in ("stream_ended", "stream_error"):
            self.outcomes[message["stream"]] = str(message.get("outcome") or message["kind"])

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def stream_status(self, stream_id: str) -> int:
        outcome = self.outcomes.get(stream_id, SourceOutcome.STOPPED.value)
        if outcome == SourceOutcome.STOPPED.value and stream_id not in self.started:
            return EXIT_NOTHING  # a camera that never answered before Ctrl-C or --duration
        if outcome in (SourceOutcome.ENDED.value, SourceOutcome.STOPPED.value):
            return EXIT_OK
        if not self.estimates.get(stream_id) and outcome in {o.value for o in _NOTHING_READ}:
            return EXIT_NOTHING
        return EXIT_PARTIAL

    def exit_status(self, stream_ids: list[str]) -> int:
        """0 if every stream ended well, 4 if none gave anything, else 3."""
        statuses = {self.stream_status(stream_id) for stream_id in stream_ids}
        if statuses == {EXIT_NOTHING}:
            return EXIT_NOTHING
        return EXIT_OK if statuses == {EXIT_OK} else EXIT_PARTIAL


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _install_sigterm() -> None:
    # SIGTERM (systemd, docker stop) shuts down like Ctrl-C: flush and exit cleanly.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def run_command(args: argparse.Namespace, environment: dict[str, str]) -> int:
    sources = parse_sources(args.sources)
    config = pipeline_config(args, pace_files=not args.fast)
    engine = engine_from_args(args)
    tracker = OutcomeTracker()
    sinks: list[Sink] = [tracker]
    if not args.quiet:
        sinks.append(JsonlSink.to_stdout())
    if args.out:
        sinks.append(JsonlSink.to_path(Path(args.out), line_flush=True))
    server = None
    if not args.no_serve:
        from affectstream.stream.server import server_from_args

        server = server_from_args(args, environment, engine, [sid for sid, _ in sources])
        sinks.append(server)
    sink = FanoutSink(sinks)
    first_seqs: dict[str, int] = {}
    if server is not None:
        server.start()
        log.info("dashboard and websocket at http://%s:%d/", args.host, server.port)
        first_seqs = {sid: server.next_seq(sid) for sid, _ in sources}
    pipeline = Pipeline(sources, engine.encoder, engine.head, sink, engine.labels, config,
                        first_seqs=first_seqs)
    overlay = None
    if args.show:
        from affectstream.stream.overlay import OverlayWindow

        overlay = OverlayWindow(engine.labels)
        pipeline.on_frame = overlay.on_frame
        pipeline.on_message = overlay.on_message
    _install_sigterm()
    pipeline.start()
    interrupted = False
    try:
        deadline = None if args.duration is None else time.monotonic() + args.duration
        if overlay is not None:
            stop = threading.Event()
            if deadline is not None:
                threading.Timer(args.duration, stop.set).start()
            overlay.run(stop, _DoneEvent(pipeline))
        else:
            while not pipeline.wait(0.2):
                if deadline is not None and time.monotonic() >= deadline:
                    break
    except KeyboardInterrupt:
        interrupted = True
        log.info("stopping: flushing what is in flight")
    finally:
        pipeline.stop()
        sink.flush()
        if server is not None:
            server.stop()
        sink.close()
    status = tracker.exit_status(pipeline.stream_ids)
    return EXIT_OK if interrupted and status == EXIT_OK else status


class _DoneEvent(threading.Event):
    """Adapts ``Pipeline.wait`` to the ``is_set`` the overlay loop polls."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__()
        self._pipeline = pipeline

    def is_set(self) -> bool:
        return self._pipeline.wait(0)


def analyze_command(args: argparse.Namespace) -> int:
    from affectstream.stream.report import FileReport

    path = Path(args.file)
    engine = engine_from_args(args, offline=True)
    recorder = None
    if engine.sequence_model is not None:
        from affectstream.stream.offline import RecordingHead

        recorder = RecordingHead(engine.head)
    config = pipeline_config(args, pace_files=False)
    memory, tracker = MemorySink(), OutcomeTracker()
    started = time.monotonic()
    interrupted = _analyze_pass(path, config, engine, recorder or engine.head, FanoutSink([memory, tracker]))
    messages = list(memory.messages)
    if recorder is not None:
        messages = _rescore_whole_file(messages, recorder, engine, config.analytics)
    if args.out:
        jsonl = JsonlSink.to_path(Path(args.out))
        try:
            for message in messages:
                jsonl.write(message)
        finally:
            jsonl.close()
    report = FileReport(engine.labels, top_k=args.top)
    for message in messages:
        report.add_message(message)
    summary: dict[str, Any] = report.to_dict(source={"path": str(path), "model": engine.model_info},
                                               damage=_damage_from(messages))
    summary["processing"] = {"seconds": round(time.monotonic() - started, 3), "interrupted": interrupted}
    out = Path(args.summary) if args.summary else Path(path.name + ".affect.json")
    out.write_text(json.dumps(summary, indent=2, allow_nan=False))
    status = tracker.exit_status(["file"])
    _print_summary(summary, out, status)
    return EXIT_INTERRUPTED if interrupted else status


def _analyze_pass(path: Path, config: PipelineConfig, engine: Engine, head: Any, sink: Sink) -> bool:
    """Run the file through the pipeline as fast as possible; True if Ctrl-C cut it short."""
    pipeline = Pipeline([("file", str(path))], engine.encoder, head, sink, engine.labels, config)
    pipeline.start()
    try:
        while not pipeline.wait(0.2):
            pass
    except KeyboardInterrupt:
        return True
    finally:
        pipeline.stop()
        sink.close()
    return False


def _rescore_whole_file(messages: list[Message], recorder: Any, engine: Engine,
                        analytics: AnalyticsConfig) -> list[Message]:
    """The bidirectional model over the whole sequence; the messages replayed with its scores."""
    from affectstream.stream.offline import replay, rescore_sequence

    scores, sentiment = rescore_sequence(engine.sequence_model, recorder.features("file"))
    session = StreamSession("file", engine.labels, analytics)
    return replay(messages, scores, sentiment, session)


def _damage_from(messages: list[Message]) -> dict[str, Any]:
    """The terminal event of the file says how reading ended and what the reader counted as damaged."""
    for message in reversed(messages):
        if message.get("type") == "event" and message.get("kind") in ("stream_ended", "stream_error"):
            return {"outcome": message.get("outcome"), "detail": message.get("detail", ""),
                    **(message.get("damage") or {})}
    return {"outcome": "unknown"}


def _print_summary(summary: dict[str, Any], out: Path, status: int) -> None:
    frames = summary.get("frames", 0)
    damage = summary.get("damage", {})
    print(f"analysed {frames} frames; summary written to {out}", file=sys.stderr)
    if status != EXIT_OK:
        print(f"input problem: {damage.get('outcome')} {damage.get('detail', '')}".rstrip(), file=sys.stderr)


def bundle_command(args: argparse.Namespace) -> int:
    if args.bundle_command == "create":
        from affectstream.engine.encoder import resolve_device
        from affectstream.engine.models import ModelSpec
        from affectstream.engine.runtime import create_zero_shot_bundle

        spec = ModelSpec.from_preset(args.model)
        path = create_zero_shot_bundle(spec, Path(args.out), resolve_device(args.device))
        print(path)
        return EXIT_OK
    from affectstream.engine.bundle import load_bundle

    bundle = load_bundle(Path(args.path))
    print(json.dumps(bundle.manifest, indent=2))
    return EXIT_OK
