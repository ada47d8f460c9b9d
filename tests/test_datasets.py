"""Dataset adapters on tiny fixtures written in each dataset's real format."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.datasets import Dataset, GroupBy, ProblemKind, Segment, split_by_video
from affectstream.training.image_sets import load_ckplus, load_mug
from affectstream.training.mosei import (
    AnnotatorRating,
    SegmentTime,
    load_mosei,
    write_mosei_labels,
    write_segment_times,
)
from tests._dataset_fixtures import (
    MTURK_HEADER,
    make_ckplus,
    make_mug,
    mturk_row,
    write_mturk_csv,
    write_video,
)

# ----------------------------------------------------------------------------------------- MOSEI


@pytest.fixture()
def mosei(tmp_path: Path) -> Path:
    """Two videos on disk (one MP4, one AVI), a third labelled but missing; three annotators a clip."""
    write_video(tmp_path / "videos" / "--qXJuDtHPw.mp4")
    write_video(tmp_path / "videos" / "-3g5yACwYnA.avi")
    write_mturk_csv(tmp_path / "labels.csv", [
        # --qXJuDtHPw clip 5: anger seen by one annotator of three, happiness by all.
        mturk_row("--qXJuDtHPw", "5", [0, 3, 0, 0, 0, 0], 3, "A"),
        mturk_row("--qXJuDtHPw", "5", [0, 2, 0, 0, 0, 0], 2, "B"),
        mturk_row("--qXJuDtHPw", "5", [2, 1, 0, 0, 0, 0], 1, "C"),
        # -3g5yACwYnA clips 2 and 3; clip 3 written "3.0" by a spreadsheet.
        mturk_row("-3g5yACwYnA", "2", [0, 0, 0, 1, 1, 0], -3, "A"),
        mturk_row("-3g5yACwYnA", "2", [0, 0, 0, 0, 2, 0], -3, "B"),
        mturk_row("-3g5yACwYnA", "3.0", [0, 0, 0, 0, 0, 3], 0, "A"),
        # A video that is not on disk.
        mturk_row("missingVid", "0", [1, 0, 0, 0, 0, 0], 0, "A"),
    ])
    (tmp_path / "segments.csv").write_text(
        "video_id,clip,start,end\n"
        "--qXJuDtHPw,5,21.12,28.48\n"
        "-3g5yACwYnA,2,10.0,14.5\n"
        "-3g5yACwYnA,3,14.5,20.25\n"
        "missingVid,0,0,3\n",
        encoding="utf-8",
    )
    return tmp_path


def _by_id(dataset: Dataset) -> dict[str, Segment]:
    return {segment.segment_id: segment for segment in dataset}


def test_mosei_averages_annotators_and_binarises_above_zero(mosei: Path) -> None:
    dataset = load_mosei(mosei / "labels.csv", mosei / "segments.csv", mosei / "videos")
    segment = _by_id(dataset)["--qXJuDtHPw_5"]
    assert segment.label_scores == pytest.approx((2 / 3, 2.0, 0, 0, 0, 0))
    assert segment.labels == (1.0, 1.0, 0.0, 0.0, 0.0, 0.0)  # one annotator of three is enough at 0
    assert segment.sentiment == pytest.approx(2 / 3)  # mean 2 on -3..3
    sad = _by_id(dataset)["-3g5yACwYnA_2"]
    assert sad.label_scores == pytest.approx((0, 0, 0, 0.5, 1.5, 0))
    assert sad.sentiment == pytest.approx(-1.0)
    assert dataset.label_names == EMOTIONS and dataset.name == "cmu-mosei"


def test_mosei_threshold_is_a_parameter(mosei: Path) -> None:
    dataset = load_mosei(mosei / "labels.csv", mosei / "segments.csv", mosei / "videos", threshold=1.0)
    assert _by_id(dataset)["--qXJuDtHPw_5"].labels == (0.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    assert _by_id(dataset)["-3g5yACwYnA_2"].labels == (0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_mosei_segment_times_and_videos(mosei: Path) -> None:
    dataset = load_mosei(mosei / "labels.csv", mosei / "segments.csv", mosei / "videos")
    segments = _by_id(dataset)
    assert (segments["--qXJuDtHPw_5"].start_s, segments["--qXJuDtHPw_5"].end_s) == (21.12, 28.48)
    assert segments["-3g5yACwYnA_3"].duration_s == pytest.approx(5.75)  # "3.0" in labels matched "3"
    assert segments["--qXJuDtHPw_5"].video_path == mosei / "videos" / "--qXJuDtHPw.mp4"
    assert segments["-3g5yACwYnA_2"].video_path == mosei / "videos" / "-3g5yACwYnA.avi"
    assert not segments["-3g5yACwYnA_2"].is_image_sequence


def test_mosei_missing_videos_are_reported_not_fatal(mosei: Path) -> None:
    dataset = load_mosei(mosei / "labels.csv", mosei / "segments.csv", mosei / "videos")
    assert "missingVid_0" not in _by_id(dataset)
    assert len(dataset) == 3
    assert dataset.count(ProblemKind.MISSING_VIDEO) == 1
    kept = load_mosei(mosei / "labels.csv", mosei / "segments.csv", mosei / "videos", require_video=False)
    assert _by_id(kept)["missingVid_0"].video_path == mosei / "videos" / "missingVid.mp4"


def test_mosei_without_segment_file_uses_whole_videos(mosei: Path) -> None:
    dataset = load_mosei(mosei / "labels.csv", None, mosei / "videos")
    assert len(dataset) == 3
    assert all(segment.start_s is None and segment.end_s is None for segment in dataset)


def test_mosei_clip_without_times_is_skipped(mosei: Path) -> None:
    (mosei / "segments.csv").write_text("video_id,clip,start,end\n--qXJuDtHPw,5,1,2\n", encoding="utf-8")
    dataset = load_mosei(mosei / "labels.csv", mosei / "segments.csv", mosei / "videos")
    assert [segment.segment_id for segment in dataset] == ["--qXJuDtHPw_5"]
    assert dataset.count(ProblemKind.MISSING_TIMES) == 3


def test_mosei_transcript_segment_files(mosei: Path) -> None:
    """MOSEI's Transcript/Segmented/Combined lines, long form (a directory) and short form (a file)."""
    transcripts = mosei / "Combined"
    transcripts.mkdir()
    (transcripts / "--qXJuDtHPw.txt").write_text(
        "--qXJuDtHPw___5___21.12___28.48___I see that a writer ___ quoted\n", encoding="utf-8")
    (transcripts / "-3g5yACwYnA.txt").write_text(
        "-3g5yACwYnA___2___10.0___14.5___so\n-3g5yACwYnA___3___14.5___20.25___and\n\n", encoding="utf-8")
    dataset = load_mosei(mosei / "labels.csv", transcripts, mosei / "videos")
    assert _by_id(dataset)["--qXJuDtHPw_5"].start_s == 21.12
    assert _by_id(dataset)["-3g5yACwYnA_3"].end_s == 20.25

    short = mosei / "short.txt"
    short.write_text("--qXJuDtHPw_5___1.5___4.25\n-3g5yACwYnA_2___0___2\n-3g5yACwYnA_3___2___3\n", encoding="utf-8")
    dataset = load_mosei(mosei / "labels.csv", short, mosei / "videos")
    assert (_by_id(dataset)["--qXJuDtHPw_5"].start_s, _by_id(dataset)["--qXJuDtHPw_5"].end_s) == (1.5, 4.25)


