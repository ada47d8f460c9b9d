"""`affectstream run` as a child process whose stderr is read as it comes (for port, signals, kill -9)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.timeouts import scaled

_PORT = re.compile(r"dashboard and websocket at http://[^ ]+:(\d+)/")


class CliProcess:
    """A running ``affectstream ARGS``; ``port`` once its server listens, ``stderr`` so far."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "affectstream", *args], cwd=cwd,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first stderr match of ``pattern``; AssertionError (with the log) if it does not come."""
        deadline = time.monotonic() + scaled(timeout)
        compiled = re.compile(pattern)
        while time.monotonic() < deadline:
            found = compiled.search(self.stderr)
            if found:
                return found
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log:\n{self.stderr}")

    def port(self) -> int:
        return int(self.wait_for(_PORT.pattern).group(1))

    def finish(self, timeout: float = 60.0) -> int:
        try:
            status = self.process.wait(scaled(timeout))
        finally:
            self.process.kill()
        self._reader.join(5)
        return status

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.append(line)
