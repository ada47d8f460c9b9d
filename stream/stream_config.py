"""`run --config cameras.toml`: many streams with their own options, re-read on SIGHUP.

```toml
[[stream]]
name = "door"                    # 1-64 of A-Z a-z 0-9 . _ -
uri = "rtsp://10.0.0.5/stream"
rate = 4                         # optional: frames per second analysed (0: every frame)
faces = false                    # optional: whether the face stage analyses it (default: the run's --faces)
sinks = ["mqtt://broker/affect"] # optional: sinks that get this stream (and only the streams naming them)

[[sink]]
url = "redis://127.0.0.1/0?stream=affect"   # a sink for every stream
```

On SIGHUP the file is read again and only the streams whose entry changed are touched: a new name is
added, a name that is gone is removed, a changed URI, rate or faces restarts that stream; the others go on
with their seqs unbroken. Sinks are read at start only (a sink's cursor lives in the event log under
its URL). A file with a mistake is refused whole, at start with exit status 2, on SIGHUP with a log
line, and the running streams stay as they were.
"""

from __future__ import annotations

import logging
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectstream.errors import ConfigError
from affectstream.stream.control import ControlError, Controller, StreamRequest, stream_request

log = logging.getLogger(__name__)

RESTART_WAIT_S = 15.0  # a changed stream is added again once its old self has ended, up to this long

STREAM_KEYS = {"name", "uri", "rate", "faces", "sinks"}


@dataclass(frozen=True)
class RunConfig:
    streams: tuple[StreamRequest, ...]
    sinks: tuple[str, ...]  # sink URLs, each with the streams it is limited to in its query (streams=)


@dataclass(frozen=True)
class ConfigChange:
    """What a re-read changes: streams to add, to remove, and to restart (remove, then add again)."""

    add: tuple[StreamRequest, ...] = ()
    remove: tuple[str, ...] = ()
    restart: tuple[StreamRequest, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.restart)


def read_config(path: Path) -> RunConfig:
    """The run described by ``path``; ConfigError naming the file and the entry for any mistake."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config {path} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - {"stream", "sink"})
    if unknown:
        raise ConfigError(f"--config {path}: unknown table(s) {unknown}: use [[stream]] and [[sink]]")
    streams: list[StreamRequest] = []
    by_sink: dict[str, list[str]] = {}
    for index, entry in enumerate(_tables(data, "stream", path)):
        where = f"--config {path}, stream {index + 1}"
        extra = sorted(set(entry) - STREAM_KEYS)
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {extra}: a stream has {sorted(STREAM_KEYS)}")
        try:
            request = stream_request(entry)
        except ControlError as error:
            raise ConfigError(f"{where}: {error}") from None
        if any(s.name == request.name for s in streams):
            raise ConfigError(f"{where}: the name {request.name!r} is given twice")
        streams.append(request)
        sinks = entry.get("sinks", [])
        if not isinstance(sinks, list) or not all(isinstance(url, str) for url in sinks):
            raise ConfigError(f"{where}: sinks is a list of sink URLs")
        for url in sinks:
            by_sink.setdefault(url, []).append(request.name)
    urls: list[str] = []
    for index, entry in enumerate(_tables(data, "sink", path)):
        url = entry.get("url")
        if not isinstance(url, str) or set(entry) != {"url"}:
            raise ConfigError(f"--config {path}, sink {index + 1}: a [[sink]] has one key, url")
        urls.append(url)
    urls += [_limited(url, names) for url, names in by_sink.items() if url not in urls]
    return RunConfig(tuple(streams), tuple(urls))


def _tables(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    tables = data.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"--config {path}: write each {key} as a [[{key}]] table")
    return tables


def _limited(url: str, names: list[str]) -> str:
    return f"{url}{'&' if '?' in url else '?'}streams={','.join(names)}"


def changes(running: dict[str, StreamRequest], wanted: tuple[StreamRequest, ...]) -> ConfigChange:
    """What turns the ``running`` streams (by name) into ``wanted`` (pure)."""
    new = {s.name: s for s in wanted}
    return ConfigChange(
        add=tuple(s for name, s in new.items() if name not in running),
        remove=tuple(name for name in running if name not in new),
        restart=tuple(s for name, s in new.items() if name in running and running[name] != s))


class ConfigReloader:
    """SIGHUP: ``request()`` (from the signal handler: sets a flag), ``poll()`` (the run's loop: re-reads
    the file and applies what changed through stream control's rules)."""

    def __init__(self, path: Path, controller: Controller, wait_ended: Callable[[str, float], bool],
                 current: RunConfig) -> None:
        self._path = path
        self._controller = controller
        self._wait_ended = wait_ended
        self._current = {s.name: s for s in current.streams}
        self._requested = threading.Event()

    def request(self) -> None:
        self._requested.set()

    def poll(self) -> ConfigChange | None:
        if not self._requested.is_set():
            return None
        self._requested.clear()
        try:
            wanted = read_config(self._path)
        except ConfigError as error:
            log.error("%s; the streams stay as they were", error)
            return None
        change = changes(self._current, wanted.streams)
        for name in change.remove:
            self._stop(name)
        for request in change.add:
            self._start(request)
        for request in change.restart:
            self._stop(request.name)
            # Its end comes within the grabber's stop grace; the name is free once it has passed.
            threading.Thread(target=self._start_when_ended, args=(request,), daemon=True,
                             name=f"affectstream-restart-{request.name}").start()
        self._current = {s.name: s for s in wanted.streams}
        log.info("--config %s re-read: %d added, %d removed, %d restarted, the others untouched",
                 self._path, len(change.add), len(change.remove), len(change.restart))
        return change

    def _stop(self, name: str) -> None:
        try:
            self._controller.remove(name)
        except ControlError as error:
            log.info("--config: %s", error)  # it had ended already

    def _start(self, request: StreamRequest) -> None:
        try:
            self._controller.add(request)
        except ControlError as error:
            log.error("--config: cannot add %s: %s", request.name, error)

    def _start_when_ended(self, request: StreamRequest) -> None:
        if self._wait_ended(request.name, RESTART_WAIT_S):
            self._start(request)
        else:
            log.error("--config: %s did not stop within %g s; not restarted", request.name, RESTART_WAIT_S)
