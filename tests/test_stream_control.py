"""Streams added and removed while a run goes on: /api/streams, websocket control messages, the
`streams` command and `run --config` re-read on SIGHUP, against the real CLI and real footage."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from affectstream.errors import ConfigError
from affectstream.stream.control import ControlError, StreamRequest, stream_request
from affectstream.stream.stream_config import changes, read_config
from tests._browser import save_screenshot
from tests._cli_process import CliProcess
from tests._faces_helpers import megamind_loop
from tests.test_protocol_schemas import assert_valid
from tests.timeouts import scaled

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def long_talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return megamind_loop(tmp_path_factory.mktemp("control") / "talk.avi", 4)


def _api(port: int, method: str, path: str = "", body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/streams{path}", method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _events(lines: list[dict[str, Any]], stream: str, kind: str) -> list[dict[str, Any]]:
    return [m for m in lines if m["type"] == "event" and m["stream"] == stream and m["kind"] == kind]


def _assert_no_gap(lines: list[dict[str, Any]], stream: str) -> None:
    seqs = [m["seq"] for m in lines if m.get("stream") == stream and "seq" in m]
    assert seqs and seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{stream}: a gap or a repeat"


def _wait_for(predicate: Any, seconds: float) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_requests_are_checked_before_anything_starts() -> None:
    assert stream_request({"name": "door", "uri": "rtsp://10.0.0.5/s", "rate": 4}) == StreamRequest(
        "door", "rtsp://10.0.0.5/s", 4.0)
    for body, says in [([], "JSON object"), ({"name": "a b", "uri": "x.mp4"}, "stream name"),
                       ({"name": "a", "uri": ""}, "uri"), ({"name": "a", "uri": "x.mp4", "rate": -1}, "rate"),
                       ({"name": "a", "uri": "x.mp4", "rate": True}, "rate"),
                       ({"name": "a", "uri": "x.mp4", "faces": 1}, "faces"),
                       ({"name": "a", "uri": "x.mp4", "faces": "maybe"}, "faces")]:
        with pytest.raises(ControlError, match=says) as caught:
            stream_request(body)
        assert caught.value.status == 400
    assert stream_request({"name": "a", "uri": "x.mp4", "faces": False}).faces is False
    assert stream_request({"name": "a", "uri": "x.mp4", "faces": "on"}).faces is True
    assert stream_request({"name": "a", "uri": "x.mp4"}).faces is None


def test_a_config_file_is_read_whole_and_its_changes_are_only_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "cameras.toml"
    path.write_text('[[stream]]\nname = "a"\nuri = "a.mp4"\nfaces = false\n\n[[stream]]\nname = "b"\nuri = "b.mp4"\n'
                    'rate = 1\nsinks = ["mqtt://broker/affect"]\n\n[[sink]]\nurl = "jsonl:all.jsonl"\n')
    config = read_config(path)
    assert [s.name for s in config.streams] == ["a", "b"] and config.streams[1].rate_hz == 1.0
    assert [s.faces for s in config.streams] == [False, None]
    assert config.sinks == ("jsonl:all.jsonl", "mqtt://broker/affect?streams=b")
    running = {s.name: s for s in config.streams}
    change = changes(running, (StreamRequest("b", "b.mp4", 2.0), StreamRequest("c", "c.mp4")))
    assert changes(running, (StreamRequest("a", "a.mp4", None, True), running["b"])).restart == (
        StreamRequest("a", "a.mp4", None, True),), "a stream whose faces changed restarts"
    assert [s.name for s in change.add] == ["c"] and change.remove == ("a",)
    assert [s.rate_hz for s in change.restart] == [2.0]
    assert changes(running, config.streams).empty
    for text, says in [('[[stream]]\nname = "a"\n', "uri"), ('[[stream]]\nname = "a"\nuri = "x"\ncolour = 1\n', "unknown key"),
                       ('[[stream]]\nname = "a"\nuri = "x"\nfaces = 1\n', "faces"),
                       ('[[stream]]\nname = "a"\nuri = "x"\n[[stream]]\nname = "a"\nuri = "y"\n', "twice"),
                       ("[[stream]\n", "not valid TOML"), ('[camera]\nx = 1\n', "unknown table")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=says):
            read_config(path)


def test_three_streams_added_and_two_removed_while_two_others_run(tmp_path: Path, long_talk: Path) -> None:
    out = tmp_path / "run.jsonl"
    run = CliProcess(["run", f"one={long_talk}", f"two={long_talk}", "--port", "0", "--quiet", "--token", TOKEN,
                      "--out", str(out), "--rate", "1", "--faces", "off", "--model", "tiny-random",
                      "--no-video", "--duration", "40"], tmp_path)
    try:
        port = run.port()
        assert _api(port, "GET", token=None)[0] == 401
        assert _api(port, "POST", body={"name": "x", "uri": str(long_talk)}, token="wrong")[0] == 401
        status, listed = _api(port, "GET")
        assert status == 200 and {s["name"] for s in listed["streams"]} == {"one", "two"}
        assert _api(port, "POST", body={"name": "three", "uri": str(long_talk), "rate": 2})[0] == 201
        assert _api(port, "POST", body={"name": "three", "uri": str(long_talk)})[0] == 409
        assert _api(port, "POST", body={"name": "bad name", "uri": str(long_talk)})[0] == 400
        status, refused = _api(port, "POST", body={"name": "x", "uri": str(long_talk), "faces": True})
        assert status == 409 and "no face stage" in refused["error"], refused
        cli = subprocess.run([sys.executable, "-m", "affectstream", "streams", "add", "four", str(long_talk),
                              "--server", f"127.0.0.1:{port}", "--token", TOKEN], capture_output=True, text=True)
        assert cli.returncode == 0, cli.stderr

        async def over_the_websocket() -> dict[str, Any]:
            from websockets.asyncio.client import connect

            async with connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as client:
                await client.send(json.dumps({"type": "add_stream", "name": "five", "uri": str(long_talk)}))
                while True:
                    message = json.loads(await asyncio.wait_for(client.recv(), scaled(10)))
                    if message["type"] == "stream_control":
                        return message
        reply = asyncio.run(over_the_websocket())
        assert reply["ok"] and reply["stream"] == "five", reply
        assert_valid(reply)  # stream/schemas/stream_control.json
        _wait_for(lambda: len([m for m in _lines(out) if m["type"] == "estimate" and m["stream"] == "five"]) >= 2, 30)
        assert _api(port, "DELETE", "/three")[0] == 202
        gone = subprocess.run([sys.executable, "-m", "affectstream", "streams", "remove", "four",
                               "--server", f"http://127.0.0.1:{port}", "--token", TOKEN], capture_output=True, text=True)
        assert gone.returncode == 0, gone.stderr
        assert _api(port, "DELETE", "/four")[0] in (202, 404)  # already stopping, or ended
        assert _api(port, "DELETE", "/nope")[0] == 404
        _wait_for(lambda: all(_events(_lines(out), s, "stream_ended") for s in ("three", "four")), 20)
        status, listed = _api(port, "GET")
        running = {s["name"]: s["running"] for s in listed["streams"]}
        assert running == {"one": True, "two": True, "three": False, "four": False, "five": True}
    finally:
        run.process.send_signal(signal.SIGINT)
        status = run.finish()
    assert status == 0, run.stderr
    lines = _lines(out)
    for stream in ("one", "two", "five"):
        _assert_no_gap(lines, stream)
    for stream in ("three", "four"):
        ended = _events(lines, stream, "stream_ended")
        assert len(ended) == 1 and "stopped" in json.dumps(ended[0]), ended
        _assert_no_gap(lines, stream)


def test_sighup_re_reads_the_config_and_touches_only_what_changed(tmp_path: Path, long_talk: Path) -> None:
    config = tmp_path / "cameras.toml"
    config.write_text(f'[[stream]]\nname = "keep"\nuri = "{long_talk}"\n\n'
                      f'[[stream]]\nname = "change"\nuri = "{long_talk}"\nrate = 1\n\n'
                      f'[[stream]]\nname = "drop"\nuri = "{long_talk}"\n')
    out = tmp_path / "run.jsonl"
    run = CliProcess(["run", "--config", str(config), "--port", "0", "--quiet", "--out", str(out), "--rate", "1",
                      "--faces", "off", "--model", "tiny-random", "--no-video", "--duration", "40"], tmp_path)
    try:
        run.port()
        _wait_for(lambda: all(_events(_lines(out), s, "stream_started") for s in ("keep", "change", "drop")), 30)
        config.write_text(f'[[stream]]\nname = "keep"\nuri = "{long_talk}"\n\n'
                          f'[[stream]]\nname = "change"\nuri = "{long_talk}"\nrate = 2\n\n'
                          f'[[stream]]\nname = "new"\nuri = "{long_talk}"\n')
        run.process.send_signal(signal.SIGHUP)
        _wait_for(lambda: _events(_lines(out), "new", "stream_started")
                  and len(_events(_lines(out), "change", "stream_started")) == 2
                  and _events(_lines(out), "drop", "stream_ended"), 30)
        config.write_text("[[stream]\n")  # a mistake: refused whole, nothing changes
        run.process.send_signal(signal.SIGHUP)
        run.wait_for("is not valid TOML", 10)
    finally:
        run.process.send_signal(signal.SIGINT)
        status = run.finish()
    assert status == 0, run.stderr
    lines = _lines(out)
    _assert_no_gap(lines, "keep")
    assert len(_events(lines, "keep", "stream_started")) == 1, "the unchanged stream was not touched"
    change = [m for m in lines if m.get("stream") == "change" and "seq" in m]
    assert [m["seq"] for m in change] == sorted({m["seq"] for m in change}), "the restarted stream numbers on"
    assert len(_events(lines, "drop", "stream_ended")) == 1 and not _events(lines, "drop", "stream_started")[1:]


@pytest.mark.slow
def test_a_stream_with_faces_off_in_a_run_with_faces(tmp_path: Path, long_talk: Path) -> None:
    """--config's per-stream ``faces``: one stream through the face stage, one scored by whole-frame CLIP
    alone (its own six labels, no faces), one more added through the API with faces off."""
    from affectstream.engine.model_files import path_of
    from affectstream.errors import ModelFilesMissingError

    try:
        path_of("fer-mini-xception") and path_of("blazeface")
    except ModelFilesMissingError as error:
        pytest.skip(f"the face models are not in the user's cache (affectstream models fetch): {error}")
    config = tmp_path / "cameras.toml"
    config.write_text(f'[[stream]]\nname = "people"\nuri = "{long_talk}"\n\n'
                      f'[[stream]]\nname = "scene"\nuri = "{long_talk}"\nfaces = false\n')
    out = tmp_path / "run.jsonl"
    run = CliProcess(["run", "--config", str(config), "--port", "0", "--quiet", "--out", str(out), "--rate", "2",
                      "--faces", "on", "--model", "tiny-random", "--no-video", "--duration", "60", "--token", TOKEN],
                     tmp_path)
    try:
        port = run.port()
        assert _api(port, "POST", body={"name": "later", "uri": str(long_talk), "faces": "off"})[0] == 201
        _wait_for(lambda: all(len([m for m in _lines(out) if m["type"] == "estimate" and m["stream"] == s]) >= 4
                              for s in ("people", "scene", "later")), 60)
        status, listed = _api(port, "GET")
        assert status == 200 and {s["name"]: s["faces"] for s in listed["streams"]} == {
            "people": True, "scene": False, "later": False}
    finally:
        run.process.send_signal(signal.SIGINT)
        status = run.finish()
    assert status == 0, run.stderr
    lines = _lines(out)
    six = {"anger", "happiness", "disgust", "fear", "sadness", "surprise"}
    for stream in ("scene", "later"):
        estimates = [m for m in lines if m["type"] == "estimate" and m["stream"] == stream]
        assert estimates and all(set(m["scores"]) == six and "faces" not in m and "state" not in m
                                 for m in estimates), estimates[:2]
        _assert_no_gap(lines, stream)
    people = [m for m in lines if m["type"] == "estimate" and m["stream"] == "people"]
    assert all(set(m["scores"]) == six | {"neutral"} and isinstance(m.get("faces"), list) for m in people)
    assert any(m["faces"] for m in people), "the face stage found Megamind's face"
    summaries = [m for m in lines if m["type"] == "summary" and m["stream"] == "scene"]
    assert summaries and all("neutral" not in json.dumps(m) for m in summaries)


def test_a_config_asking_faces_of_a_run_without_them_is_refused_before_it_starts(tmp_path: Path) -> None:
    config = tmp_path / "cameras.toml"
    config.write_text('[[stream]]\nname = "door"\nuri = "door.mp4"\nfaces = true\n')
    result = subprocess.run([sys.executable, "-m", "affectstream", "run", "--config", str(config), "--faces", "off",
                             "--model", "tiny-random", "--no-serve", "--quiet"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=scaled(120))
    assert result.returncode == 2, result.stderr
    assert "stream 'door'" in result.stderr and "no face stage" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_dashboard_adds_and_stops_a_stream_and_shows_its_sinks(tmp_path: Path, long_talk: Path,
                                                                   browser: Any) -> None:
    out = tmp_path / "run.jsonl"
    run = CliProcess(["run", f"one={long_talk}", "--port", "0", "--quiet", "--out", str(out), "--rate", "1",
                      "--faces", "off", "--model", "tiny-random", "--no-video", "--duration", "40",
                      "--sink", f"jsonl:{tmp_path / 'sink.jsonl'}"], tmp_path)
    try:
        port = run.port()
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#sinks:not([hidden])", timeout=scaled(15) * 1000)
        assert "up" in page.inner_text("#sinks") or "starting" in page.inner_text("#sinks")
        page.fill("#add-stream input[name=name]", "extra")
        page.fill("#add-stream input[name=uri]", str(long_talk))
        page.click("#add-stream button")
        page.wait_for_selector('.stream[data-stream="extra"]', timeout=scaled(20) * 1000)
        page.fill("#add-stream input[name=name]", "extra")
        page.fill("#add-stream input[name=uri]", str(long_talk))
        page.click("#add-stream button")
        page.wait_for_selector('#control-status[data-error="1"]', timeout=scaled(10) * 1000)
        assert "is running" in page.inner_text("#control-status")
        _wait_for(lambda: _events(_lines(out), "extra", "stream_started"), 20)
        page.click('.stream[data-stream="extra"] button.stop')
        page.wait_for_selector('.stream[data-stream="extra"][data-ended]', timeout=scaled(20) * 1000)
        save_screenshot(page, tmp_path, "dashboard-control.png")
        assert not page.is_visible('.stream[data-stream="extra"] button.stop')
    finally:
        run.process.send_signal(signal.SIGINT)
        status = run.finish()
    assert status == 0, run.stderr
    lines = _lines(out)
    assert len(_events(lines, "extra", "stream_ended")) == 1
    _assert_no_gap(lines, "one")
