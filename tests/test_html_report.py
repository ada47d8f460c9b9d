"""The HTML report of `affectstream analyze` (stream/html_report.py): rendered by the real command on real
footage and read in headless Chromium with every request from the page intercepted; where the damage
of a damaged file is; the thumbnails are the frames that were analysed; the words and numbers a person
reads. A screenshot is kept (tmp_path, and $AFFECTSTREAM_TEST_ARTIFACTS when set)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from affectstream.engine.labels import EXPRESSION_LABELS
from affectstream.stream.html_report import IndexEntry, percent, render_index, render_report, time_code
from affectstream.stream.messages import EventKind
from affectstream.stream.report import AnalysisSettings, FileAnalysis, FileReport
from affectstream.stream.sources import DamageKind, DamageSpan, SourceConfig, SourceDamage
from affectstream.stream.thumbnails import Shot, thumbnails
from tests import media
from tests._browser import save_screenshot
from tests.timeouts import scaled

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
MEGAMIND = OPENCV_DATA / "Megamind.avi"
MEGAMIND_BUGY = OPENCV_DATA / "Megamind_bugy.avi"
needs_footage = pytest.mark.skipif(not MEGAMIND.exists() or not MEGAMIND_BUGY.exists(),
                                   reason="Debian's opencv-doc is not installed")


def analyze(video: Path, out: Path, *options: str, status: int = 0) -> dict[str, Any]:
    """`affectstream analyze VIDEO --out-dir OUT --model tiny-random` (real face models); its summary."""
    done = subprocess.run([sys.executable, "-m", "affectstream", "analyze", str(video), "--out-dir", str(out),
                           "--model", "tiny-random", "--no-progress", *options], cwd=out.parent, capture_output=True,
                          text=True, timeout=scaled(300))
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr
    summary: dict[str, Any] = json.loads((out / f"{video.name}.affect.json").read_text())
    return summary


class _Links(HTMLParser):
    """Every address the page names (src, href, url(...) in style) and the text a person reads."""

    def __init__(self) -> None:
        super().__init__()
        self.addresses: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "poster") and value is not None:
                self.addresses.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def page_parts(text: str) -> _Links:
    parser = _Links()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def megamind_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    if not MEGAMIND.exists():
        pytest.skip("Debian's opencv-doc is not installed")
    out = tmp_path_factory.mktemp("megamind") / "out"
    summary = analyze(MEGAMIND, out)
    return out / "Megamind.avi.affect.html", summary


@pytest.mark.slow
@needs_footage
def test_the_report_of_megamind_reads_in_chromium_and_fetches_nothing(
        megamind_report: tuple[Path, dict[str, Any]], browser: Any, tmp_path: Path) -> None:
    report, summary = megamind_report
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    outside: list[str] = []

    def route(route: Any) -> None:  # every request the page makes passes here; only the file itself may load
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", route)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    seen = page.evaluate("""() => ({
        summary: document.querySelector('#summary').innerText,
        series: [...document.querySelectorAll('svg.timeline polyline.series')].map(
            (p) => ({label: p.dataset.label, points: p.getAttribute('points').trim().split(/\\s+/).length})),
        sentiment: document.querySelectorAll('svg.sentiment polyline.series').length,
        lanes: document.querySelectorAll('svg.lanes g.lane').length,
        arc: document.querySelectorAll('svg.lanes rect.arc').length,
        frames: [...document.querySelectorAll('figure.moment img.frame')].map(
            (img) => ({ok: img.complete && img.naturalWidth > 0, data: img.src.startsWith('data:image/jpeg')})),
        faces: [...document.querySelectorAll('figure.moment img.face')].filter((img) => img.naturalWidth > 0).length,
        captions: [...document.querySelectorAll('figure.moment figcaption')].map((c) => c.innerText),
        shares: Object.fromEntries([...document.querySelectorAll('table.shares tbody tr')].map(
            (tr) => [tr.cells[0].innerText.trim(), tr.cells[1].innerText.trim()])),
        damage: document.querySelector('#damage').innerText,
        used: document.querySelector('#used').innerText,
        loaded: [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
            .map((entry) => entry.name),
    })""")
    save_screenshot(page, tmp_path, "report_megamind.png")
    assert outside == [] and all(url.startswith(("file:", "data:")) for url in requests + seen["loaded"]), outside
    # The plain-language summary: the dominant emotions with their shares, the strongest moments with
    # time codes, how much had no usable face.
    text = seen["summary"]
    assert "The dominant emotion" in text and "of the time" in text
    assert re.search(r"The strongest moments: \w+ at \d\d:\d\d \(score 0\.\d\d\)", text), text
    assert f"for {percent(summary['states']['no_face'] + summary['states']['uncertain'])} there was no usable face" \
        in text.replace("\n", " ")
    # The shares on the page are the summary's, rounded for reading (one computation).
    for label in EXPRESSION_LABELS:
        assert seen["shares"][label] == percent(summary["share"][label])
    # The timeline: one line per label, one point per timeline entry, the sentiment, the arc and a lane per face.
    assert sorted(s["label"] for s in seen["series"]) == sorted(EXPRESSION_LABELS)
    assert {s["points"] for s in seen["series"]} == {len(summary["timeline"])}
    assert seen["sentiment"] == 1 and seen["arc"] == len(summary["segments"]) >= 1
    assert seen["lanes"] == min(len(summary["faces"]), 12) >= 1
    # At least three thumbnails, decoded from data: URIs, with the face crop and a time code each.
    assert len(seen["frames"]) >= 3 and all(f["ok"] and f["data"] for f in seen["frames"])
    assert seen["faces"] >= 3
    assert all(re.search(r"\d\.\d\d at \d\d:\d\d · face #\d+", caption) for caption in seen["captions"])
    assert "No damage found" in seen["damage"] and "270 frames" in seen["damage"]
    assert "blazeface" in seen["used"] and "2 frames per second" in seen["used"]
    # Nothing outside the page: every address in it is inline.
    parts = page_parts(report.read_text())
    assert parts.addresses and all(address.startswith("data:") for address in parts.addresses)
    assert "http://" not in report.read_text() and "https://" not in report.read_text()


@pytest.mark.slow
@needs_footage
def test_the_report_of_megamind_bugy_says_where_a_file_is_damaged(tmp_path: Path) -> None:
    # Megamind_bugy.avi is OpenCV's PSNR tutorial's "video under test": a lower-quality re-encode of
    # Megamind.avi, whose 270 frames all decode (its damage is in the pictures, not the stream), so its
    # report says that nothing was lost. The same file with a stretch of its bytes overwritten is damaged:
    # the report says where (time codes) and what was skipped.
    whole = analyze(MEGAMIND_BUGY, tmp_path / "whole")
    damage_text = page_parts((tmp_path / "whole" / "Megamind_bugy.avi.affect.html").read_text()).text
    assert whole["damage"]["spans"] == [] and "No damage found" in "".join(damage_text)
    assert "270 frames were read, to 00:09 of 00:09 stated" in "".join(damage_text)

    holed = media.overwrite_middle(MEGAMIND_BUGY, tmp_path / "holed.avi", start=0.45, end=0.5)
    summary = analyze(holed, tmp_path / "holed", status=3)
    spans = summary["damage"]["spans"]
    assert {span["kind"] for span in spans} >= {"corrupt_frame", "truncated"}, spans
    page = (tmp_path / "holed" / "holed.avi.affect.html").read_text()
    section = page[page.index("<section id='damage'>"):]
    section = section[:section.index("</section>")]
    items = re.findall(r"<li data-kind='(\w+)'><span class='tc'>([\d:–]+)</span>: ([^<]+)</li>", section)
    assert [kind for kind, _, _ in items] == [span["kind"] for span in spans]
    for (_, where, words), span in zip(items, spans):
        assert where.split("–")[0] == time_code(span["start"])  # where: the time code of the damage
        assert str(span["count"]) in words
    corrupt = next(span for span in spans if span["kind"] == "corrupt_frame")
    assert 3.0 < corrupt["start"] < 5.0  # the overwritten stretch is at 45-50 % of the bytes, about 00:04
    assert "frames decoded with errors" in section or "frame decoded with errors" in section
    assert "reading ended here" in section and "The file is damaged" in page


@needs_footage
def test_thumbnails_are_the_analysed_frames_whether_found_by_seeking_or_by_reading() -> None:
    # Times of frames as the analysis saw them: the reader's own (stream/pyav_source.py).
    from affectstream.stream.pyav_source import PyAVSource

    source = PyAVSource(str(MEGAMIND), "t", SourceConfig())
    source.open()
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    picked = [frames[i] for i in (5, 100, 101, 230, 269)]
    shots = [Shot(frame.pts, (200.0, 100.0, 120.0, 140.0)) for frame in picked]
    sought = thumbnails(str(MEGAMIND), shots, SourceConfig(), can_seek=True)
    read = thumbnails(str(MEGAMIND), shots, SourceConfig(), can_seek=False)
    assert set(sought) == set(read) == {frame.pts for frame in picked}
    import cv2

    for frame in picked:
        a = cv2.imdecode(np.frombuffer(sought[frame.pts].frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
        b = cv2.imdecode(np.frombuffer(read[frame.pts].frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert a.shape == (235, 320, 3) and np.array_equal(a, b)  # the same frame both ways
        face = cv2.imdecode(np.frombuffer(sought[frame.pts].face_jpeg or b"", np.uint8), cv2.IMREAD_COLOR)
        assert max(face.shape[:2]) == 112
    # Neighbouring frames differ, so equal pictures mean the same frame, not any frame.
    assert sought[picked[1].pts].frame_jpeg != sought[picked[2].pts].frame_jpeg
    assert thumbnails(str(MEGAMIND), [Shot(5.0001)], SourceConfig()) == {}  # no frame at that time


def synthetic(faces: bool = True, damage: SourceDamage | None = None, name: str = "talk.mp4") -> FileAnalysis:
    labels = EXPRESSION_LABELS if faces else EXPRESSION_LABELS[:6]
    report = FileReport(labels)
    for i in range(240):  # 2 minutes at 2 Hz: happiness, then sadness, then no face
        ts = i * 0.5
        scores = np.zeros(len(labels))
        if faces and i >= 200:
            report.add_estimate(ts, scores, 0.0, None, _state("no_face"))
            continue
        scores[1 if i < 120 else 4] = 0.8
        report.add_estimate(ts, scores, 0.5 if i < 120 else -0.5, None, _state("ok") if faces else None,
                            primary=1 if faces else None, box=(10.0, 10.0, 50.0, 60.0) if faces else None)
    report.add_event(EventKind.ONSET, "happiness", ts=1.0, value=0.8)
    report.add_event(EventKind.SHIFT, "sadness", ts=60.0)
    return FileAnalysis(path=name, summary=report.summary(), model={"backbone": "clip-vit-b32", "head": "zero-shot"},
                        settings=AnalysisSettings(rate_hz=2.0, onset=0.5, offset=0.3, windows_s=(5.0, 60.0),
                                                  uncertain_below=0.35 if faces else None),
                        outcome="truncated" if damage and damage.truncated else "ended", detail="read",
                        damage=damage or SourceDamage(frames=2880, last_pts=119.96, expected_duration=120.0,
                                                      expected_frames=2880),
                        seconds=3.0, interrupted=False)


def _state(name: str) -> Any:
    from affectstream.stream.messages import EstimateState

    return EstimateState(name)


def test_time_codes_and_percents_read_as_a_person_writes_them() -> None:
    assert [time_code(s) for s in (0, 0.4, 59.6, 61, 3599.4, 3600, 3725, None)] == \
        ["00:00", "00:00", "01:00", "01:01", "59:59", "1:00:00", "1:02:05", "--:--"]
    assert [percent(s) for s in (0.0, 0.004, 0.2174, 1.0)] == ["0 %", "<1 %", "22 %", "100 %"]


def test_the_page_states_the_summarys_figures_in_words() -> None:
    analysis = synthetic()
    page = render_report(analysis)
    text = " ".join(page_parts(page).text)
    share = analysis.summary.share
    assert share["happiness"] == 0.5 and share["sadness"] == pytest.approx(1 / 3, abs=1e-4)
    assert "This 02:00 video was analysed at 2 frames per second (240 frames)" in text
    assert "happiness (50 % of the time)" in text and "sadness (33 % of the time)" in text
    assert "for 17 % there was no usable face (no face in view 17 %" in text
    assert "The strongest moments: happiness at 00:00 (score 0.80) and sadness at 01:00 (score 0.80)" in text
    # The arc: happiness to 01:00, sadness to 01:40, then no face.
    assert [(s.label, time_code(s.start), time_code(s.end)) for s in analysis.summary.segments] == \
        [("happiness", "00:00", "01:00"), ("sadness", "01:00", "01:40"), ("no_face", "01:40", "02:00")]
    assert "00:00–01:00" in text and "became dominant" in text
    assert "No damage found" in text


def test_whole_frame_mode_has_no_abstention_and_no_face_lanes() -> None:
    page = render_report(synthetic(faces=False))
    assert "there is no abstention" in page and "class='lane'" not in page and "usable face" not in page


def test_a_truncated_file_says_where_it_stops_and_names_are_escaped() -> None:
    damage = SourceDamage(frames=200, last_pts=99.5, expected_duration=130.0, expected_frames=260, truncated=True,
                          decode_errors=3, spans=(DamageSpan(kind=DamageKind.DECODE_ERROR, start=42.0, end=43.5, count=3),
                                                  DamageSpan(kind=DamageKind.TRUNCATED, start=99.5, end=130.0, count=57)))
    page = render_report(synthetic(damage=damage, name="<script>alert(1)</script>.mp4"))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "00:42–00:44</span>: 3 damaged packets; skipped" in page
    assert "01:40–02:10</span>: 57 frames not read; reading ended here" in page
    assert "it stops at 01:40 of the 02:10 it states" in page


def test_the_index_links_each_report_and_lists_failures() -> None:
    page = render_index([IndexEntry("a.mp4", "ok", report="a.mp4.affect.html", summary="a.mp4.affect.json",
                                    duration_s=75.0, dominant="fear", share=0.4),
                         IndexEntry("b.mp4", "failed", "not a video FFmpeg can read")])
    parts = page_parts(page)
    assert parts.addresses == ["a.mp4.affect.html", "a.mp4.affect.json"]
    text = " ".join(parts.text)
    assert "1 of 2 files analysed; 1 failed: b.mp4." in text and "not a video FFmpeg can read" in text
    assert "01:15" in text and "fear (40 %)" in text