def test_mosei_tab_separated_files_and_several_batches(mosei: Path) -> None:
    rows = [mturk_row("--qXJuDtHPw", "5", [0, 0, 3, 0, 0, 0], 0, "D").replace(",", "\t")]
    write_mturk_csv(mosei / "batch2.tsv", rows, header=_tsv_header())
    (mosei / "segments.tsv").write_text("Video_ID\tSegment\tStart_S\tEnd_S\n--qXJuDtHPw\t5\t1\t2\n", encoding="utf-8")
    dataset = load_mosei([mosei / "labels.csv", mosei / "batch2.tsv"], mosei / "segments.tsv", mosei / "videos")
    segment = _by_id(dataset)["--qXJuDtHPw_5"]
    assert segment.label_scores == pytest.approx((0.5, 1.5, 0.75, 0, 0, 0))  # four annotators pooled
    assert (segment.start_s, segment.end_s) == (1.0, 2.0)


def _tsv_header() -> str:
    return MTURK_HEADER.replace(",", "\t")


def test_mosei_bad_rows_are_counted_and_bad_files_raise(mosei: Path) -> None:
    with (mosei / "labels.csv").open("a", encoding="utf-8") as handle:
        handle.write(mturk_row("--qXJuDtHPw", "5", [0, "", 0, 0, 0, 0], 0, "E") + "\n")
        handle.write(mturk_row("--qXJuDtHPw", "6", [0, "lots", 0, 0, 0, 0], 0, "E") + "\n")
    dataset = load_mosei(mosei / "labels.csv", mosei / "segments.csv", mosei / "videos")
    assert dataset.count(ProblemKind.BAD_ROW) == 2
    assert _by_id(dataset)["--qXJuDtHPw_5"].label_scores[1] == pytest.approx(2.0)  # bad row not averaged in

    (mosei / "wrong.csv").write_text("video,score\nabc,1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="Answer.anger"):
        load_mosei(mosei / "wrong.csv", None, mosei / "videos")
    with pytest.raises(ConfigError, match="start"):
        load_mosei(mosei / "labels.csv", mosei / "wrong.csv", mosei / "videos")
    with pytest.raises(ConfigError, match="does not exist"):
        load_mosei(mosei / "nope.csv", None, mosei / "videos")


def test_mosei_writers_round_trip(tmp_path: Path) -> None:
    write_video(tmp_path / "v" / "abc_def.mp4")
    write_mosei_labels(tmp_path / "l.csv", [
        AnnotatorRating("abc_def", "0", (0, 1, 0, 0, 0, 2), -1.0, "w1"),
        AnnotatorRating("abc_def", "0", (0, 2, 0, 0, 0, 0), None, "w2"),
    ])
    write_segment_times(tmp_path / "s.csv", [SegmentTime("abc_def", "0", 0.5, 2.0)])
    (segment,) = load_mosei(tmp_path / "l.csv", tmp_path / "s.csv", tmp_path / "v").segments
    assert segment.label_scores == pytest.approx((0, 1.5, 0, 0, 0, 1))
    assert segment.sentiment == pytest.approx(-1 / 3)  # the blank sentiment is left out of the mean
    assert (segment.start_s, segment.end_s) == (0.5, 2.0)


# ------------------------------------------------------------------------------------------- CK+


@pytest.fixture()
def ckplus(tmp_path: Path) -> Path:
    return make_ckplus(tmp_path / "CK+", {
        ("S005", "001"): (4, 3.0),  # disgust
        ("S010", "002"): (3, 5.0),  # happy
        ("S010", "004"): (3, 2.0),  # contempt: outside the six
        ("S011", "001"): (2, 0.0),  # neutral
        ("S011", "002"): (3, None),  # unlabeled, as most CK+ sequences are
        ("S014", "001"): (3, 9.0),  # not a CK+ code
    })


def test_ckplus_labels_map_to_the_six(ckplus: Path) -> None:
    dataset = load_ckplus(ckplus)
    segments = _by_id(dataset)
    assert set(segments) == {"S005_001", "S010_002", "S010_004", "S011_001"}
    assert segments["S005_001"].class_name == "disgust"
    assert segments["S005_001"].labels == (0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
    assert segments["S010_002"].class_name == "happiness"
    assert segments["S010_002"].labels[EMOTIONS.index("happiness")] == 1.0
    for outside in ("S010_004", "S011_001"):  # contempt and neutral keep their name but no MOSEI label
        assert sum(segments[outside].labels) == 0
    assert segments["S010_004"].class_name == "contempt"
    assert segments["S011_001"].class_name == "neutral"
    assert dataset.class_counts() == {"disgust": 1, "happiness": 1, "contempt": 1, "neutral": 1}


def test_ckplus_frames_subjects_and_skips(ckplus: Path) -> None:
    dataset = load_ckplus(ckplus)
    segment = _by_id(dataset)["S005_001"]
    assert segment.video_path is None and segment.is_image_sequence
    assert segment.frame_paths is not None
    assert [p.name for p in segment.frame_paths] == [f"S005_001_{i:08d}.png" for i in range(1, 5)]
    assert segment.subject == "S005" and segment.frame_rate == 30.0
    assert dataset.count(ProblemKind.UNLABELED) == 1
    assert dataset.count(ProblemKind.UNKNOWN_CLASS) == 1


def test_ckplus_wrong_root_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cohn-kanade-images"):
        load_ckplus(tmp_path)


# ------------------------------------------------------------------------------------------- MUG


def test_mug_subject_emotion_take_folders(tmp_path: Path) -> None:
    root = make_mug(tmp_path / "MUG", {
        ("001", "happiness", "take000"): 3,
        ("001", "happiness", "take001"): 2,
        ("001", "neutral", "take000"): 2,
        ("002", "fear", "take003"): 4,
        ("002", "boredom", "take000"): 2,  # not a MUG class
        ("002", "anger", "take000"): 0,  # a take without images
    })
    dataset = load_mug(root)
    segments = _by_id(dataset)
    assert set(segments) == {"001_happiness_take000", "001_happiness_take001", "001_neutral_take000",
                             "002_fear_take003"}
    fear = segments["002_fear_take003"]
    assert fear.labels == (0.0, 0.0, 0.0, 1.0, 0.0, 0.0) and fear.class_name == "fear"
    assert fear.frame_paths is not None and [p.name for p in fear.frame_paths][-1] == "img_0004.jpg"
    assert fear.subject == "002"
    assert sum(segments["001_neutral_take000"].labels) == 0
    assert dataset.count(ProblemKind.UNKNOWN_CLASS) == 1
    assert dataset.count(ProblemKind.NO_FRAMES) == 1


# ----------------------------------------------------------------------------------------- split


def _segment(video_id: str, clip: int, subject: str | None = None) -> Segment:
    zeros = (0.0,) * len(EMOTIONS)
    return Segment("t", video_id, f"{video_id}_{clip}", None, None, None, zeros, zeros, subject=subject)


@settings(max_examples=60, deadline=None)
@given(
    clips_per_video=st.lists(st.integers(1, 6), min_size=1, max_size=30),
    seed=st.integers(0, 1000),
)
def test_split_never_puts_a_video_on_two_sides(clips_per_video: list[int], seed: int) -> None:
    segments = [_segment(f"v{v}", c) for v, count in enumerate(clips_per_video) for c in range(count)]
    sides = split_by_video(segments, seed=seed)
    videos = [{segment.video_id for segment in side} for side in sides]
    assert not (videos[0] & videos[1]) and not (videos[0] & videos[2]) and not (videos[1] & videos[2])
    assert sorted(s.segment_id for side in sides for s in side) == sorted(s.segment_id for s in segments)


def test_split_fractions_seed_and_subjects() -> None:
    segments = [_segment(f"v{v}", c, subject=f"p{v % 7}") for v in range(100) for c in range(2)]
    train, val, test = split_by_video(segments, seed=1)
    assert (len(train), len(val), len(test)) == pytest.approx((140, 30, 30), abs=4)
    assert split_by_video(segments, seed=1) == (train, val, test)
    assert split_by_video(segments, seed=2) != (train, val, test)

    sides = split_by_video(segments, (0.5, 0.25, 0.25), seed=3, group_by=GroupBy.SUBJECT)
    subjects = [{segment.subject for segment in side} for side in sides]
    assert sum(len(s) for s in subjects) == 7  # every subject on exactly one side

    with pytest.raises(ConfigError):
        split_by_video(segments, (0.5, 0.5, 0.5))
