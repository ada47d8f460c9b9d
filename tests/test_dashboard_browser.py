"""The dashboard in headless Chromium during a run: bars and timeline move, events appear, and the page
reconnects and resumes by itself when the server restarts. A screenshot is saved (tmp_path, and
$AFFECTSTREAM_TEST_ARTIFACTS when set).

One test feeds the page from ``affectstream run`` on a generated video; the restart test feeds it from
the publisher of tests/_server_helpers.py, which can stop and restart the server at will.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from affectstream.stream.messages import Event
from tests._browser import CHROMIUM, save_screenshot
from tests._server_helpers import Publisher, start_server
from tests.timeouts import scaled

ROOT = Path(__file__).parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


def watch_page(page: Any, seconds: float) -> dict[str, Any]:
    """What the dashboard shows now: bar widths, timeline pixels and points, events, stats."""
    return page.evaluate("""() => {
        const card = document.querySelector('.stream');
        if (!card) return null;
        const canvas = card.querySelector('canvas.timeline');
        return {
            bars: [...card.querySelectorAll('.bar .fill')].map((f) => f.style.width),
            pixels: canvas.toDataURL(),
            points: Number(canvas.dataset.points || 0),
            events: [...card.querySelectorAll('.events li')].map((li) => Number(li.dataset.seq)),
            stats: card.querySelector('.stats').textContent,
            status: document.getElementById('connection').dataset.state,
        };
    }""")


def wait_for(page: Any, predicate: Any, seconds: float) -> dict[str, Any]:
    deadline_ms = scaled(seconds) * 1000
    waited = 0.0
    while True:
        seen = watch_page(page, seconds)
        if seen is not None and predicate(seen):
            return seen
        if waited > deadline_ms:
            raise AssertionError(f"the dashboard never showed what was expected; last seen: "
                                 f"{ {k: v for k, v in (seen or {}).items() if k != 'pixels'} }")
        page.wait_for_timeout(200)
        waited += 200


def check_it_moves(page: Any) -> dict[str, Any]:
    first = wait_for(page, lambda s: s["points"] >= 3, 20)
    later = wait_for(page, lambda s: s["points"] >= first["points"] + 5 and s["bars"] != first["bars"], 20)
    assert later["pixels"] != first["pixels"], "the timeline was redrawn"
    return wait_for(page, lambda s: s["events"] and "fps" in s["stats"], 20)


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    """A page that collects console errors and uncaught exceptions; none may happen."""
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    # While a server is down, Chromium itself logs each refused reconnect: that is the network, not the page.
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and "ERR_CONNECTION_REFUSED" not in m.text else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    assert not errors, errors


def test_dashboard_shows_a_real_run(page: Any, tmp_path: Path) -> None:
    feed_from_a_real_run(page, tmp_path)


def test_dashboard_reconnects_and_resumes_after_a_server_restart(page: Any, tmp_path: Path) -> None:
    feed_from_the_publisher(page, tmp_path)


def feed_from_the_publisher(page: Any, tmp_path: Path) -> None:
    log_path = tmp_path / "events.sqlite"
    server = start_server(eventlog_path=log_path)
    publisher = Publisher(server, hz=10, event_every=3).start()
    try:
        page.goto(f"http://127.0.0.1:{server.port}/?video=off")  # a bare StreamServer has no video routes
        seen = check_it_moves(page)
        save_screenshot(page, tmp_path, "dashboard.png")
        assert page.locator(".stream").count() == 2
        # The first connection asks for the log's history while live events arrive: each shown once.
        assert len(seen["events"]) == len(set(seen["events"]))
        assert seen["events"] == sorted(seen["events"], reverse=True), "newest first, by seq"
        port = server.port
        publisher.stop()
        server.stop()
        wait_for(page, lambda s: s["status"] == "closed", 10)
        server = start_server(eventlog_path=log_path, port=port)
        publisher = Publisher(server, hz=10, event_every=3,
                              first_seq={s: server.next_seq(s) for s in ("cam", "file")}).start()
        restarted = publisher

        def first_events_after_the_restart() -> set[int]:
            return set(sorted(m.seq for m in restarted.durable("cam") if isinstance(m, Event))[:3])

        # The events published before the stop may still arrive first (resumed): wait for the first three
        # of the restarted server's.
        after = wait_for(page, lambda s: s["status"] == "open" and len(first_events_after_the_restart()) == 3
                         and first_events_after_the_restart() <= set(s["events"]), 30)
        save_screenshot(page, tmp_path, "dashboard-after-restart.png")
    finally:
        publisher.stop()
        server.stop()
    shown = sorted(after["events"])
    assert len(shown) == len(set(shown)), "no event shown twice after resuming"
    assert after["events"] == sorted(after["events"], reverse=True), "newest first, by seq"
    assert len(shown) >= len(seen["events"]) + 3


def feed_from_a_real_run(page: Any, tmp_path: Path) -> None:
    from tests.media import make_video

    video = make_video(tmp_path / "talk.avi", seconds=40.0, fps=10, size=(160, 120))
    with running(video, "--model", "tiny-random", "--faces", "off", "--rate", "5") as port:
        page.goto(f"http://127.0.0.1:{port}/")
        check_it_moves(page)
        save_screenshot(page, tmp_path, "dashboard.png")


@contextlib.contextmanager
def running(video: Path, *options: str) -> Iterator[int]:
    """`affectstream run VIDEO` serving on a free port; yields the port."""
    with serving(str(video), *options) as port:
        yield port


@contextlib.contextmanager
def serving(*arguments: str) -> Iterator[int]:
    """`affectstream run ARGUMENTS` (sources and options) serving on a free port; yields the port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "affectstream", "run", *arguments, "--device", "cpu", "--port", "0", "--quiet",
         "--stats-interval", "1", "--windows", "2,10"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            found = re.search(r"websocket at http://[^:]+:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "affectstream run did not report its port"
        threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe from filling
        yield port
    finally:
        process.terminate()
        process.wait(scaled(30))


def test_dashboard_shows_a_row_per_face(page: Any, tmp_path: Path) -> None:
    """Real footage with the offline face model: a face table with ids, states and mini bars."""
    from tests._faces_helpers import mirrored_pair

    video = mirrored_pair(tmp_path / "pair.avi", seconds=2.8)
    looped = tmp_path / "pair-looped.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "5", "-i", str(video), "-c:v", "libx264",
                    "-preset", "ultrafast", str(looped)], check=True, timeout=120)
    with running(looped, "--rate", "4") as port:
        page.goto(f"http://127.0.0.1:{port}/")
        seen = page.wait_for_function("""() => {
            const rows = [...document.querySelectorAll('.stream .faces tbody tr[data-face]')];
            return rows.length === 2 ? rows.map((r) => [...r.children].map((c) => c.textContent)) : null;
        }""", timeout=scaled(60) * 1000).json_value()
        save_screenshot(page, tmp_path, "dashboard-faces.png")
        badge = page.locator(".stream .state").text_content()
        bars = page.locator(".stream .faces tbody tr[data-face] .mini i").count()
    assert sorted(row[0] for row in seen) == ["#1", "#2"]
    assert all(row[1] in ("ok", "uncertain") and row[2] for row in seen)
    assert badge in ("ok", "uncertain") and bars == 2 * 7


