"""End to end through the real `affectstream` command, on generated videos and opencv-doc's samples."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests import media
from tests.timeouts import scaled

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


def affectstream(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "affectstream", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=scaled(timeout))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_stream_messages(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    streams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in messages:
        assert message["v"] == 1
        assert isinstance(message["wall"], int) and message["wall"] > 1_600_000_000_000
        streams[message["stream"]].append(message)
    for stream_messages in streams.values():
        assert [m["seq"] for m in stream_messages] == list(range(len(stream_messages)))
        estimate_ts = [m["ts"] for m in stream_messages if m["type"] == "estimate"]
        assert estimate_ts == sorted(estimate_ts)
    return streams


def analyze_summary(video: Path, cwd: Path, *options: str, timeout: float = 120) -> dict[str, Any]:
    """`affectstream analyze VIDEO --model tiny-random [OPTIONS]`: it must exit 0; its summary JSON."""
    result = affectstream("analyze", str(video), "--model", "tiny-random", "--summary", "s.json", *options,
                          cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads((cwd / "s.json").read_text())
    return summary


def test_analyze_writes_summary(short_video: Path, tmp_path: Path) -> None:
    # Whole-frame CLIP alone (--faces off): its six labels (the face stage adds neutral and no_face).
    summary = analyze_summary(short_video, tmp_path, "--out", "m.jsonl", "--rate", "4", "--faces", "off")
    assert summary["frames"] == 16
    assert set(summary["share"]) == {"anger", "happiness", "disgust", "fear", "sadness", "surprise"}
    assert summary["timeline"] and summary["top_moments"]
    streams = check_stream_messages(read_jsonl(tmp_path / "m.jsonl"))
    estimates = [m for m in streams["file"] if m["type"] == "estimate"]
    assert len(estimates) == 16 and estimates[0]["ts"] == 0.0


def test_run_two_files_fast(short_video: Path, other_video: Path, tmp_path: Path) -> None:
    result = affectstream("run", f"left={short_video}", f"right={other_video}", "--model", "tiny-random",
                          "--fast", "--no-serve", "--quiet", "--out", "m.jsonl", "--rate", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    streams = check_stream_messages(read_jsonl(tmp_path / "m.jsonl"))
    assert set(streams) == {"left", "right"}
    for name, expected in (("left", 20), ("right", 15)):
        kinds = [m.get("kind") for m in streams[name] if m["type"] == "event"]
        assert kinds[0] == "stream_started" and "stream_ended" in kinds
        assert sum(m["type"] == "estimate" for m in streams[name]) == expected


def test_run_stdout_is_jsonl(short_video: Path, tmp_path: Path) -> None:
    result = affectstream("run", str(short_video), "--model", "tiny-random", "--fast", "--no-serve",
                          "--rate", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    check_stream_messages(messages)
    assert sum(m["type"] == "estimate" for m in messages) == 8


def test_ctrl_c_flushes_and_exits_cleanly(short_video: Path, tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "affectstream", "run", str(short_video), "--model",
                                "tiny-random", "--no-serve", "--quiet", "--out", "m.jsonl"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "m.jsonl"
    deadline = time.monotonic() + scaled(60)
    while time.monotonic() < deadline and (not out.exists() or '"estimate"' not in out.read_text()):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=scaled(30))
    assert process.returncode == 0, stderr
    messages = read_jsonl(out)  # every line complete: the sink was flushed
    ended = [m for m in messages if m.get("kind") == "stream_ended"]
    assert ended and ended[-1]["outcome"] == "stopped"


def test_missing_file_exit_status(tmp_path: Path) -> None:
    result = affectstream("analyze", str(tmp_path / "nope.mp4"), "--model", "tiny-random", cwd=tmp_path)
    assert result.returncode == 4
    assert "missing" in result.stderr


def test_a_camera_that_never_answers_exits_4_when_stopped(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on: every connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = affectstream("run", f"rtsp://127.0.0.1:{port}/cam", "--model", "tiny-random", "--no-serve",
                          "--duration", "3", cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    kinds = [m.get("kind") for m in map(json.loads, result.stdout.splitlines()) if m["type"] == "event"]
    assert "stream_reconnecting" in kinds and "stream_started" not in kinds


def test_a_camera_that_never_answers_gives_up_after_open_retries(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on: every connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = affectstream("run", f"rtsp://127.0.0.1:{port}/cam", "--model", "tiny-random", "--faces", "off",
                          "--no-serve", "--open-retries", "1", "--open-timeout", "2", cwd=tmp_path, timeout=60)
    assert result.returncode == 4, result.stderr
    events = [m for m in map(json.loads, result.stdout.splitlines()) if m["type"] == "event"]
    assert [m["kind"] for m in events] == ["stream_reconnecting", "stream_error"]
    assert "never connected: gave up after 1 retries" in events[-1]["detail"]


def test_unknown_model_is_a_usage_error(short_video: Path, tmp_path: Path) -> None:
    result = affectstream("analyze", str(short_video), "--model", "no-such-model", cwd=tmp_path)
    assert result.returncode == 2
    assert "tiny-random" in result.stderr  # the message lists what exists


@pytest.mark.slow
@pytest.mark.skipif(not (OPENCV_DATA / "Megamind.avi").exists(), reason="Debian's opencv-doc is not installed")
def test_analyze_megamind(tmp_path: Path) -> None:
    summary = analyze_summary(OPENCV_DATA / "Megamind.avi", tmp_path, timeout=300)
    assert summary["frames"] > 10 and summary["damage"]["outcome"] == "ended"


@pytest.mark.slow
@pytest.mark.skipif(not (OPENCV_DATA / "Megamind_bugy.avi").exists(), reason="Debian's opencv-doc is not installed")
def test_analyze_megamind_bugy_reads_every_frame(tmp_path: Path) -> None:
    # Megamind_bugy.avi (a 30 fps re-encode of Megamind.avi that OpenCV uses for its seeking bugs) has
    # packed B-frames: ffprobe has no pts for most of its frames. This FFmpeg decodes all 270, and AVI's
    # frame counter times each one, so nothing is lost or guessed: status 0 and no damage.
    summary = analyze_summary(OPENCV_DATA / "Megamind_bugy.avi", tmp_path, timeout=300)
    damage = summary["damage"]
    assert damage["outcome"] == "ended" and damage["frames"] == damage["expected_frames"] == 270
    assert damage["missing_pts"] == 0 and damage["decode_errors"] == 0 and not damage["truncated"]
    assert damage["last_pts"] == pytest.approx(9.0) and damage["expected_duration"] == pytest.approx(9.0)
    assert summary["frames"] > 0 and summary["end"] <= damage["expected_duration"]


def test_frames_without_timestamps_are_damage_that_keeps_status_0(tmp_path: Path) -> None:
    damage = analyze_summary(media.make_raw_h264(tmp_path / "raw.h264"), tmp_path)["damage"]
    assert damage["outcome"] == "ended" and damage["frames"] == damage["missing_pts"] == 20
    assert "without timestamp" in damage["detail"]
