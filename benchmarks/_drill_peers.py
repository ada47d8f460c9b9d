"""Real peers for benchmarks/fault_drill.py: affectstream processes, websocket clients, raw HTTP, RTSP.

Nothing here is mocked: an ``Affectstream`` is the real command in a subprocess, a ``Recorder`` is a
``websockets`` client on its own thread, ``http_exchange`` speaks HTTP/1.1 over a plain socket (so
that it can send what a browser or an attacker would: any method, any Host), and ``RtspCamera`` is
GStreamer's RTSP server from tests/rtsp_server.py run by Debian's Python.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _proc import free_port

REPO = Path(__file__).resolve().parents[1]
AFFECTSTREAM = (sys.executable, "-m", "affectstream")
TRACEBACK = "Traceback (most recent call last)"
SYSTEM_PYTHON = Path("/usr/bin/python3")
RTSP_SCRIPT = REPO / "tests" / "rtsp_server.py"
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ ([\w.]+):")

Message = dict[str, Any]


def has_traceback(text: str) -> bool:
    return TRACEBACK in text or "terminate called" in text


def rss_mb(pid: int) -> float | None:
    """Resident memory of a running process (from /proc), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def read_jsonl(path: Path) -> list[Message]:
    """The complete lines of a JSON Lines file that another process may still be writing."""
    if not path.exists():
        return []
    messages = []
    for line in path.read_text(errors="replace").splitlines():
        if line.endswith("}"):
            with contextlib.suppress(ValueError):
                messages.append(json.loads(line))
    return messages


def log_times(stderr: str) -> list[tuple[float, str, str]]:
    """(epoch seconds, logger, line) of every log line affectstream wrote to stderr."""
    found = []
    for line in stderr.splitlines():
        match = _LOG_TIME.match(line)
        if match:
            moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            found.append((moment.timestamp(), match.group(2), line))
    return found


def pipeline_started_at(stderr: str) -> float | None:
    """When the model was loaded and the sources began to open: the last log line of
    ``affectstream.engine`` (model loading) before the first one of ``affectstream.stream``."""
    started = None
    for moment, logger, _ in log_times(stderr):
        if logger.startswith("affectstream.stream"):
            break
        if logger.startswith("affectstream.engine"):
            started = moment
    return started


# -- processes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """How one bounded command ended."""

    status: int | None  # None: it ran past its timeout and was killed
    seconds: float
    stdout: str
    stderr: str
    peak_rss_mb: float

    @property
    def timed_out(self) -> bool:
        return self.status is None


def run_measured(args: Sequence[str], cwd: Path, timeout_s: float) -> Finished:
    """Run a command to its end (killed after ``timeout_s``), with the peak RSS of that child alone
    (``wait4`` gives each child's own rusage; RUSAGE_CHILDREN would mix all of them)."""
    out_path, err_path = cwd / ".drill-stdout", cwd / ".drill-stderr"
    started = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(list(args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True)
        status, usage = _wait4(process.pid, started + timeout_s)
        if status is None:
            os.killpg(process.pid, signal.SIGKILL)
            _, usage = _wait4(process.pid, time.monotonic() + 30)
        process.returncode = -1 if status is None else status  # reaped here: Popen must not wait again
    seconds = time.monotonic() - started
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    peak = usage.ru_maxrss / 1024 if usage is not None else float("nan")
    return Finished(status, seconds, stdout, stderr, peak)


def _wait4(pid: int, deadline: float) -> tuple[int | None, Any]:
    while True:
        reaped, wait_status, usage = os.wait4(pid, os.WNOHANG)
        if reaped == pid:
            return os.waitstatus_to_exitcode(wait_status), usage
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.05)


class Affectstream:
    """``affectstream ARGS`` as a long-running process: stderr to a file, signals, RSS, its exit."""

    def __init__(self, args: Sequence[str], cwd: Path, name: str) -> None:
        self.args = [*AFFECTSTREAM, *args]
        self.cwd = cwd
        self.stderr_path = cwd / f"{name}.stderr"
        self.stdout_path = cwd / f"{name}.stdout"
        self.started_wall = time.time()
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.process = subprocess.Popen(self.args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid)

    def wait_http(self, port: int, timeout_s: float = 90, host: str = "127.0.0.1") -> bool:
        """True once ``/healthz`` answers 200, False if the process died or the time ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            with contextlib.suppress(OSError):
                if http_exchange(port, "GET", "/healthz", host=host, timeout_s=2).status == 200:
                    return True
            time.sleep(0.25)
        return False

    def wait_for(self, out: Path, predicate: Callable[[list[Message]], bool], timeout_s: float) -> bool:
        """Wait until the messages written so far to ``out`` (its ``--out`` file) satisfy ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(read_jsonl(out)):
                return True
            if not self.alive():
                return predicate(read_jsonl(out))
            time.sleep(0.05)
        return False

    def signal(self, number: int) -> float:
        """Send a signal; returns the monotonic time it was sent."""
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(number)
        return sent

    def wait(self, timeout_s: float) -> int | None:
        """The exit status, or None if it is still running after ``timeout_s``."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGINT, then SIGKILL if it does not go; the exit status of the SIGINT (None: had to be killed)."""
        if not self.alive():
            return self.process.returncode
        self.signal(signal.SIGINT)
        status = self.wait(timeout_s)
        if status is None:
            self.kill()
        return status

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(30)


# -- websocket client ---------------------------------------------------------------------------------