def test_a_finished_run_lingers_and_the_page_says_ended_then_finished(browser: Any, tmp_path: Path) -> None:
    """`run FILE --linger S`: the server stays after the file ended; a page opened then shows the stream
    as ended with its stream_ended event, its last scores and its timeline (from the estimates the event
    log keeps, replayed by `resume` from -1); when the server goes, the page says finished, not
    reconnecting."""
    from tests import media
    from tests._cli_process import CliProcess

    video = media.make_video(tmp_path / "short.avi", seconds=2.0, fps=10)
    cli = CliProcess(["run", f"talk={video}", "--model", "tiny-random", "--faces", "off", "--fast", "--quiet",
                      "--port", "0", "--linger", "60"], tmp_path)
    try:
        port = cli.port()
        cli.wait_for(r"every stream ended; the dashboard stays")
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("() => document.querySelector('.stream .state')?.textContent?.startsWith('ended')",
                               timeout=scaled(15) * 1000)
        kinds = page.eval_on_selector_all(".stream .events li", "items => items.map(i => i.dataset.kind)")
        assert "stream_ended" in kinds and "stream_started" in kinds
        # The stream's last scores, not dashes: the server hands a late viewer each stream's newest estimate.
        page.wait_for_function("() => [...document.querySelectorAll('.stream .bar:not(.sentiment) .value')]"
                               ".some(v => /^\\d{1,3} %$/.test(v.textContent))", timeout=scaled(10) * 1000)
        # Its timeline: the replay holds its estimates (the 2 s file at 2 Hz gives about 4), each drawn once.
        drawn = page.wait_for_function(
            "() => Number(document.querySelector('.stream canvas.timeline').dataset.drawn || 0) >= 3"
            " && document.querySelector('.stream canvas.timeline').dataset.drawn",
            timeout=scaled(10) * 1000).json_value()
        points = int(page.eval_on_selector(".stream canvas.timeline", "c => c.dataset.points"))
        assert int(drawn) == points, "every replayed estimate is one point on the timeline"
        assert colored_pixels(page.locator(".stream canvas.timeline").screenshot()) > 100, "lines were drawn"
        assert page.locator(".stream .video-info").text_content().startswith("no video")
        assert cli.process.poll() is None  # still serving: it lingers
        cli.process.send_signal(signal.SIGTERM)
        assert cli.finish() == 0
        page.wait_for_function("() => document.getElementById('connection').textContent === 'finished'",
                               timeout=scaled(15) * 1000)
        save_screenshot(page, tmp_path, "dashboard-finished.png")
    finally:
        cli.process.kill()


