"""What `affectstream analyze FILE|DIR …` does: each file as fast as the machine allows, then per file a
summary JSON and a self-contained HTML report, optionally one per-frame table (CSV, Parquet) for all
of them, and with several inputs an index page that links each report.

One engine serves every file; the files are read one after another, each with its own progress bar.
A file that cannot be read does not stop the others: it is listed at the end, and the exit status says
that some failed (docs/cli.md, "Exit statuses": 0 all fine, 3 some damaged or failed, 4 none analysed).

Memory stays flat over a long file: the pipeline's records go straight into the summary's accumulator
(stream/report.py keeps a few numbers per estimate), the table and ``--out`` as they come; only a
bidirectional bundle, which must see the whole file before it scores it, keeps its estimates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affectstream._shutdown import HurryOnSignal
from affectstream.errors import AffectstreamError, ExitStatus, SourceOutcome, Terminated, interrupted_status
from affectstream.stream.messages import Estimate, Event, StreamRecord
from affectstream.stream.sinks import JsonlSink
from affectstream.stream.sources import SourceDamage, SourceKind, classify_uri

if TYPE_CHECKING:
    from affectstream.engine.runtime import Engine
    from affectstream.stream.frame_table import FrameTable
    from affectstream.stream.pipeline import PipelineConfig, StreamOutcome
    from affectstream.stream.progress import MediaProgress
    from affectstream.stream.recording import AnnotatedRecorder
    from affectstream.stream.report import FileAnalysis, FileReport

log = logging.getLogger("affectstream")

# What a directory given to `analyze` contributes: its files with these suffixes (not its subdirectories).
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
    ".3gp", ".ogv", ".mxf", ".h264", ".264", ".hevc", ".y4m",
})
INDEX_NAME = "affect-index"  # the index page of a batch: affect-index.html (affect-index-N.html beside an earlier one)
_MAX_STEM_BYTES = 200  # a file name may have 255 bytes: room for ".affect-NNN.json"


# -- where things go ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input of the batch: the path or URL as given, or a directory that had no video in it."""

    uri: str
    problem: str | None = None  # why it cannot be read at all (known before the model loads)


@dataclass(frozen=True)
class Outputs:
    """Where one input's outputs go."""

    summary: Path
    html: Path | None
    replaces: tuple[Path, ...] = ()  # outputs that exist and are replaced (an explicit --summary, --force)


def expand_inputs(specs: list[str]) -> tuple[list[InputFile], bool]:
    """The files to analyse, in the order given, a directory giving its video files in name order;
    and whether a directory was given (a batch, even of one file)."""
    from affectstream.stream.pyav_source import local_file_problem

    inputs: list[InputFile] = []
    directory = False
    for spec in (spec.strip() for spec in specs):
        if classify_uri(spec) is not SourceKind.FILE:
            inputs.append(InputFile(spec))
            continue
        try:
            if Path(spec).is_dir():
                directory = True
                inputs += _directory_inputs(spec)
                continue
            problem = local_file_problem(spec)
        except OSError as error:  # a name too long for the file system, a path through a file
            inputs.append(InputFile(spec, f"{spec}: {error.strerror or error}"))
            continue
        inputs.append(InputFile(spec, None if problem is None else str(problem)))
    return inputs, directory


def _directory_inputs(spec: str) -> list[InputFile]:
    try:
        found = sorted(path for path in Path(spec).iterdir()
                       if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and ".affect" not in path.name)
    except OSError as error:
        return [InputFile(spec, f"{spec}: cannot list this directory ({error.strerror or error})")]
    if not found:
        return [InputFile(spec, f"{spec} holds no video file (.mp4, .mkv, .mov, .avi, .webm, .ts, …)")]
    return [InputFile(str(path)) for path in found]


