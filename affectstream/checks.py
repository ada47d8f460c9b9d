"""Checks made before anything heavy loads: argument ranges at parse time, then a preflight of what a
command will need (output paths, stream names, the port, the input file), so that a user's mistake is
one clear line and exit 2 (or 4 for an input that is not there) within a second, not after the model.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from affectstream.engine.interfaces import HeadKind
from affectstream.errors import ConfigError
from affectstream.stream.netloc import host_port, url_host
from affectstream.stream.sources import MIN_FRAME_SIDE


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           integer: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number within [low, high] (``low_open``: above low), the range in
    the message when it is not."""
    def parse(text: str) -> float:
        try:
            value: float = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if integer else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is out of range: {_describe(low, high, low_open)}")
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in its messages
    return parse


def frame_side(text: str) -> int:
    """``--max-frame-side``: 0 (full size) or at least MIN_FRAME_SIDE pixels (what the detectors read)."""
    value = int(number(0, integer=True)(text))
    if 0 < value < MIN_FRAME_SIDE:
        raise argparse.ArgumentTypeError(f"{text} is out of range: use 0 (full size) or a value >= {MIN_FRAME_SIDE}")
    return value


def _describe(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"use a value {'>' if low_open else '>='} {low:g} and <= {high:g}"
    if low is not None:
        return f"use a value {'>' if low_open else '>='} {low:g}"
    return f"use a value <= {high:g}"


POSITIVE = number(0, low_open=True)
NON_NEGATIVE = number(0)
PROBABILITY = number(0, 1)
COUNT = number(1, integer=True)
PORT = number(0, 65535, integer=True)


def parse_windows(text: str) -> tuple[float, ...]:
    try:
        windows = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"--windows takes seconds separated by commas, e.g. 5,60; got {text!r}") from error
    if not windows or any(not w > 0 or w == float("inf") for w in windows):
        raise ConfigError(f"--windows needs positive seconds, got {text!r}")
    if len(set(windows)) != len(windows):
        raise ConfigError(f"--windows lists a window twice: {text!r}")
    return windows


def writable_file(path: str, what: str) -> Path:
    """``path`` can be written: its directory exists and is writable (nothing is created here)."""
    try:
        return _writable(Path(path), what)
    except OSError as error:  # a name too long for the file system, a path through a file
        raise ConfigError(f"{what} {path}: {error.strerror or error}; pick another path") from None


