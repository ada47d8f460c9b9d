"""Media that ends is a file wherever it comes from: an mp4 and a finished (VOD) HLS playlist served
by a real local HTTP server are read once, start to end, by `run` and `analyze` (issue 9 part 4).
Before, both reconnected every 1.5 s for ever, replaying the same media times."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import affectstream, read_jsonl

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (Debian package ffmpeg)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 the base class's name
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A directory with clip.mp4 (6 s, 10 fps) and its VOD HLS playlist, served on a free port."""
    root = tmp_path_factory.mktemp("http")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
                    "-t", "6", "-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p", str(root / "clip.mp4")],
                   check=True, timeout=60)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(root / "clip.mp4"), "-c", "copy", "-f", "hls",
                    "-hls_time", "2", "-hls_playlist_type", "vod", str(root / "index.m3u8")], check=True, timeout=60)
    assert "#EXT-X-ENDLIST" in (root / "index.m3u8").read_text()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip.mp4", "index.m3u8"])
def test_run_reads_http_media_that_ends_once_like_a_file(served: str, name: str, tmp_path: Path) -> None:
    result = affectstream("run", f"{served}/{name}", "--model", "tiny-random", "--fast", "--no-serve", "--quiet",
                          "--out", "m.jsonl", "--stats-interval", "3600", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    messages = read_jsonl(tmp_path / "m.jsonl")
    kinds = [m["kind"] for m in messages if m["type"] == "event" and m["kind"].startswith("stream_")]
    assert kinds == ["stream_started", "stream_ended"], kinds
    ended = next(m for m in messages if m.get("kind") == "stream_ended")
    assert ended["outcome"] == "ended"
    ts = [m["ts"] for m in messages if m["type"] == "estimate"]
    # Every media time once, in order, at the file rate (2 Hz) over the 6 s.
    assert ts == sorted(set(ts)) and 10 <= len(ts) <= 14, ts


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip.mp4", "index.m3u8"])
def test_analyze_reads_http_media(served: str, name: str, tmp_path: Path) -> None:
    result = affectstream("analyze", f"{served}/{name}", "--model", "tiny-random", "--rate", "0", cwd=tmp_path,
                          timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / f"{name}.affect.json").read_text())  # named after the URL's file
    assert summary["damage"]["outcome"] == "ended"
    assert summary["frames"] == 60  # every frame of the 6 s at 10 fps
    assert summary["source"]["path"] == f"{served}/{name}"