def input_name(uri: str) -> str:
    """The file name part of a path or URL (query and fragment left out), for output names."""
    from urllib.parse import urlsplit

    if classify_uri(uri) is SourceKind.URL:
        name = Path(urlsplit(uri).path).name
        return name or urlsplit(uri).hostname or "stream"
    return Path(uri).name


def short_stem(name: str) -> str:
    """``name`` cut to what a file name can hold, with a hash of the whole so that two long names differ."""
    if len(name.encode()) <= _MAX_STEM_BYTES:
        return name
    import hashlib

    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    cut = name.encode()[:_MAX_STEM_BYTES - 9].decode(errors="ignore")
    return f"{cut}-{digest}"


def default_directory(uri: str, out_dir: str | None) -> Path:
    """``--out-dir``; else beside the input when that directory is writable; else the current directory."""
    if out_dir:
        return Path(out_dir)
    if classify_uri(uri) is SourceKind.FILE:
        parent = Path(uri).parent
        if os.access(parent, os.W_OK | os.X_OK):
            return parent
    return Path(".")


def plan_outputs(uri: str, args: argparse.Namespace, taken: set[Path]) -> Outputs:
    """The summary (and report) paths of one input. An earlier NAME.affect.json is never replaced
    silently: without ``--force`` the next free NAME.affect-N.json (and .html), said on stderr; two
    inputs of one batch never share a name."""
    html = not args.no_html
    if args.summary:
        summary = Path(args.summary)
        report = summary.with_suffix(".html") if summary.suffix.lower() == ".json" else Path(str(summary) + ".html")
        paths = (summary, report) if html else (summary,)
        return Outputs(summary, report if html else None, tuple(path for path in paths if _exists(path)))
    directory = default_directory(uri, args.out_dir)
    stem = short_stem(input_name(uri))
    first = None
    for n in itertools.count():
        suffix = ".affect" if n == 0 else f".affect-{n}"
        summary, report = directory / f"{stem}{suffix}.json", directory / f"{stem}{suffix}.html"
        paths = (summary, report) if html else (summary,)
        if first is None:
            first = summary
        if any(path.resolve() in taken for path in paths):
            continue
        existing = tuple(path for path in paths if _exists(path))
        if existing and not args.force:
            continue
        if n:
            print(f"{first} exists: writing {summary} instead (--force replaces it)", file=sys.stderr)
        taken.update(path.resolve() for path in paths)
        return Outputs(summary, report if html else None, existing)
    raise AssertionError("unreachable")


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; a name the file system refuses does not (the preflight says why)."""
    try:
        return path.exists()
    except OSError:
        return False


def index_path(inputs: list[InputFile], args: argparse.Namespace) -> Path:
    """The batch's index page: in --out-dir, else in the directory all inputs share when writable, else here."""
    if args.out_dir:
        directory = Path(args.out_dir)
    else:
        parents = {default_directory(item.uri, None).resolve() for item in inputs}
        directory = parents.pop() if len(parents) == 1 else Path(".")
    path = directory / f"{INDEX_NAME}.html"
    if args.force or not path.exists():
        return path
    for n in itertools.count(1):
        candidate = directory / f"{INDEX_NAME}-{n}.html"
        if not candidate.exists():
            return candidate
    raise AssertionError("unreachable")


# -- one file ------------------------------------------------------------------------------------------


@dataclass
class FileResult:
    """How one input went, for the list at the end, the index and the exit status (a few facts: a
    batch of a thousand files keeps a thousand of these, not their summaries)."""

    uri: str
    status: int
    detail: str = ""
    facts: FileFacts | None = None  # None: nothing was read, nothing written
    outputs: Outputs | None = None
    written: list[Path] = field(default_factory=list)
    interrupt: KeyboardInterrupt | None = None
    text: str | None = None  # the summary JSON as written, for stdout (dropped once printed)


