"""Where protocol messages go: JSON Lines files or stdout, memory, several at once.

A sink takes messages (records from stream/messages.py) one at a time; what it writes is the
record's ``text``, encoded once for every sink. Sinks never stop the
pipeline: a consumer that went away (``affectstream run ... | head``) closes the JSONL sink quietly,
and ``FanoutSink`` drops a sink that fails while the others go on.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from affectstream.stream.messages import MessageType, Record, Wire

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    def write(self, message: Record) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One message per line of compact JSON, thread-safe.

    ``line_flush`` (default: when the stream is a terminal) flushes after every line so that a reader
    at the other end of a pipe sees each message as it happens. A sink made from a path owns the file
    and closes it; one made from a stream only flushes it on close.
    """

    def __init__(self, stream: IO[str] | str | os.PathLike[str], line_flush: bool | None = None,
                 append: bool = False, render: Callable[[Record], str] | None = None) -> None:
        if isinstance(stream, (str, os.PathLike)):
            path = Path(stream)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream: IO[str] = open(path, "a" if append else "w", encoding="utf-8", newline="\n")  # noqa: SIM115 closed by close()
            self._owns_stream = True
            self.name = str(path)
        else:
            self._stream = stream
            self._owns_stream = False
            self.name = getattr(stream, "name", repr(stream))
        self._line_flush = _is_tty(self._stream) if line_flush is None else line_flush
        self._render = render or _wire_text
        self._is_stdout = False
        self._lock = threading.Lock()
        self._closed = False
        self.lines = 0
        self.skipped = 0  # messages that could not be encoded (e.g. NaN), logged and left out

    @classmethod
    def to_path(cls, path: str | os.PathLike[str], append: bool = False, line_flush: bool = False) -> JsonlSink:
        """``line_flush`` for live runs, whose file others tail; off for batch runs, where it costs time."""
        return cls(path, line_flush=line_flush, append=append)

    @classmethod
    def to_stdout(cls, readable: bool = False) -> JsonlSink:
        """Lines on stdout, each flushed at once (for live piping into jq, another program...);
        ``readable``: one line a person reads (stream/readable.py) instead of JSON."""
        sink = cls(sys.stdout, line_flush=True, render=_readable_text if readable else None)
        sink._is_stdout = True
        return sink

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def write(self, message: Record) -> None:
        try:
            line = self._render(message)
        except (TypeError, ValueError) as error:
            # One malformed message must not end the output: leave it out and say so.
            with self._lock:
                self.skipped += 1
            log.error("%s: left out a %s message that is not valid JSON (%s)",
                      self.name, message.type.value, error)
            return
        with self._lock:
            if self._closed:
                return
            try:
                self._stream.write(line + "\n")
                self.lines += 1
                if self._line_flush:
                    self._stream.flush()
            except (OSError, ValueError) as error:
                self._stop_after(error)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        with self._lock:
            if self._flush_locked():
                self._closed = True
                self._close_owned()

    def _flush_locked(self) -> bool:
        """Under the lock: flush; False when closed already or the stream broke (then it is closed)."""
        if self._closed:
            return False
        try:
            self._stream.flush()
        except (OSError, ValueError) as error:
            self._stop_after(error)
            return False
        return True

    def _stop_after(self, error: Exception) -> None:
        """Under the lock: the stream can take no more; close quietly and log it once."""
        self._closed = True
        if _is_broken_pipe(error):
            log.info("%s: the reader went away (broken pipe); no more messages are written there", self.name)
            if self._is_stdout:
                silence_stdout()
        else:
            log.warning("%s: cannot write messages any more (%s); this output is closed", self.name, error)
        self._close_owned()

    def _close_owned(self) -> None:
        if self._owns_stream:
            try:
                self._stream.close()
            except OSError:
                pass


def _wire_text(message: Record) -> str:
    return message.text


def _readable_text(message: Record) -> str:
    from affectstream.stream.readable import format_message

    return format_message(message.to_wire())


class MemorySink:
    """Keeps every message in a list, for tests and library users; thread-safe."""

    def __init__(self) -> None:
        self._messages: list[Record] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def messages(self) -> list[Record]:
        """A copy of the messages so far, in the order they were written."""
        with self._lock:
            return list(self._messages)

    def wire(self) -> list[Wire]:
        """The messages so far in their wire form (what a client would decode)."""
        return [message.to_wire() for message in self.messages]

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def of_type(self, type_: MessageType) -> list[Record]:
        return [message for message in self.messages if message.type is type_]

    def write(self, message: Record) -> None:
        with self._lock:
            if not self._closed:
                self._messages.append(message)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            self._closed = True


class FanoutSink:
    """Hands every message to several sinks; one that raises is logged once, closed and dropped."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self._sinks = list(sinks)
        self._lock = threading.Lock()

    @property
    def sinks(self) -> list[Sink]:
        """The sinks still in service."""
        with self._lock:
            return list(self._sinks)

    def write(self, message: Record) -> None:
        for sink in self.sinks:
            try:
                sink.write(message)
            except Exception:  # noqa: BLE001 isolating any failure is the point of a fanout
                self._drop(sink, "write")

    def flush(self) -> None:
        for sink in self.sinks:
            try:
                sink.flush()
            except Exception:  # noqa: BLE001 isolating any failure is the point of a fanout
                self._drop(sink, "flush")

    def close(self) -> None:
        with self._lock:
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception:
                log.exception("sink %s failed to close", _describe(sink))

    def _drop(self, sink: Sink, action: str) -> None:
        with self._lock:
            if sink not in self._sinks:
                return  # another thread already dropped it
            self._sinks.remove(sink)
        log.exception("sink %s failed to %s and is dropped; the other outputs go on", _describe(sink), action)
        try:
            sink.close()
        except Exception:
            log.debug("dropped sink %s also failed to close", _describe(sink), exc_info=True)


def _describe(sink: Sink) -> str:
    name = getattr(sink, "name", None)
    return f"{type(sink).__name__}({name})" if name else type(sink).__name__


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _is_broken_pipe(error: Exception) -> bool:
    return isinstance(error, BrokenPipeError) or (
        isinstance(error, OSError) and error.errno in (errno.EPIPE, errno.EINVAL)
    )


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final stdout flush does not fail again.

    Python's documented way to exit quietly after a broken pipe (see the ``signal`` module docs,
    "Note on SIGPIPE"); without it the process prints "Exception ignored ... BrokenPipeError" at exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