def _writable(target: Path, what: str) -> Path:
    path = str(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: the directory {parent} does not exist; create it or pick another path")
    if target.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file name")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigError(f"{what} {path}: not writable here; pick another path")
    return target


def annotate_file(path: str, input_uri: str, others: list[tuple[str, Path]]) -> Path:
    """``--annotate``: a writable video file name whose container is known, not the input nor another output."""
    from affectstream.stream.recording import ANNOTATE_SUFFIXES

    target = writable_file(path, "--annotate")
    if target.suffix.lower() not in ANNOTATE_SUFFIXES:
        raise ConfigError(f"--annotate {path}: give a video file name ending in {', '.join(ANNOTATE_SUFFIXES)}")
    resolved = target.resolve()
    if Path(input_uri).resolve() == resolved:
        raise ConfigError(f"--annotate {path} is the input itself: pick another path")
    for option, other in others:
        if other.resolve() == resolved:
            raise ConfigError(f"--annotate {path} is also the {option} file: pick another path")
    return target


def record_directory(path: str) -> Path:
    """``--record DIR``: a writable directory, or one that can be made in a writable one (made at the start)."""
    return writable_directory(path, "--record")


def writable_directory(path: str, option: str) -> Path:
    """A writable directory, or one that can be made in a writable one; ConfigError naming ``option``."""
    target = Path(path)
    try:
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{option} {path} is a file: give a directory (it is made if it does not exist)")
        if target.is_dir():
            if not os.access(target, os.W_OK | os.X_OK):
                raise ConfigError(f"{option} {path}: not writable here; pick another directory")
            return target
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise ConfigError(f"{option} {path}: the directory {parent} does not exist; create it or pick "
                              "another path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: cannot be made in {parent} (not writable); pick another path")
    except OSError as error:  # a name too long for the file system
        raise ConfigError(f"{option} {path}: {error.strerror or error}; pick another path") from None
    return target


def unique_names(sources: list[tuple[str, str]]) -> None:
    names = [name for name, _ in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"stream name(s) {', '.join(repeated)} given twice: name each source once (NAME=SOURCE)")


def port_free(host: str, port: int) -> None:
    """The websocket port can be bound now (0: any free port), else a usage error naming --port 0."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The server binds with SO_REUSEADDR too: a port in TIME_WAIT is free for it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {url_host(host)} is in use: stop what uses it, pick another --port, "
                                  "or --port 0 for any free one") from None
            raise ConfigError(f"cannot listen on {host_port(host, port)} ({error.strerror}): check --host") from None


def bidirectional_bundle(path: str) -> bool:
    """The bundle's LSTM reads sequences both ways (from its manifest alone: no torch, no weights)."""
    import json

    from affectstream.engine.files import MANIFEST, bidirectional_manifest

    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # the bundle loader says what is wrong with it
    return bidirectional_manifest(manifest)


def no_conflicts(args: argparse.Namespace) -> None:
    """Options that contradict each other are refused, not one of them ignored."""
    if args.bundle and args.model:
        raise ConfigError("--model and --bundle both name the backbone: a bundle brings its own, so drop "
                          "--model (or drop --bundle to use that model zero-shot)")
    if args.faces == "off" and args.clip_input == "face":
        raise ConfigError("--clip-input face needs the face stage: drop --faces off, or use --clip-input frame")
    if args.onset is not None and args.offset is not None and args.offset > args.onset:
        raise ConfigError(f"--offset ({args.offset:g}) must not be above --onset ({args.onset:g}): an episode "
                          "ends below the score it started at")
    parse_windows(args.windows)


def preflight_run(args: argparse.Namespace, sources: list[tuple[str, str]]) -> None:
    no_conflicts(args)
    if not sources and not (args.allow_browser_sources or args.config or args.keep_running):
        raise ConfigError("give at least one SOURCE (a file, camera or URL), --config FILE, --keep-running "
                          "(streams added through /api/streams) or --allow-browser-sources (cameras from "
                          "browsers at /capture)")
    if args.sink:
        from affectstream.stream.brokers import parse_sink

        for url in args.sink:
            parse_sink(url)
        if args.no_serve:
            raise ConfigError("--sink delivers from the server's event log: drop --no-serve (the server "
                              "listens on 127.0.0.1 unless --host says otherwise)")
    if args.allow_browser_sources and (args.no_serve or args.no_video):
        raise ConfigError("--allow-browser-sources takes cameras through the server's /capture page: drop "
                          "--no-serve and --no-video")
    unique_names(sources)
    if getattr(args, "ray", None):
        taken = [flag for flag, on in (("--show", args.show), ("--record", getattr(args, "record", None)),
                                       ("--allow-browser-sources", args.allow_browser_sources)) if on]
        if taken:
            raise ConfigError(f"--ray runs the streams on the cluster's nodes, where their frames stay: "
                              f"{', '.join(taken)} needs them here; drop it or --ray")
        from affectstream.stream.ray_run import check_reachable

        check_reachable(args.ray)  # before the model loads
    if args.bundle and args.head in (HeadKind.AUTO, HeadKind.LSTM) and bidirectional_bundle(args.bundle):
        raise ConfigError(f"{args.bundle} holds a bidirectional model, which reads whole files: "
                          f"`affectstream analyze FILE --bundle {args.bundle}` runs it; `run` needs "
                          "--head zero-shot or a bundle trained without --bidirectional")
    if args.out:
        writable_file(args.out, "--out")
    if getattr(args, "record", None):
        record_directory(args.record)
    elif getattr(args, "record_segment", None) is not None:
        raise ConfigError("--record-segment sets the length of --record's files: add --record DIR, or drop it")
    if args.show:
        from affectstream.stream.overlay import require_gui

        require_gui()
    if not args.no_serve:
        port_free(args.host, args.port)


def preflight_analyze(args: argparse.Namespace, inputs: list[Any], plans: list[Any], several: bool) -> None:
    """``analyze``: options that name one file need one input; every output can be written and none is
    an input or another output; ``--parquet`` has pyarrow; ``--out-dir`` exists or can be made.
    ``inputs``/``plans``: affectstream/analyze.py's InputFile and Outputs, in the same order."""
    no_conflicts(args)
    if several:
        one_file = [name for name, value in (("--summary", args.summary), ("--out", args.out),
                                             ("--annotate", getattr(args, "annotate", None))) if value]
        if one_file:
            raise ConfigError(f"{' and '.join(one_file)} name{'s' if len(one_file) == 1 else ''} one file: give one "
                              "input, or drop it (--out-dir DIR says where each input's summary and report go)")
    if args.summary and args.out_dir:
        raise ConfigError("--summary names the summary file and --out-dir its directory: give one of them")
    if args.out_dir:
        out_directory(args.out_dir)
    outputs: list[tuple[str, Path]] = []
    made_later = Path(args.out_dir).resolve() if args.out_dir and not Path(args.out_dir).is_dir() else None
    for plan in plans:
        for what, path in (("--summary" if args.summary else "summary", plan.summary), ("report", plan.html)):
            if path is None:
                continue
            # In an --out-dir that is made when the first file is written, only the names are checked.
            outputs.append((what, path if made_later == path.parent.resolve() else writable_file(str(path), what)))
    for option, value in (("--out", args.out), ("--csv", args.csv), ("--parquet", args.parquet)):
        if value:
            path = Path(value)
            outputs.append((option, path if made_later == path.parent.resolve() else writable_file(value, option)))
    if args.parquet:
        from affectstream.stream.frame_table import require_pyarrow

        require_pyarrow()
    if getattr(args, "annotate", None) and inputs:
        annotate_file(args.annotate, inputs[0].uri, outputs)
    _distinct_outputs(outputs, [item.uri for item in inputs])


def out_directory(path: str) -> Path:
    """``--out-dir DIR``: a writable directory, or one that can be made in a writable one (made when written)."""
    return writable_directory(path, "--out-dir")


def _distinct_outputs(outputs: list[tuple[str, Path]], inputs: list[str]) -> None:
    """No output is an input, and no two outputs are one file."""
    sources = {Path(uri).resolve(): uri for uri in inputs}
    seen: dict[Path, str] = {}
    for option, path in outputs:
        resolved = path.resolve()
        if resolved in sources:
            raise ConfigError(f"{option} {path} is an input: pick another path")
        if resolved in seen and seen[resolved] != option:
            raise ConfigError(f"{option} {path} is also the {seen[resolved]} file: pick another path")
        seen.setdefault(resolved, option)