@dataclass(frozen=True)
class FileFacts:
    """What the index and the list at the end say of an analysed file."""

    frames: int
    duration_s: float | None
    outcome: str | None
    detail: str
    interrupted: bool
    top: str | None  # the emotion dominant for the most time (neutral and no_face left out)
    top_share: float | None

    @classmethod
    def of(cls, analysis: FileAnalysis) -> FileFacts:
        summary = analysis.summary
        share = {label: value for label, value in summary.share.items() if label not in ("neutral", "no_face")}
        top = max(share, key=lambda label: share[label], default=None)
        if top is not None and share[top] <= 0:
            top = None
        return cls(frames=summary.frames, duration_s=summary.duration_s if summary.frames else None,
                   outcome=analysis.outcome, detail=analysis.detail, interrupted=analysis.interrupted, top=top,
                   top_share=share[top] if top is not None else None)


class _ReportSink:
    """The pipeline's sink during an analysis: each record goes to the summary's accumulator, the table
    and ``--out`` at once (nothing is kept), or, for a bidirectional model that rescores the whole file
    at the end, into a list of what the replay needs (estimates and events; not summaries or stats)."""

    def __init__(self, report: FileReport, table: FrameTable | None, jsonl: JsonlSink | None, keep: bool) -> None:
        self.report = report
        self.table = table
        self.jsonl = jsonl
        self.kept: list[StreamRecord] | None = [] if keep else None

    def write(self, message: Any) -> None:
        if not isinstance(message, StreamRecord):
            return
        if self.kept is not None:
            if isinstance(message, (Estimate, Event)):
                self.kept.append(message)
            return
        self.consume(message)

    def consume(self, record: StreamRecord) -> None:
        self.report.add_record(record)
        if self.table is not None:
            self.table.write(record)
        if self.jsonl is not None:
            self.jsonl.write(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def analyze_file(item: InputFile, outputs: Outputs, args: argparse.Namespace, engine: Engine,
                 config: PipelineConfig, table: FrameTable | None, progress_label: str) -> FileResult:
    """Analyse one file and write its summary and report; a failure of this file is its result."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from affectstream.runner import _recorder, stream_status
    from affectstream.stream.progress import media_progress
    from affectstream.stream.report import FileReport

    uri = item.uri
    if item.problem is not None:
        return FileResult(uri, ExitStatus.NOTHING, item.problem)
    recorder = None
    if engine.sequence_model is not None and engine.head is not None:
        from affectstream.stream.offline import RecordingHead

        recorder = RecordingHead(engine.head)
    report = FileReport(engine.labels, top_k=args.top)
    jsonl = JsonlSink.to_path(Path(args.out)) if args.out else None
    sink = _ReportSink(report, table, jsonl, keep=recorder is not None)
    if table is not None:
        table.start_file(uri)
    started = time.monotonic()
    progress = media_progress(progress_label, disable=_progress_disabled(args))
    try:
        try:
            with logging_redirect_tqdm():
                interrupt, outcome, annotated = _analyze_pass(uri, config, engine, recorder or engine.head, sink,
                                                              progress, annotator=_recorder(args, engine.labels))
        finally:
            progress.close()
        # A signal from here on (the whole-file rescoring, the thumbnails) must not cost the summary.
        with HurryOnSignal(lambda: None) as late:
            if sink.kept is not None and recorder is not None:
                for record in _rescore_whole_file(sink.kept, recorder, engine, config):
                    sink.consume(record)
            analysis = _analysis(uri, report, engine, config, outcome, time.monotonic() - started,
                                 interrupt is not None)
            written, text, write_failed = _write_outputs(analysis, outputs, args, config)
    finally:
        if jsonl is not None:
            jsonl.close()
    if interrupt is None and late.status is not None:
        interrupt = Terminated() if late.status is ExitStatus.TERMINATED else KeyboardInterrupt()
    status = stream_status(outcome)
    if (not annotated or write_failed) and status == ExitStatus.OK:
        status = ExitStatus.PARTIAL  # analysed, but an output asked for is not (all) written
    detail = "" if status == ExitStatus.OK else _without_uri(analysis.detail, uri) or str(analysis.outcome)
    if write_failed:
        detail = f"{detail}; {write_failed}" if detail else write_failed
    if args.out:
        written.append(Path(args.out))
    return FileResult(uri, status, detail, FileFacts.of(analysis), outputs, written, interrupt, text)


def _without_uri(detail: str, uri: str) -> str:
    """A reader's message without the input's name in front (the list at the end names it)."""
    return detail[len(uri) + 2:] if detail.startswith(f"{uri}: ") else detail


def _progress_disabled(args: argparse.Namespace) -> bool | None:
    """--no-progress hides the bar, --progress shows it even off a terminal; else tqdm's rule (a terminal)."""
    if args.no_progress:
        return True
    return False if args.progress else None


def _analyze_pass(uri: str, config: PipelineConfig, engine: Engine, head: Any, sink: _ReportSink,
                  progress: MediaProgress, annotator: AnnotatedRecorder | None = None,
                  ) -> tuple[KeyboardInterrupt | None, StreamOutcome, bool]:
    """Run the file through the pipeline as fast as possible; (the Ctrl-C or SIGTERM that cut it
    short, if one did; how it went; False if the ``--annotate`` video could not be written)."""
    from affectstream.runner import _attach_taps, _close_recorder, _hurry
    from affectstream.stream.pipeline import Pipeline

    pipeline = Pipeline([("file", uri)], engine.encoder, head, sink, engine.labels, config, faces=engine.faces)
    pipeline.on_record = progress.on_record
    _attach_taps(pipeline, [annotator] if annotator is not None else [])
    pipeline.start()
    interrupt: KeyboardInterrupt | None = None
    try:
        while not pipeline.wait(0.2):
            pass
    except KeyboardInterrupt as caught:
        interrupt = caught
        log.info("stopping: the summary of what was read is written (marked partial)")
    finally:
        with HurryOnSignal(_hurry(pipeline, annotator)) as guard:
            pipeline.stop()
            sink.close()
            annotated = _close_recorder(annotator)
    if interrupt is None and guard.status is not None:
        interrupt = Terminated() if guard.status is ExitStatus.TERMINATED else KeyboardInterrupt()
    return interrupt, pipeline.outcomes["file"], annotated


def _rescore_whole_file(records: list[StreamRecord], recorder: Any, engine: Engine,
                        config: PipelineConfig) -> list[StreamRecord]:
    """The bidirectional model over the whole sequence; the records replayed with its scores."""
    from affectstream.stream.offline import replay, rescore_sequence
    from affectstream.stream.session import StreamSession

    scores, sentiment = rescore_sequence(engine.sequence_model, recorder.features("file"))
    session = StreamSession("file", engine.labels, config.analytics)
    return replay(records, scores, sentiment, session)


def _analysis(uri: str, report: FileReport, engine: Engine, config: PipelineConfig, outcome: StreamOutcome,
              seconds: float, interrupted: bool) -> FileAnalysis:
    from affectstream.stream.report import AnalysisSettings, FileAnalysis

    analytics = config.analytics
    settings = AnalysisSettings(rate_hz=config.rate_for(False), onset=analytics.onset_threshold,
                                offset=analytics.offset_threshold, windows_s=tuple(analytics.windows_s),
                                uncertain_below=config.faces.uncertain_below if engine.faces is not None else None)
    name: str | None
    if not outcome.ended:
        name, detail, damage = "unknown", "", None
    else:
        name = outcome.outcome.value if outcome.outcome is not None else None
        detail = outcome.detail
        damage = SourceDamage.from_mapping(outcome.damage) if outcome.damage else None
    return FileAnalysis(path=uri, summary=report.summary(), model=engine.model_info, settings=settings, outcome=name,
                        detail=detail, damage=damage, seconds=seconds, interrupted=interrupted)


def _write_outputs(analysis: FileAnalysis, outputs: Outputs, args: argparse.Namespace,
                   config: PipelineConfig) -> tuple[list[Path], str, str]:
    """The summary JSON, then the report with its thumbnails: (the paths written, the summary's text,
    what could not be written: a full disk is said, not a traceback)."""
    for path in outputs.replaces:
        print(f"replacing {path}", file=sys.stderr)  # never silently: an explicit --summary, or --force
    text = json.dumps(analysis.to_dict(), indent=2, allow_nan=False)
    written: list[Path] = []
    try:
        outputs.summary.parent.mkdir(parents=True, exist_ok=True)  # --out-dir is made here if it is new
        outputs.summary.write_text(text)
        written.append(outputs.summary)
        if outputs.html is not None and analysis.summary.frames:  # nothing analysed: nothing to report
            from affectstream.stream.html_report import render_report, thumbnail_shots
            from affectstream.stream.thumbnails import Shot, thumbnails

            per_label = min(args.thumbnails, args.top)
            shots = [Shot(m.ts, m.box) for m in thumbnail_shots(analysis, per_label)]
            damage = analysis.damage
            can_seek = damage is None or not (damage.missing_pts or damage.repaired_pts)
            pictures = thumbnails(analysis.path, shots, config.source, can_seek=can_seek) if shots else {}
            outputs.html.write_text(render_report(analysis, pictures, per_label), encoding="utf-8")
            written.append(outputs.html)
    except OSError as error:
        failed = f"cannot write {error.filename or 'an output'}: {error.strerror or error}"
        log.error("%s", failed)
        return written, text, failed
    return written, text, ""


# -- the command -----------------------------------------------------------------------------------------


def analyze_command(args: argparse.Namespace) -> int:
    from affectstream.checks import preflight_analyze
    from affectstream.runner import engine_from_args, pipeline_config

    inputs, directory = expand_inputs(args.files)
    several = len(inputs) > 1 or directory
    taken: set[Path] = set()
    plans = [plan_outputs(item.uri, args, taken) for item in inputs]
    preflight_analyze(args, inputs, plans, several)
    readable = [item for item in inputs if item.problem is None]
    if not readable:  # nothing to analyse: said at once, and nothing is written
        for item in inputs:
            print(f"cannot analyse {item.uri}: {item.problem}", file=sys.stderr)
        return ExitStatus.NOTHING
    engine = engine_from_args(args, offline=True)
    config = pipeline_config(args, pace_files=False, engine=engine)
    if args.out_dir:
        Path(args.out_dir).mkdir(exist_ok=True)  # its parent was checked; made now that the model is loaded
    table = _table(args, engine.labels)
    results: list[FileResult] = []
    interrupt: KeyboardInterrupt | None = None
    try:
        for number, (item, outputs) in enumerate(zip(inputs, plans), start=1):
            label = input_name(item.uri) if not several else f"[{number}/{len(inputs)}] {input_name(item.uri)}"
            try:
                result = analyze_file(item, outputs, args, engine, config, table, label)
            except AffectstreamError as error:
                if not several:
                    raise
                result = FileResult(item.uri, ExitStatus.NOTHING, str(error))  # this file; the others go on
            except KeyboardInterrupt as caught:  # between two files: what is done stays done
                interrupt = caught
                break
            results.append(result)
            _say_written(result, several)
            if args.json or not sys.stdout.isatty():
                _print_result(result, several)
            if result.interrupt is not None:
                interrupt = result.interrupt
                break
    finally:
        if table is not None:
            table.close()
            print(f"table written to {', '.join(str(path) for path in table.paths)} ({table.rows} rows)",
                  file=sys.stderr)
    skipped = inputs[len(results):]
    if several:
        _write_index(inputs, results, args)
        _say_failures(results, skipped)
    status = _batch_status([result.status for result in results])
    return interrupted_status(interrupt) if interrupt is not None else status


def _table(args: argparse.Namespace, labels: tuple[str, ...]) -> FrameTable | None:
    if not (args.csv or args.parquet):
        return None
    from affectstream.stream.frame_table import FrameTable

    return FrameTable(labels, Path(args.csv) if args.csv else None, Path(args.parquet) if args.parquet else None)


def _batch_status(statuses: list[int]) -> int:
    """0 if every file went well, 4 if none could be analysed, else 3 (the rule for several sources)."""
    if not statuses or all(status == ExitStatus.OK for status in statuses):
        return ExitStatus.OK
    if all(status == ExitStatus.NOTHING for status in statuses):
        return ExitStatus.NOTHING
    return ExitStatus.PARTIAL


def _say_written(result: FileResult, several: bool) -> None:
    facts = result.facts
    if facts is None:
        print(f"cannot analyse {result.uri}: {result.detail}", file=sys.stderr)
        return
    paths = ", ".join(str(path) for path in result.written)
    print(f"analysed {facts.frames} frames{f' of {result.uri}' if several else ''}; written: {paths}",
          file=sys.stderr)
    if result.status != ExitStatus.OK and facts.outcome not in (None, SourceOutcome.ENDED.value):
        print(f"input problem: {facts.outcome} {facts.detail}".rstrip(), file=sys.stderr)


def _say_failures(results: list[FileResult], skipped: list[InputFile]) -> None:
    ok = [result for result in results if result.status == ExitStatus.OK]
    print(f"{len(ok)} of {len(results) + len(skipped)} files analysed without a problem", file=sys.stderr)
    for result in results:
        outcome = result.facts.outcome if result.facts is not None else None
        how = f" ({outcome})" if outcome not in (None, "ended", "unknown") else ""
        if result.status == ExitStatus.NOTHING:
            print(f"  failed: {result.uri}{how}: {_without_uri(result.detail, result.uri)}", file=sys.stderr)
        elif result.status != ExitStatus.OK:
            print(f"  damaged: {result.uri}{how}: {_without_uri(result.detail, result.uri)}", file=sys.stderr)
    for item in skipped:
        print(f"  not analysed (stopped before it): {item.uri}", file=sys.stderr)


def _write_index(inputs: list[InputFile], results: list[FileResult], args: argparse.Namespace) -> None:
    from affectstream.stream.html_report import IndexEntry, render_index

    path = index_path(inputs, args)
    entries = []
    done = {id(item): result for item, result in zip(inputs, results)}
    for item in inputs:
        result = done.get(id(item))
        if result is None:
            entries.append(IndexEntry(item.uri, "not analysed", "stopped before this file"))
            continue
        facts = result.facts
        if facts is None or result.outputs is None:
            entries.append(IndexEntry(item.uri, "failed", result.detail))
            continue
        state = ("interrupted" if facts.interrupted else "ok" if result.status == ExitStatus.OK
                 else "failed" if result.status == ExitStatus.NOTHING else "damaged")
        entries.append(IndexEntry(
            item.uri, state, result.detail,
            report=_relative(result.outputs.html, path.parent) if result.outputs.html in result.written else None,
            summary=_relative(result.outputs.summary, path.parent) if result.outputs.summary in result.written else None,
            duration_s=facts.duration_s, dominant=facts.top, share=facts.top_share))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_index(entries), encoding="utf-8")
    print(f"index written to {path}", file=sys.stderr)


def _relative(target: Path, base: Path) -> str:
    from urllib.parse import quote

    return quote(os.path.relpath(target.resolve(), base.resolve()).replace(os.sep, "/"))


def _print_result(result: FileResult, several: bool) -> None:
    """The result on stdout as each file is done, for `analyze x.mp4 | jq`: the summary as written; with
    several inputs one summary per line (JSON Lines)."""
    if result.text is not None:
        print(json.dumps(json.loads(result.text), separators=(",", ":")) if several else result.text, flush=True)
        result.text = None