@dataclass
class Received:
    """What one websocket connection received, in order, and how it ended."""

    messages: list[Message] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # monotonic time each message came
    close_code: int | None = None
    error: str = ""


class Recorder(threading.Thread):
    """A real ``websockets`` client on its own thread that keeps every message it receives.

    ``on_message`` runs on the client's thread right after a message is stored (the kill -9 check
    uses it to kill the server the moment an estimate arrives)."""

    def __init__(self, url: str, on_message: Callable[[Message], None] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True, name=f"recorder {url}")
        self.url = url
        self.on_message = on_message
        self.headers = headers or {}
        self.received = Received()
        self.connected = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        try:
            with connect(self.url, open_timeout=15, max_size=None, additional_headers=self.headers) as ws:
                self.connected.set()
                while not self._halt.is_set():
                    try:
                        text = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    message = json.loads(text)
                    with self._lock:
                        self.received.messages.append(message)
                        self.received.arrivals.append(time.monotonic())
                    if self.on_message is not None:
                        self.on_message(message)
        except ConnectionClosed as closed:
            self.received.close_code = closed.rcvd.code if closed.rcvd is not None else 1006
        except Exception as error:  # recorded: the check reports it
            self.received.error = f"{type(error).__name__}: {error}"
        finally:
            self.connected.set()

    def messages(self) -> list[Message]:
        with self._lock:
            return list(self.received.messages)

    def arrival_times(self) -> list[float]:
        with self._lock:
            return list(self.received.arrivals)

    def wait_until(self, predicate: Callable[[list[Message]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.messages()):
                return True
            if not self.is_alive():
                return predicate(self.messages())
            time.sleep(0.05)
        return False

    def stop(self) -> Received:
        self._halt.set()
        self.join(10)
        return self.received


def start_recorder(url: str, **kwargs: Any) -> Recorder:
    recorder = Recorder(url, **kwargs)
    recorder.start()
    recorder.connected.wait(20)
    return recorder


# -- raw HTTP -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes


def http_exchange(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                  host: str = "127.0.0.1", timeout_s: float = 5, read_body: bool = True) -> HttpReply:
    """One HTTP/1.1 request over a fresh socket, exactly as given (any method, any Host header)."""
    lines = [f"{method} {path} HTTP/1.1"]
    given = {"Host": f"{host if ':' not in host else f'[{host}]'}:{port}", "Connection": "close",
             **(headers or {})}
    lines += [f"{name}: {value}" for name, value in given.items()]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((host, port))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = _read_reply(sock, read_body, time.monotonic() + timeout_s)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    reply_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        reply_headers[name.strip().lower()] = value.strip()
    return HttpReply(status, reply_headers, body)


def _read_reply(sock: socket.socket, read_body: bool, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        if not read_body and b"\r\n\r\n" in data:
            break
    return data


def websocket_upgrade(port: int, path: str = "/ws", host_header: str | None = None,
                      origin: str | None = None) -> HttpReply:
    """A websocket handshake by hand (to send any Host and Origin); returns the server's answer."""
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    if host_header is not None:
        headers["Host"] = host_header
    if origin is not None:
        headers["Origin"] = origin
    return http_exchange(port, "GET", path, headers, timeout_s=5, read_body=False)


class StalledReader:
    """A websocket client that completes the handshake and then never reads (a hung browser tab)."""

    def __init__(self, port: int, query: str = "") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall((f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
        self.status_line = self.sock.recv(12).decode("latin-1")

    def close(self) -> None:
        self.sock.close()


# -- other peers --------------------------------------------------------------------------------------


def gstreamer_missing() -> str | None:
    """Why GStreamer's RTSP server cannot run here, or None when it can."""
    if not SYSTEM_PYTHON.exists():
        return "Debian's /usr/bin/python3 is not there"
    try:
        check = subprocess.run([str(SYSTEM_PYTHON), str(RTSP_SCRIPT), "--check"], capture_output=True,
                               text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run {RTSP_SCRIPT.name}: {error}"
    if check.returncode != 0:
        return f"GStreamer's RTSP server is not usable: {check.stdout.strip()} {check.stderr[-200:]}"
    return None


class RtspCamera:
    """tests/rtsp_server.py (GStreamer's RTSPServer, a live test pattern) as a subprocess."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        process = subprocess.Popen([str(SYSTEM_PYTHON), str(RTSP_SCRIPT), "--port", str(self.port)],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._process = process
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(process.stdout.readline() if process.stdout else ""),
                                  daemon=True)
        reader.start()
        reader.join(30)
        if not first or not first[0].startswith("READY"):
            self.kill()
            raise RuntimeError(f"the RTSP server did not start: {first}")

    def freeze(self) -> float:
        """SIGSTOP: its sockets stay open but nothing flows (a hung camera). Returns the wall time."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        return time.time()

    def kill(self) -> float:
        """Gone at once (kill -9). Returns the wall time."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a stopped process cannot be reaped otherwise
            self._process.kill()
            self._process.wait(10)
            self._process = None
        return time.time()


class SilentListener:
    """A TCP port that accepts connections and never says a word (a camera that hangs on open)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


class WebPages:
    """A real HTTP server with an HTML page named like a video and a permanent 404."""

    def __init__(self) -> None:
        import http.server

        html = b"<!doctype html><html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/page.mp4"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(html)))
                    self.end_headers()
                    self.wfile.write(html)
                else:
                    self.send_error(404)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
