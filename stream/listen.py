"""`affectstream listen URL`: print a running server's messages, for people and for pipes.

It subscribes to the streams and types asked for, prints each message (``--jsonl``: exactly as
received, one JSON object per line), and when the connection drops it reconnects with backoff and
resumes after the last seq it printed, so that a pipe sees every event and summary once. A `lagged`
notice is answered with a `resume` the same way. The rule (resume in the URL, duplicates, backoff) is
stream/reconnect.py's, shared with the Python client (affectstream.client).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from affectstream.errors import ConfigError, ExitStatus, MissingExtraError
from affectstream.stream.messages import Wire
from affectstream.stream.readable import format_message
from affectstream.stream.reconnect import (
    SUBSCRIBE_ALSO,
    Backoff,
    ResumeCursor,
    Verdict,
    websocket_url,
    with_resume,
)

__all__ = ["ListenOptions", "Listener", "add_listen_parser", "format_message", "options_from_args", "run_listen",
           "websocket_url", "with_resume"]

log = logging.getLogger(__name__)

DATA_TYPES = ("hello", "estimate", "summary", "event", "stats")


def add_listen_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("listen", help="print the messages of a running server (for piping)")
    parser.add_argument("url", help="the server, e.g. ws://127.0.0.1:8765/ws (http:// and host:port work too)")
    parser.add_argument("--types", default=None, metavar="T,T",
                        help="only these message types: estimate,summary,event,stats (default: all)")
    parser.add_argument("--streams", default=None, metavar="S,S", help="only these streams (default: all)")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per line, exactly as received")
    parser.add_argument("--token", default=None, help="the server's token (or AFFECTSTREAM_TOKEN)")
    parser.add_argument("--resume", action="append", default=[], metavar="STREAM=SEQ",
                        help="first replay the stored events and summaries after SEQ (-1: all kept)")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after printing N messages")
    parser.add_argument("--no-reconnect", action="store_true", help="exit when the connection drops")
    return parser


@dataclass
class ListenOptions:
    url: str
    types: list[str] | None = None
    streams: list[str] | None = None
    jsonl: bool = False
    count: int | None = None
    reconnect: bool = True
    resume: dict[str, int] = field(default_factory=dict)


def options_from_args(args: argparse.Namespace, environment: dict[str, str]) -> ListenOptions:
    token = args.token or environment.get("AFFECTSTREAM_TOKEN")
    resume: dict[str, int] = {}
    for item in args.resume:
        stream, _, seq = item.rpartition("=")
        try:
            resume[stream] = int(seq)
        except ValueError:
            resume[stream] = -2  # refused below, with the form
        if not stream or resume[stream] < -1:
            raise ConfigError(f"--resume takes STREAM=SEQ with an integer SEQ >= -1, got {item!r}")
    return ListenOptions(
        url=websocket_url(args.url, token), types=_split(args.types), streams=_split(args.streams),
        jsonl=args.jsonl, count=args.count, reconnect=not args.no_reconnect, resume=resume,
    )


def run_listen(args: argparse.Namespace, environment: dict[str, str]) -> int:
    try:
        return Listener(options_from_args(args, environment), sys.stdout).run()
    except KeyboardInterrupt:
        return ExitStatus.OK


class Listener:
    """The reconnecting client loop; ``out`` gets one line per message."""

    def __init__(self, options: ListenOptions, out: IO[str]) -> None:
        self.options = options
        self.out = out
        self.cursor = ResumeCursor(options.resume)
        self.printed = 0

    @property
    def last_seq(self) -> dict[str, int]:
        return self.cursor.last_seq

    def run(self) -> int:
        try:
            from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
            from websockets.sync.client import connect
        except ImportError as error:
            raise MissingExtraError("websockets", "server", "affectstream listen") from error
        backoff = Backoff(max_s=10.0)
        while True:
            try:
                url = self.cursor.url(self.options.url, self.options.streams)
                with connect(url, open_timeout=10) as connection:
                    backoff.reset()
                    if self._session(connection):
                        return ExitStatus.OK
            except InvalidStatus as error:
                status = error.response.status_code
                log.error("the server refused the connection (HTTP %d): %s", status,
                          error.response.body.decode(errors="replace").strip())
                if status in (401, 403):
                    return ExitStatus.USAGE
            except InvalidURI as error:
                log.error("%s: give a ws://host:port/ws URL", error)
                return ExitStatus.USAGE
            except (OSError, ConnectionClosed, TimeoutError) as error:
                log.warning("connection to %s lost or refused: %s", self.options.url, error)
            if not self.options.reconnect:
                return ExitStatus.NOTHING
            delay = backoff.next_delay()
            log.info("reconnecting in %.1f s (resuming after %s)", delay, self.last_seq)
            time.sleep(delay)

    def _session(self, connection: Any) -> bool:
        """Talk to one connection until it closes; True when --count is reached."""
        selection: dict[str, Any] = {}
        if self.options.streams:
            selection["streams"] = self.options.streams
        if self.options.types:  # and stats, which reveal a renumbered stream (printed only when asked for)
            selection["types"] = sorted({t for t in self.options.types if t != "hello"} | set(SUBSCRIBE_ALSO))
        if selection:
            connection.send(json.dumps({"type": "subscribe", **selection}))
        for text in connection:
            message = json.loads(text)
            if self._handle(connection, message, text):
                return True
        return False

    def _handle(self, connection: Any, message: Wire, text: str | bytes) -> bool:
        kind = message.get("type")
        if kind == "lagged":
            after = {stream: info["resume_after"] for stream, info in message.get("streams", {}).items()}
            connection.send(self.cursor.answer_lagged(after))
            return False
        if kind == "error":
            log.error("server: %s (%s)", message.get("message"), message.get("code"))
            return False
        stream, seq = message.get("stream"), message.get("seq")
        if self.options.streams and stream not in self.options.streams:
            return False  # sent before our subscribe reached the server
        if isinstance(stream, str) and isinstance(seq, int):
            verdict = self.cursor.receive(stream, seq)
            if verdict is Verdict.RENUMBERED:
                connection.close()  # reconnect: the stream is resumed from the new numbering's start
            if verdict is not Verdict.TAKE:
                return False  # already printed before a reconnect
        if kind not in DATA_TYPES or (self.options.types and kind not in self.options.types):
            return False  # subscribed acks, types not asked for (sent before our subscribe), newer types
        line = text if self.options.jsonl and isinstance(text, str) else format_message(message)
        self.out.write(line + "\n")
        self.out.flush()
        self.printed += 1
        return self.options.count is not None and self.printed >= self.options.count


def _split(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]
