"""A second Ctrl-C or SIGTERM while a command writes what it has: hurry, do not abort.

The first signal raises (``KeyboardInterrupt`` / ``Terminated``) where the command waits, and the
command then stops its pipeline and flushes. A second signal raised there would leave threads inside
native code (ONNX Runtime, torch) while the interpreter exits, which aborts the process (status 134,
"terminate called without an active exception") with nothing written. So while the flush runs, a
signal only asks it to hurry: frames not yet analysed are skipped, the final summaries and
`stream_ended` are still written, and the process exits with the status of the first signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import TracebackType

from affectstream.errors import ExitStatus

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HurryOnSignal:
    """``with HurryOnSignal(pipeline.hurry) as guard:`` around a flush; ``guard.status`` is the exit
    status a signal that arrived during it calls for (None: none arrived)."""

    def __init__(self, hurry: Callable[[], None]) -> None:
        self._hurry = hurry
        self._previous: dict[int, object] = {}
        self.status: ExitStatus | None = None

    def __enter__(self) -> HurryOnSignal:
        if threading.current_thread() is threading.main_thread():  # signals go to the main thread only
            self._previous = {signum: signal.signal(signum, self._on_signal) for signum in _SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what signal.signal returned

    def _on_signal(self, signum: int, frame: object) -> None:
        # Runs between two bytecodes of the main thread, which may hold any lock: ``hurry`` must take
        # none (Pipeline.hurry sets a flag), and the warning is left to a thread of its own.
        first = self.status is None
        self.status = ExitStatus.TERMINATED if signum == signal.SIGTERM else ExitStatus.INTERRUPTED
        self._hurry()
        if first:
            name = signal.Signals(signum).name
            threading.Thread(target=log.warning, daemon=True, name="affectstream-signal-note", args=(
                "%s while finishing: skipping frames not yet analysed; the final summaries and "
                "stream_ended are still written", name)).start()
