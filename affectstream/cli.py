"""The `affectstream` command. Settings are read here, once, and passed down as config objects.

Exit statuses (docs/cli.md):
  0  done: every source was read to its end (or stopped with Ctrl-C for live sources)
  1  unexpected internal error (a bug: please report it with the log)
  2  usage or configuration error (bad arguments, unknown model, bad bundle)
  3  partial: some input was damaged or failed; what could be read was analysed and written
  4  nothing could be analysed (missing file, empty, not a video, no video track, unreachable)
  130 interrupted before the end (Ctrl-C during `analyze`)
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from affectstream._version import __version__
from affectstream.checks import COUNT, NON_NEGATIVE, PORT, POSITIVE, PROBABILITY, frame_side, number
from affectstream.engine.interfaces import HeadKind
from affectstream.engine.precisions import PRECISIONS, Backend
from affectstream.errors import (
    AffectstreamError,
    ConfigError,
    ExitStatus,
    MissingExtraError,
    ModelError,
    Terminated,
    interrupted_status,
)
from affectstream.stream.sources import DEFAULT_FRAME_SIDE

log = logging.getLogger("affectstream")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help="model preset (clip-vit-b32 [default], tiny-random), a weights file, or ARCH:FILE")
    group.add_argument("--bundle", default=None, help="model bundle directory (made by train or bundle create)")
    group.add_argument("--head", default="auto", choices=[kind.value for kind in HeadKind],
                       help="temporal head; auto = the bundle's LSTM if it has one, else zero-shot")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--backend", default="auto", choices=[backend.value for backend in Backend],
                       help="image encoder backend; auto = the fastest one ready (docs/benchmarks.md)")
    group.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                       help="encoder precision; auto = fp16 on CUDA, else fp32 (int8 where build-engine made it)")
    group.add_argument("--dynamic-threshold", type=PROBABILITY, default=None, metavar="RATIO",
                       help="zero-shot: zero every score below RATIO x the frame's highest (the seed's rule)")
    faces = parser.add_argument_group("faces")
    faces.add_argument("--faces", default="on", choices=["on", "off"],
                       help="find, track and classify faces (default on; off: whole-frame CLIP only)")
    faces.add_argument("--detector", default="auto", metavar="NAME",
                       help="face detector: auto (mtcnn on CUDA, blazeface:back on the CPU), mtcnn, "
                       "blazeface[:front|back|full], haar, yunet:FILE.onnx (docs/faces.md)")
    faces.add_argument("--detect-every", type=NON_NEGATIVE, default=0.1, metavar="S",
                       help="detect faces at most once per S seconds of media time per stream; frames in "
                       "between reuse the boxes (default 0.1: every frame at a few Hz; 0: always)")
    faces.add_argument("--expression", default=None, metavar="DESCRIPTOR",
                       help="your own ONNX expression model: its JSON descriptor (docs/models.md); "
                       "default: fer's mini-Xception")
    faces.add_argument("--clip-input", default="auto", choices=["auto", "frame", "face"],
                       help="what CLIP encodes when it runs with faces: the whole frame or the largest face "
                       "(auto: what the bundle was trained on, else frame)")
    faces.add_argument("--uncertain-below", type=PROBABILITY, default=0.35, metavar="P",
                       help="a face whose smoothed top probability is under P is 'uncertain' (default 0.35)")


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline")
    group.add_argument("--rate", type=NON_NEGATIVE, default=None, metavar="HZ",
                       help="sampled frames per second of media time (default: 4 live, 2 files; 0 = every frame)")
    group.add_argument("--max-batch", type=COUNT, default=16, help="most frames encoded in one call")
    group.add_argument("--max-wait-ms", type=NON_NEGATIVE, default=10.0, help="longest a frame waits for a batch to fill")
    group.add_argument("--windows", default="5,60", metavar="S,S", help="rolling summary windows in seconds")
    group.add_argument("--onset", type=PROBABILITY, default=None, metavar="SCORE",
                       help="score an emotion must reach for an onset (default: the model's, 0.5 faces, 0.6 CLIP)")
    group.add_argument("--offset", type=PROBABILITY, default=None, metavar="SCORE",
                       help="score it must fall under for an offset (default: the model's, 0.3 faces, 0.4 CLIP)")
    group.add_argument("--out", default=None, metavar="FILE", help="also write every message to FILE as JSON Lines")
    group.add_argument("--open-timeout", type=POSITIVE, default=10.0, help="seconds to open a source")
    group.add_argument("--read-timeout", type=POSITIVE, default=5.0, help="seconds without a frame before a live "
                       "source counts as lost and reconnects")
    group.add_argument("--open-retries", type=number(-1, integer=True), default=5, metavar="N",
                       help="a live source that never connected gives up after N retries, N+1 failed opens "
                       "(-1: retry for ever); one that was up and went away keeps reconnecting")
    group.add_argument("--max-frame-side", type=frame_side, default=DEFAULT_FRAME_SIDE,
                       metavar="PX", help="decoded frames larger than this on their long side are reduced to it "
                       "as they are decoded (memory; boxes stay in the source's pixels); 0: full size")
    group.add_argument("--stats-interval", type=POSITIVE, default=2.0, help="seconds between stats messages")
    group.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v: per-frame debug; -vv: libraries too)")


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("websocket server and dashboard")
    group.add_argument("--host", default="127.0.0.1")
    group.add_argument("--port", type=PORT, default=8765, help="0 picks a free port")
    group.add_argument("--no-serve", action="store_true", help="do not start the websocket server")
    group.add_argument("--token", default=None, help="require this token from clients (or AFFECTSTREAM_TOKEN)")
    group.add_argument("--insecure", action="store_true", help="allow a non-loopback host without a token")
    group.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="extra browser Origin allowed to connect (repeatable)")
    group.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="host name clients may use to reach the server besides localhost and IP "
                       "addresses (repeatable; other names get 403, against DNS rebinding)")
    group.add_argument("--event-log", default=None, metavar="PATH",
                       help="SQLite event log for resume (default: in memory)")
    group.add_argument("--retention", type=POSITIVE, default=24 * 3600.0, metavar="S",
                       help="seconds of events and summaries kept in the event log")
    group.add_argument("--max-connections", type=COUNT, default=256)
    group.add_argument("--keep-estimates", type=NON_NEGATIVE, default=120.0, metavar="S",
                       help="seconds of estimates kept in the event log too, so that a late viewer sees the "
                       "timeline and last scores of a stream (0: events and summaries only)")


def _add_sink_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sinks: brokers, webhooks, files (at least once, from the event log)")
    group.add_argument("--sink", action="append", default=[], metavar="URL",
                       help="also deliver messages to mqtt://HOST/PREFIX, redis://HOST/DB?stream=KEY, "
                       "https://HOST/PATH (a webhook) or jsonl:PATH; ?types=event,summary and ?estimate_hz=F "
                       "choose what goes (repeatable; docs/cli.md \"Sinks\")")


def _add_video_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video in the dashboard (WebRTC, MJPEG) and browser cameras")
    group.add_argument("--no-video", action="store_true",
                       help="send no video to browsers (no /webrtc, /video or /capture routes)")
    group.add_argument("--video-lines", type=number(64, integer=True), default=720, metavar="N",
                       help="the dashboard's video is at most N lines high")
    group.add_argument("--video-fps", type=number(1, 60), default=15.0, metavar="F",
                       help="the dashboard's video is at most F frames per second")
    group.add_argument("--max-peers", type=COUNT, default=32, metavar="N",
                       help="WebRTC peers (viewers and browser cameras) at most; MJPEG viewers at most as many")
    group.add_argument("--allow-browser-sources", action="store_true",
                       help="a browser may send its camera as a stream from the /capture page (token and "
                       "Origin rules as for the websocket); with no SOURCE the run waits for cameras until stopped")


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a Ray cluster (docs/scaling.md; pip install affectstream[ray])")
    group.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run the streams on a Ray cluster: its address (HOST:6379, auto), "
                       "or 'local' for a Ray instance on this machine; the models run as a Ray Serve deployment")
    group.add_argument("--ray-streams-per-actor", type=COUNT, default=1, metavar="N",
                       help="streams one stream actor reads, samples and keeps the state of")
    group.add_argument("--ray-stream-cpus", type=NON_NEGATIVE, default=0.5, metavar="F",
                       help="Ray CPUs one stream actor reserves")
    group.add_argument("--ray-replicas", type=COUNT, default=1, metavar="N",
                       help="replicas of the models' deployment (one per GPU, or per CPU node)")
    group.add_argument("--ray-gpus", type=NON_NEGATIVE, default=0.0, metavar="F",
                       help="GPUs per model replica (0.5: two replicas share a GPU; 0: on the CPU)")
    group.add_argument("--ray-cpus", type=NON_NEGATIVE, default=1.0, metavar="F", help="Ray CPUs per model replica")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Shows each option's default, unless its help already says it or there is none (None, off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings
        return text if quiet else f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every command's --help shows each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectstream", description="Real-time emotion analysis for video.")
    parser.add_argument("--version", action="version", version=f"affectstream {__version__}")
    commands = cast("argparse._SubParsersAction[argparse.ArgumentParser]",
                    parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser))

    run = commands.add_parser("run", help="analyse live sources and files; stream messages as JSON Lines "
                              "and over a websocket")
    run.add_argument("sources", nargs="*", metavar="SOURCE",
                     help="file, webcam index or /dev/videoN, rtsp:// rtmp:// http(s):// (HLS) URL; "
                          "name it with NAME=SOURCE")
    run.add_argument("--fast", action="store_true", help="read files as fast as possible instead of in real time")
    run.add_argument("--show", action="store_true", help="draw live overlays in an OpenCV window")
    run.add_argument("--record", default=None, metavar="DIR",
                     help="write each stream's video with the overlays drawn on every frame into DIR, "
                     "in segments STREAM-YYYYmmddTHHMMSSZ.mp4 (docs/cli.md)")
    run.add_argument("--record-segment", type=number(1), default=None, metavar="S",
                     help="seconds of media time per --record file (default 300)")
    run.add_argument("--quiet", action="store_true", help="do not print messages on stdout")
    run.add_argument("--jsonl", action="store_true",
                     help="JSON Lines on stdout even on a terminal (through a pipe they always are)")
    run.add_argument("--duration", type=POSITIVE, default=None, metavar="S", help="stop after S seconds")
    run.add_argument("--config", default=None, metavar="FILE.toml",
                     help="streams (name, uri, rate, sinks) and sinks from a TOML file; SIGHUP re-reads it and "
                     "changes only the streams whose entry changed (docs/cli.md \"Streams while running\")")
    run.add_argument("--keep-running", action="store_true",
                     help="run until stopped even when no stream is running: streams come and go through "
                     "/api/streams (with no SOURCE too)")
    run.add_argument("--linger", type=NON_NEGATIVE, default=0.0, metavar="S",
                     help="once every stream has ended, keep the dashboard and websocket up S more seconds "
                     "(Ctrl-C ends it sooner) so that people can still look at what happened")
    _add_model_options(run)
    _add_pipeline_options(run)
    _add_server_options(run)
    _add_video_options(run)
    _add_sink_options(run)
    _add_ray_options(run)

    analyze = commands.add_parser("analyze", help="summarise whole video files as fast as the machine allows: "
                                  "a summary JSON and an HTML report per file")
    analyze.add_argument("files", nargs="+", metavar="FILE",
                         help="video files, URLs of media that ends, or directories (their video files)")
    analyze.add_argument("--out-dir", default=None, metavar="DIR",
                         help="where each file's NAME.affect.json and NAME.affect.html go (made if its parent "
                         "exists; default: beside the input when that directory is writable, else here)")
    analyze.add_argument("--summary", default=None, metavar="FILE.json",
                         help="one input only: its summary here (the report beside it as FILE.html)")
    analyze.add_argument("--no-html", action="store_true", help="write the summary JSON without the HTML report")
    analyze.add_argument("--csv", default=None, metavar="FILE.csv",
                         help="also write one row per sampled frame and face (all inputs in one table)")
    analyze.add_argument("--parquet", default=None, metavar="FILE.parquet",
                         help="the same table as Parquet (pip install affectstream[parquet])")
    analyze.add_argument("--top", type=number(0, integer=True), default=5, help="top moments kept per emotion")
    analyze.add_argument("--thumbnails", type=number(0, integer=True), default=3, metavar="N",
                         help="top moments per emotion pictured in the report (frame and face; at most --top)")
    analyze.add_argument("--force", action="store_true",
                         help="replace an earlier NAME.affect.json/.html (default: write NAME.affect-N.* beside it)")
    progress = analyze.add_mutually_exclusive_group()
    progress.add_argument("--no-progress", action="store_true", help="no progress bar (it shows on a terminal only)")
    progress.add_argument("--progress", action="store_true",
                          help="show the progress bars on stderr even when it is not a terminal")
    analyze.add_argument("--json", action="store_true",
                         help="print the summary on stdout even on a terminal (it always is through a pipe; "
                         "several inputs: one summary per line)")
    analyze.add_argument("--annotate", default=None, metavar="OUT.mp4",
                         help="also write the video with boxes, face ids and labels drawn on every frame "
                         "(.mp4, .m4v, .mov or .mkv; H.264 where FFmpeg has libx264, else MPEG-4)")
    _add_model_options(analyze)
    _add_pipeline_options(analyze)

    bundle = commands.add_parser("bundle", help="create or inspect a model bundle")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    create = bundle_commands.add_parser("create", help="a zero-shot bundle: backbone + prompt text embeddings")
    create.add_argument("out")
    create.add_argument("--model", default="clip-vit-b32")
    create.add_argument("--device", default="auto")
    inspect = bundle_commands.add_parser("inspect", help="print a bundle's manifest")
    inspect.add_argument("path")

    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands whose modules register their own arguments."""
    from affectstream.stream.listen import add_listen_parser
    from affectstream.training.extract_cli import add_extract_parser, add_synth_parser

    add_listen_parser(commands)

    from affectstream.stream.streams_cli import add_streams_parser

    add_streams_parser(commands)

    from affectstream.bench import add_bench_parser
    from affectstream.build_engine import add_build_engine_parser

    add_build_engine_parser(commands)
    add_bench_parser(commands)
    add_synth_parser(commands)
    add_extract_parser(commands)

    from affectstream.training.train_cli import add_evaluate_parser, add_train_parser

    add_train_parser(commands)
    add_evaluate_parser(commands)

    from affectstream.models_cli import add_models_parser

    add_models_parser(commands)


