"""A corpus of broken and odd files: each gives its typed outcome in bounded time, never a hang or crash."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from affectstream.errors import SourceError, SourceOpenError, SourceOutcome, SourceReadError
from affectstream.stream.frames import OverflowPolicy, SourceEvent, SourceState
from affectstream.stream.grabber import Grabber
from affectstream.stream.pyav_source import PyAVSource
from affectstream.stream.ring import RingBuffer
from affectstream.stream.sources import SourceConfig, SourceDamage, open_source
from tests import media
from tests._sources_helpers import EventRecorder, drain_items, events_in, outcome_of, run_bounded
from tests.timeouts import scaled

CONFIG = SourceConfig(open_timeout_s=5, read_timeout_s=5)
MEGAMIND_BUGY = Path("/usr/share/doc/opencv-doc/examples/data/Megamind_bugy.avi")
BOUND_S = 20.0  # generous: every case takes well under a second on an idle machine


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Path]
    # Expected: the open outcome, or None when frames come out; then the outcomes allowed at the end
    # (None = a clean end).
    open_outcome: SourceOutcome | None = None
    end_outcomes: tuple[SourceOutcome | None, ...] = (None,)
    min_frames: int = 1


def _long_mkv(folder: Path) -> Path:
    return media.encode_with_pts(folder / "long.mkv", [i / 10 for i in range(60)])


def _long_mp4(folder: Path) -> Path:
    return media.encode_with_pts(folder / "long.mp4", [i / 10 for i in range(60)])


CASES: dict[str, Case] = {
    "missing": Case(lambda d: d / "not-there.mp4", SourceOutcome.MISSING),
    "directory": Case(lambda d: d, SourceOutcome.NOT_VIDEO),
    "zero-bytes": Case(lambda d: media.make_empty(d / "empty.mp4"), SourceOutcome.EMPTY),
    "random-bytes": Case(lambda d: media.make_random_bytes(d / "noise.mp4"), SourceOutcome.NOT_VIDEO),
    "text-named-mp4": Case(lambda d: media.make_text_file(d / "notes.mp4"), SourceOutcome.NOT_VIDEO),
    "audio-only": Case(lambda d: media.make_audio_only(d / "tone.mp4"), SourceOutcome.NO_VIDEO_TRACK),
    "mp4-cut-in-half": Case(lambda d: media.make_truncated(_long_mp4(d), d / "half.mp4"), SourceOutcome.TRUNCATED),
    "avi-cut-in-half": Case(lambda d: media.make_truncated(media.make_video(d / "a.avi", 4.0), d / "half.avi"),
                            end_outcomes=(SourceOutcome.TRUNCATED,)),
    "mkv-cut-in-half": Case(lambda d: media.make_truncated(_long_mkv(d), d / "half.mkv"),
                            end_outcomes=(SourceOutcome.TRUNCATED,)),
    "mp4-garbage-in-the-middle": Case(lambda d: media.overwrite_middle(_long_mp4(d), d / "bad.mp4"),
                                      end_outcomes=(SourceOutcome.CORRUPT, SourceOutcome.TRUNCATED)),
    "mkv-garbage-in-the-middle": Case(lambda d: media.overwrite_middle(_long_mkv(d), d / "bad.mkv"),
                                      end_outcomes=(SourceOutcome.CORRUPT, SourceOutcome.TRUNCATED)),
    "ts-garbage-in-the-middle": Case(lambda d: media.overwrite_middle(media.make_resolution_change_video(d / "r.ts"),
                                                                 d / "bad.ts"),
                                     end_outcomes=(SourceOutcome.CORRUPT, SourceOutcome.TRUNCATED)),
    "zero-fps-header": Case(lambda d: media.make_zero_fps_header(d / "zero.avi")),
    "absurd-fps-header": Case(lambda d: media.make_absurd_fps_header(d / "absurd.avi")),
    "variable-frame-rate": Case(lambda d: media.make_vfr_video(d / "vfr.mkv")),
    "resolution-change": Case(lambda d: media.make_resolution_change_video(d / "resize.ts")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_odd_file_gives_its_typed_outcome_in_bounded_time(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = case.make(tmp_path)
    how, frames, result = run_bounded(lambda: outcome_of(open_source(str(path), name, CONFIG)), BOUND_S)
    if case.open_outcome is not None:
        assert how == "open_error", f"{name}: expected {case.open_outcome}, got {how} {result}"
        assert isinstance(result, SourceOpenError) and result.outcome is case.open_outcome
        assert str(path.name) in str(result), "the message should name the input"
        return
    assert how == "ok", f"{name}: {result}"
    assert isinstance(result, SourceDamage)
    assert len(frames) >= case.min_frames
    assert result.outcome in case.end_outcomes, f"{name}: {result}"
    assert all(f.image.ndim == 3 and f.image.shape[2] == 3 for f in frames)
    assert [f.index for f in frames] == list(range(len(frames)))


def test_absurd_fps_header_is_treated_as_unknown_and_pts_are_kept(tmp_path: Path) -> None:
    path = media.make_absurd_fps_header(tmp_path / "absurd.avi")  # claims 1000 fps
    source = open_source(str(path), "s", SourceConfig(max_plausible_fps=240))
    info = source.open()
    try:
        assert info.nominal_fps is None
        pts = [frame.pts for frame in iter(source.read, None)]
    finally:
        source.close()
    assert pts == pytest.approx(media.ffprobe_pts(path), abs=1e-6)


def test_zero_fps_header_still_gives_increasing_times(tmp_path: Path) -> None:
    path = media.make_zero_fps_header(tmp_path / "zero.avi")
    _, frames, damage = outcome_of(open_source(str(path), "s", CONFIG))
    pts = [f.pts for f in frames]
    assert len(pts) == 20 and all(a < b for a, b in itertools.pairwise(pts))
    assert isinstance(damage, SourceDamage) and damage.outcome is None


def test_frames_without_any_timestamp_are_timed_and_reported(tmp_path: Path) -> None:
    how, frames, damage = outcome_of(open_source(str(media.make_raw_h264(tmp_path / "raw.h264")), "s", CONFIG))
    assert how == "ok" and isinstance(damage, SourceDamage)
    assert len(frames) == 20 and damage.missing_pts == 20 and damage.outcome is None
    step = frames[1].pts - frames[0].pts
    assert step > 0 and [f.pts for f in frames] == pytest.approx([i * step for i in range(20)])
    assert "20 frames without timestamp" in damage.describe()


@pytest.mark.skipif(not MEGAMIND_BUGY.exists(), reason="Debian's opencv-doc (Megamind_bugy.avi) is not installed")
def test_megamind_bugy_gives_frames_then_a_damage_report() -> None:
    how, frames, result = run_bounded(lambda: outcome_of(open_source(str(MEGAMIND_BUGY), "bugy", CONFIG)), 60)
    assert len(frames) == 270
    if how == "ok":
        assert isinstance(result, SourceDamage) and result.frames == len(frames)
        assert "frames read" in result.describe()
    else:
        assert isinstance(result, SourceReadError) and result.outcome in (SourceOutcome.CORRUPT,
                                                                          SourceOutcome.TRUNCATED)
    # Media time where ffprobe has one (AVI: its frame counter), even though FFmpeg's guessed pts jump back.
    expected = media.ffprobe_pts(MEGAMIND_BUGY, entry="best_effort_timestamp_time")
    pts = [f.pts for f in frames]
    pairs = [(ours, theirs) for ours, theirs in zip(pts, expected) if theirs is not None]
    assert len(pairs) >= len(frames) - 2
    assert [a for a, _ in pairs] == pytest.approx([b for _, b in pairs], abs=1e-6)
    assert all(a < b for a, b in itertools.pairwise(pts))
    # ffprobe has no time for the last frame (the decoder's flush); AVI's frame counter gives it one.
    assert expected[-1] is None and pts[-1] == pytest.approx(pts[-2] + 1 / 30)
    assert isinstance(result, SourceDamage) and result.missing_pts == 0


class _ExplodingSource(PyAVSource):
    """A real file source whose frame conversion hits a bug on the third frame."""

    def _to_video_frame(self, decoded):  # type: ignore[no-untyped-def]
        if self._clock.count == 2:
            raise ZeroDivisionError("a bug deep inside")
        return super()._to_video_frame(decoded)


def test_unexpected_errors_inside_read_surface_as_corrupt(tmp_path: Path) -> None:
    path = media.make_video(tmp_path / "v.avi")
    source = _ExplodingSource(str(path), "s", CONFIG)
    how, frames, result = outcome_of(source)
    assert how == "read_error" and len(frames) == 2
    assert isinstance(result, SourceError) and result.outcome is SourceOutcome.CORRUPT
    assert "ZeroDivisionError" in str(result)


@pytest.mark.parametrize("name", ["random-bytes", "audio-only", "mkv-cut-in-half", "mp4-garbage-in-the-middle"])
def test_grabber_turns_odd_files_into_terminal_events(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = case.make(tmp_path)
    ring = RingBuffer(8, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = Grabber(name, lambda: open_source(str(path), name, CONFIG), ring, recorder, CONFIG)
    grabber.start()
    items = drain_items(ring, BOUND_S)
    frames = [item for item in items if not isinstance(item, SourceEvent)]
    assert grabber.join(scaled(BOUND_S))
    last = recorder.events[-1]
    assert items[-1] is last and events_in(items) == recorder.events  # the terminal event, after every frame
    if case.open_outcome is not None:
        assert last.state is SourceState.FAILED and last.outcome is case.open_outcome and not frames
    else:
        assert last.state is SourceState.ENDED and frames and last.frames_read == len(frames)
        assert last.outcome in [o or SourceOutcome.ENDED for o in case.end_outcomes]
