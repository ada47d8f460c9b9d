"""analyze's progress bar over media time (stream/progress.py), fed with records as the pipeline makes them."""

from __future__ import annotations

import io

from tqdm import tqdm

from affectstream.stream.frames import SourceEvent, SourceState
from affectstream.stream.messages import Estimate, Event, EventKind
from affectstream.stream.progress import MediaProgress
from affectstream.stream.sources import SourceInfo, SourceKind


def started(duration: float | None) -> Event:
    info = SourceInfo("clip.mp4", SourceKind.FILE, False, 160, 120, 10.0, duration, "h264")
    return Event(stream="file", seq=0, ts=0.0, wall=0, kind=EventKind.STREAM_STARTED,
                 source=SourceEvent("file", SourceState.RUNNING, 0, info=info))


def estimate(seq: int, ts: float) -> Estimate:
    return Estimate(stream="file", seq=seq, ts=ts, wall=0, scores={}, sentiment=0.0, dominant=None)


def test_the_bar_follows_media_time_against_the_stated_duration() -> None:
    out = io.StringIO()
    progress = MediaProgress(tqdm(total=None, file=out, disable=False, mininterval=0))
    progress.on_record(started(20.0))
    assert progress.bar.total == 20.0
    for seq, ts in enumerate([1.5, 2.0, 6.5, 11.5]):  # the first estimate's media time is the origin
        progress.on_record(estimate(seq + 1, ts))
    assert progress.bar.n == 10.0
    progress.on_record(estimate(9, 3.0))  # out of order never moves it back
    assert progress.bar.n == 10.0
    progress.close()
    assert "50%" in out.getvalue()


def test_without_a_duration_it_counts() -> None:
    progress = MediaProgress(tqdm(total=None, file=io.StringIO(), disable=False))
    progress.on_record(started(None))
    progress.on_record(estimate(1, 0.0))
    progress.on_record(estimate(2, 4.0))
    assert progress.bar.total is None and progress.bar.n == 4.0
