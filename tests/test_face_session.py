"""The faces of a stream over time (stream/face_session.py) and the estimates built from them
(StreamSession in face mode): pure tests driven by made-up observations, no models, no threads."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.engine.face_engine import FaceObservation
from affectstream.engine.faces import FaceBox
from affectstream.engine.labels import EXPRESSION_LABELS, NO_FACE
from affectstream.errors import PipelineError
from affectstream.stream.face_session import FaceConfig, FaceSet, fuse_with_clip, sentiment_of
from affectstream.stream.messages import Estimate, EstimateState, Event, EventKind, Summary
from affectstream.stream.session import AnalyticsConfig, StreamSession

WALL = 1_767_225_600_000
ANALYTICS = AnalyticsConfig(windows_s=(2.0,), onset_threshold=0.5, offset_threshold=0.3, min_duration_s=0.5,
                            min_gap_s=0.5, shift_min_dwell_s=1e6)


def probs(label: str, p: float) -> np.ndarray:
    """``p`` on ``label``, the rest spread evenly over the other six."""
    values = np.full(len(EXPRESSION_LABELS), (1.0 - p) / (len(EXPRESSION_LABELS) - 1))
    values[EXPRESSION_LABELS.index(label)] = p
    return values


def seen(x: float, label: str, p: float, size: float = 120.0) -> FaceObservation:
    return FaceObservation(FaceBox(x, 100.0, size, size, 0.99), probs(label, p))


def session(config: FaceConfig | None = None) -> StreamSession:
    return StreamSession("cam", EXPRESSION_LABELS, ANALYTICS, faces=config or FaceConfig(smoothing_s=0.0))


def estimates(records: list) -> list[Estimate]:
    return [r for r in records if isinstance(r, Estimate)]


def events(records: list, kind: EventKind) -> list[Event]:
    return [r for r in records if isinstance(r, Event) and r.kind is kind]


def test_no_face_is_never_neutral_nor_the_last_value() -> None:
    s = session()
    out = s.on_faces(0.0, WALL, [seen(100, "happiness", 0.9)])
    out += s.on_faces(0.25, WALL, [])
    out += s.on_faces(2.0, WALL, [])  # gone for longer than the tracker keeps a face
    first, gap, gone = estimates(out)
    assert first.state is EstimateState.OK and first.dominant == "happiness"
    # While the track is missing (not lost yet) nobody is in view this frame: no_face, not happiness.
    for estimate in (gap, gone):
        assert estimate.state is EstimateState.NO_FACE and estimate.dominant is None
        assert set(estimate.scores.values()) == {0.0} and estimate.faces == ()
        assert estimate.to_wire()["dominant"] is None and estimate.to_wire()["state"] == "no_face"
    assert [e.face for e in events(out, EventKind.FACE_LOST)] == [1]


def test_uncertain_below_the_bound() -> None:
    s = session(FaceConfig(smoothing_s=0.0, uncertain_below=0.35))
    (sure,) = estimates(s.on_faces(0.0, WALL, [seen(100, "anger", 0.6)]))
    (unsure,) = estimates(s.on_faces(0.25, WALL, [seen(100, "anger", 0.3)]))
    assert sure.state is EstimateState.OK and sure.faces is not None and sure.faces[0].state is EstimateState.OK
    assert unsure.state is EstimateState.UNCERTAIN and unsure.faces is not None
    assert unsure.faces[0].state is EstimateState.UNCERTAIN and unsure.dominant == "anger"


def test_the_stream_follows_the_largest_face_and_each_face_keeps_its_id() -> None:
    s = session()
    out = []
    for step in range(8):
        ts = step * 0.25
        out += s.on_faces(ts, WALL, [seen(600, "sadness", 0.8, size=60), seen(100 + step, "happiness", 0.7, size=150)])
    ests = estimates(out)
    assert all(e.dominant == "happiness" for e in ests)  # the big face, not the small one
    assert all(e.faces is not None and sorted(f.id for f in e.faces) == [1, 2] for e in ests)
    small = [f for e in ests for f in (e.faces or ()) if f.box[2] == 60]
    assert {f.id for f in small} == {1} and all(f.dominant == "sadness" for f in small)
    appeared = events(out, EventKind.FACE_APPEARED)
    assert sorted(e.face for e in appeared if e.face is not None) == [1, 2] and all(e.ts == 0.0 for e in appeared)


def test_per_face_episodes_carry_the_face_and_close_when_it_is_lost() -> None:
    s = session()
    out = []
    for step in range(12):  # a smile held for 3 s on face 1; then the face leaves for good
        out += s.on_faces(step * 0.25, WALL, [seen(100, "happiness", 0.9)])
    out += s.on_faces(3.0, WALL, [])
    out += s.on_faces(4.5, WALL, [])
    per_face = [e for e in events(out, EventKind.ONSET) if e.face is not None]
    assert [(e.face, e.label) for e in per_face] == [(1, "happiness")]
    offsets = [e for e in events(out, EventKind.OFFSET) if e.face == 1]
    assert len(offsets) == 1 and offsets[0].forced
    lost = events(out, EventKind.FACE_LOST)
    assert [e.face for e in lost] == [1]
    assert out.index(offsets[0]) < out.index(lost[0])  # the face's episode closes before it is lost
    assert s.open_faces == 0  # its state is freed


def test_memory_follows_the_faces_in_view() -> None:
    s = session()
    for step in range(2000):  # faces come and go: a new one every 2 s, far from the last
        ts = step * 0.25
        x = 100.0 + 400.0 * ((step // 8) % 2)
        s.on_faces(ts, WALL, [seen(x, "neutral", 0.8)] if step % 8 < 6 else [])
        assert s.open_faces <= 2


def test_summaries_share_time_by_dominant_label_with_no_face_and_states() -> None:
    s = session()
    out = []
    for step in range(8):  # 2 s window: 1 s happy, 0.5 s uncertain, 0.5 s nobody
        ts = step * 0.25
        observations = [seen(100, "happiness", 0.9)] if step < 4 else [seen(100, "anger", 0.3)] if step < 6 else []
        out += s.on_faces(ts, WALL, observations)
    out += s.on_faces(2.0, WALL, [])
    (summary,) = [r for r in out if isinstance(r, Summary)]
    assert summary.share["happiness"] == 0.5 and summary.share["anger"] == 0.25 and summary.share[NO_FACE] == 0.25
    assert summary.states == {"ok": 0.5, "uncertain": 0.25, "no_face": 0.25}
    assert summary.dominant == "happiness" and summary.mean["happiness"] > 0.5  # means over frames with a face


def test_fusion_with_clip_moves_only_the_emotional_mass() -> None:
    face = probs("neutral", 0.6)
    clip = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # CLIP is sure of happiness
    fused = fuse_with_clip(face, clip, weight=0.5)
    assert fused[-1] == pytest.approx(0.6)  # neutral is the face's alone
    assert fused.sum() == pytest.approx(1.0)
    assert fused[1] == pytest.approx(0.5 * face[1] + 0.5 * 0.4)
    s = StreamSession("cam", EXPRESSION_LABELS, ANALYTICS, faces=FaceConfig(smoothing_s=0.0, clip_weight=0.5))
    (estimate,) = estimates(s.on_faces(0.0, WALL, [FaceObservation(FaceBox(0, 0, 100, 100, 1.0), face)],
                                       clip=(clip, 1.0)))
    assert estimate.scores["happiness"] == pytest.approx(fused[1], abs=1e-4)
    assert estimate.sentiment == pytest.approx(0.5 * sentiment_of(face) + 0.5, abs=1e-4)


def test_sentiment_follows_valence() -> None:
    assert sentiment_of(probs("happiness", 1.0)) == pytest.approx(1.0, abs=1e-6)
    assert sentiment_of(probs("sadness", 1.0)) < -0.5 and sentiment_of(probs("neutral", 1.0)) == pytest.approx(0.0)


def test_modes_do_not_mix() -> None:
    with pytest.raises(PipelineError):
        session().on_estimate(0.0, WALL, np.zeros(7), 0.0)
    with pytest.raises(PipelineError):
        StreamSession("cam", EXPRESSION_LABELS, ANALYTICS).on_faces(0.0, WALL, [])


def test_smoothing_follows_media_time() -> None:
    faces = FaceSet(ANALYTICS, FaceConfig(smoothing_s=1.0))
    faces.update(0.0, [seen(100, "happiness", 0.9)])
    slow = faces.update(0.1, [seen(100, "sadness", 0.9)])
    assert slow.primary is not None and slow.primary.dominant == "happiness"  # 0.1 s barely moves it
    late = faces.update(3.0, [seen(100, "sadness", 0.9)])
    assert late.primary is not None and late.primary.dominant == "sadness"
    assert late.primary.frame_scores["sadness"] == pytest.approx(0.9, abs=1e-4)


def test_a_neutral_face_is_not_an_episode() -> None:
    s = session()
    out = []
    for step in range(16):  # 4 s of a clearly neutral face
        out += s.on_faces(step * 0.25, WALL, [seen(100, "neutral", 0.9)])
    out += s.finish(4.0, WALL)
    assert not [e for e in out if isinstance(e, Event) and e.kind in (EventKind.ONSET, EventKind.PEAK)]