def _configure_logging(verbosity: int) -> None:
    # Our own logger says what it is doing (INFO; -v adds per-frame DEBUG); libraries (open_clip,
    # websockets, PyAV) only warn unless -vv asks for their chatter too.
    logging.basicConfig(level=logging.DEBUG if verbosity >= 2 else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if verbosity else logging.INFO)
    # huggingface_hub prints through a stderr handler of its own: without this, each line came twice.
    logging.getLogger("huggingface_hub").propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", 0))
    environment = dict(os.environ)  # read once, here; passed down as plain values
    # OpenMP threads that spin while waiting for work steal the cores that decoding and the other
    # threads need; on a shared 2-core machine that made torch eager 11-14x slower at batch 1
    # (docs/benchmarks.md). torch is not imported yet, so this still takes effect; a user's own
    # setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _install_sigterm()
    handlers: dict[str, Callable[[argparse.Namespace, dict[str, str]], int]] = {
        "run": _run,
        "analyze": _analyze,
        "bundle": _bundle,
        "listen": _listen,
        "streams": _streams,
        "build-engine": _build_engine,
        "bench": _bench,
        "synth": _synth,
        "extract": _extract,
        "train": _train,
        "evaluate": _evaluate,
        "models": _models,
    }
    status = _handle(handlers[args.command], args, environment)
    if argv is None and args.command in _PROMPT_EXIT:
        _exit_now(status)
    return status