def colored_pixels(png: bytes) -> int:
    """How many pixels of a screenshot are saturated colors (the chart's lines), not greys (its
    background, grid and axis text)."""
    import cv2
    import numpy as np

    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None, "a PNG screenshot"
    image = decoded.astype(np.int16)
    return int(((image.max(axis=2) - image.min(axis=2)) > 60).sum())


def test_a_stream_scoring_fewer_labels_than_hello_shows_only_its_own(page: Any, tmp_path: Path) -> None:
    """A run with faces lists seven labels in hello; a stream with faces off (``--config``'s ``faces =
    false``) scores six. Its card shows six bars and the sentiment, no neutral bar or legend key."""
    from affectstream.engine.labels import EXPRESSION_LABELS
    from affectstream.stream.messages import hello
    from affectstream.stream.server import ServerConfig, StreamServer

    server = StreamServer(ServerConfig(port=0), lambda: hello(EXPRESSION_LABELS, {"head": "faces"}, ["cam"]))
    server.start()
    publisher = Publisher(server, streams=("cam",), hz=10).start()
    try:
        page.goto(f"http://127.0.0.1:{server.port}/?video=off")
        wait_for(page, lambda s: s["points"] >= 3, 20)
        shown = page.evaluate("""() => {
            const visible = (selector) => [...document.querySelectorAll(selector)]
                .filter((node) => node.offsetParent !== null).map((node) => node.dataset.label);
            return { bars: visible('.stream .bar'), legend: visible('.stream .legend > span') };
        }""")
        save_screenshot(page, tmp_path, "dashboard-six-labels.png")
    finally:
        publisher.stop()
        server.stop()
    six = ["anger", "happiness", "disgust", "fear", "sadness", "surprise", "sentiment"]
    assert shown == {"bars": six, "legend": six}, shown
