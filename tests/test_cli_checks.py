"""A user's mistakes are caught before anything heavy loads: one line, the documented exit status, and
no output file written (issue 12: checked arguments, early checks, honest exit statuses)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from affectstream.errors import ExitStatus
from tests.timeouts import scaled

# (arguments, exit status, a part of the message). "{tmp}" is the test's directory; "{port}" a port in use.
CASES = [
    (["run", "x.mp4", "--rate", "-1"], ExitStatus.USAGE, "--rate: -1 is out of range: use a value >= 0"),
    (["run", "x.mp4", "--rate", "nan"], ExitStatus.USAGE, "is not a finite number"),
    (["run", "x.mp4", "--duration", "-5"], ExitStatus.USAGE, "--duration: -5 is out of range: use a value > 0"),
    (["run", "x.mp4", "--stats-interval", "0"], ExitStatus.USAGE, "use a value > 0"),
    (["run", "x.mp4", "--max-batch", "0"], ExitStatus.USAGE, "--max-batch: 0 is out of range"),
    (["run", "x.mp4", "--port", "70000"], ExitStatus.USAGE, "use a value >= 0 and <= 65535"),
    (["run", "x.mp4", "--onset", "1.5"], ExitStatus.USAGE, "--onset: 1.5 is out of range"),
    (["analyze", "x.mp4", "--top", "-1"], ExitStatus.USAGE, "--top: -1 is out of range"),
    (["run", "a=x.mp4", "a=y.mp4", "--no-serve"], ExitStatus.USAGE, "stream name(s) a given twice"),
    (["run", "x.mp4", "--no-serve", "--out", "{tmp}/no/such/dir/x.jsonl"], ExitStatus.USAGE,
     "the directory {tmp}/no/such/dir does not exist"),
    (["analyze", "x.mp4", "--summary", "{tmp}/no/such/dir/x.json"], ExitStatus.USAGE,
     "the directory {tmp}/no/such/dir does not exist"),
    (["run", "x.mp4", "--port", "{port}"], ExitStatus.USAGE, "is in use: stop what uses it, pick another --port, or --port 0"),
    (["analyze", "{tmp}/nope.mp4"], ExitStatus.NOTHING, "nope.mp4: no such file; check the path"),
    (["listen", "ws://127.0.0.1:9/ws", "--no-reconnect", "--count", "1"], ExitStatus.NOTHING, "refused"),
    (["analyze", "{tmp}/x.mp4", "--bundle", "{tmp}/nobundle", "--faces", "off"], ExitStatus.NOTHING,
     "no such file"),
    (["run", "x.mp4", "--no-serve", "--show"], ExitStatus.USAGE, "pip install affectstream[gui]"),
    (["run"], ExitStatus.USAGE, "give at least one SOURCE (a file, camera or URL), --config FILE, --keep-running"),
    (["run", "--allow-browser-sources", "--no-video"], ExitStatus.USAGE, "drop --no-serve and --no-video"),
    (["run", "x.mp4", "--video-lines", "10"], ExitStatus.USAGE, "--video-lines: 10 is out of range"),
    (["listen", "ws://127.0.0.1:9/ws", "--resume", "cam=later"], ExitStatus.USAGE, "--resume takes STREAM=SEQ"),
    (["analyze", "{tmp}/x.mp4", "--bundle", "{tmp}/b", "--model", "tiny-random"], ExitStatus.USAGE,
     "--model and --bundle both name the backbone"),
    (["evaluate", "{tmp}/features", "--bundle", "b", "--report", "{tmp}/no/dir/r.md"], ExitStatus.USAGE,
     "the directory {tmp}/no/dir does not exist"),
]


@pytest.fixture()
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(("argv", "status", "message"), CASES, ids=[" ".join(c[0][:3]) + f" {i}" for i, c in enumerate(CASES)])
def test_mistakes_are_caught_early(argv: list[str], status: ExitStatus, message: str, tmp_path: Path,
                                   busy_port: int) -> None:
    fill = {"tmp": str(tmp_path), "port": str(busy_port)}
    argv = [part.format(**fill) for part in argv]
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run([sys.executable, "-m", "affectstream", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=scaled(60))
    assert done.returncode == status, done.stderr
    assert message.format(**fill) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # Nothing heavy ran: no model was loaded, and no output file was written or directory made.
    assert "expression model" not in done.stderr and "encoder backend" not in done.stderr, done.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_a_summary_is_never_replaced_silently(short_video: Path, tmp_path: Path) -> None:
    # By default the outputs go beside the input (its directory is writable), not into the current one.
    videos = tmp_path / "videos"
    videos.mkdir()
    video = videos / short_video.name
    shutil.copy(short_video, video)
    here = tmp_path / "here"
    here.mkdir()

    def analyze(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "affectstream", "analyze", str(video), "--model",
                               "tiny-random", "--faces", "off", *options], cwd=here, capture_output=True,
                              text=True, timeout=scaled(120))

    first = analyze()
    assert first.returncode == 0, first.stderr
    default = videos / f"{video.name}.affect.json"
    written = default.read_text()
    assert (videos / f"{video.name}.affect.html").is_file() and not list(here.iterdir())
    assert str(default) in first.stderr  # the paths written are said
    # Through a pipe the summary is on stdout too (for `analyze x.mp4 | jq`).
    assert json.loads(first.stdout)["frames"] == json.loads(written)["frames"]
    second = analyze()
    assert second.returncode == 0 and default.read_text() == written
    assert "writing" in second.stderr and (videos / f"{video.name}.affect-1.json").is_file()
    assert (videos / f"{video.name}.affect-1.html").is_file()  # the report keeps its summary's number
    default.write_text("{}")
    assert analyze("--force").returncode == 0 and json.loads(default.read_text())["frames"] > 0


def test_help_shows_the_defaults() -> None:
    done = subprocess.run([sys.executable, "-m", "affectstream", "run", "--help"], capture_output=True, text=True,
                          timeout=scaled(30))
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: 16)" in text and "(default: 8765)" in text and "(default: None)" not in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--faces", "off", "--clip-input", "face"], "--clip-input face needs the face stage"),
    (["--onset", "0.3", "--offset", "0.5"], "--offset (0.5) must not be above --onset (0.3)"),
    (["--windows", "5,5"], "--windows lists a window twice"),
    (["--windows", "5,x"], "--windows takes seconds separated by commas"),
])
def test_contradictions_are_refused_before_the_model(argv: list[str], message: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "affectstream", "run", "x.mp4", "--no-serve", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=scaled(60))
    assert done.returncode == ExitStatus.USAGE and message in done.stderr, done.stderr
    assert "encoder backend" not in done.stderr and "expression model" not in done.stderr