# `run` and `analyze` end the process as soon as everything is written and closed: the interpreter's
# own teardown of torch and ONNX Runtime takes 1.3 s more (measured on the 2-core VM), and a stopped
# service must be gone within 2 s. Only when main() is the program (argv None), never for a caller.
_PROMPT_EXIT = frozenset({"run", "analyze"})


def _exit_now(status: int) -> None:
    # Everything is written; a signal now has nothing left to stop. Our own atexit cleanups (the
    # temporary ONNX export, for one) still run: they are quick; the slow part is the teardown after.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away: nothing more can reach it, as before
            pass
        except (OSError, ValueError) as error:  # a full disk under a redirected stdout loses the tail
            if status == ExitStatus.OK:
                status = ExitStatus.PARTIAL
            print(f"affectstream: could not write the end of the output ({error})", file=sys.__stderr__)
    logging.shutdown()
    os._exit(int(status))


def _handle(handler: Callable[[argparse.Namespace, dict[str, str]], int], args: argparse.Namespace,
            environment: dict[str, str]) -> int:
    try:
        return handler(args, environment)
    except KeyboardInterrupt as interrupt:
        log.warning("interrupted")
        return interrupted_status(interrupt)
    except BrokenPipeError:
        # The reader went away (`affectstream bundle inspect | head`): nothing to say, nothing to retry.
        _silence_stdout()
        return ExitStatus.OK
    except (ConfigError, MissingExtraError, ModelError) as error:
        log.error("%s", error)
        return ExitStatus.USAGE
    except AffectstreamError as error:
        log.error("%s", error)
        return ExitStatus.BUG


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _install_sigterm() -> None:
    # SIGTERM (systemd, docker stop) stops every command as Ctrl-C does: it finishes what is in
    # flight, writes what is done, and exits 143 (130 for Ctrl-C) where the command was cut short.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _silence_stdout() -> None:
    from affectstream.stream.sinks import silence_stdout

    silence_stdout()


def _run(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.runner import run_command

    return run_command(args, environment)


def _analyze(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.runner import analyze_command

    return analyze_command(args)


def _bundle(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.runner import bundle_command

    return bundle_command(args)


def _streams(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.stream.streams_cli import run_streams

    return run_streams(args, environment)


def _listen(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.stream.listen import run_listen

    return run_listen(args, environment)


def _synth(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.training.extract_cli import run_synth

    return run_synth(args, environment)


def _extract(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.training.extract_cli import run_extract

    return run_extract(args, environment)


def _train(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.training.train_cli import run_train

    return run_train(args, environment)


def _evaluate(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.training.train_cli import run_evaluate

    return run_evaluate(args, environment)


def _models(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.models_cli import run_models

    return run_models(args, environment)


def _build_engine(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.build_engine import run_build_engine

    return run_build_engine(args)


def _bench(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.bench import run_bench

    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
