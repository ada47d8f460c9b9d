"""The odd media corpus of benchmarks/fault_drill.py: each file with the exit status its kind earns.

The expected statuses are those of docs/cli.md ("Exit statuses"): 0 read to its end (timestamps
repaired or not), 3 frames lost (truncated, corrupt) with what was read analysed, 4 nothing to analyse
(missing, empty, not a video, no video track, a moov-less MP4 of which nothing can be read). Files come
from tests/media.py where it has a generator, from ffmpeg, and from Debian's opencv-doc footage.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from affectstream.errors import ExitStatus

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = Path("/usr/share/doc/opencv-doc/examples/data")
MEGAMIND, VTEST, MEGAMIND_BUGY = FOOTAGE / "Megamind.avi", FOOTAGE / "vtest.avi", FOOTAGE / "Megamind_bugy.avi"
MEGAMIND_SIZE = (720, 528)  # width, height as a player shows it

OK, PARTIAL, NOTHING, USAGE = ExitStatus.OK, ExitStatus.PARTIAL, ExitStatus.NOTHING, ExitStatus.USAGE


@dataclass(frozen=True)
class MediaCase:
    name: str
    kind: str  # what is odd about it, in words
    make: Callable[[Path], Path]  # builds the input inside the folder given; returns what to analyse
    expected: frozenset[int]  # the exit statuses its kind earns (docs/cli.md)


def tests_media() -> ModuleType:
    """tests/media.py, the suite's generators (the repository root must be importable)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests import media

    return media


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=300,
                   capture_output=True)


def megamind_clip(out: Path, *filters: str, seconds: float | None = None, codec: tuple[str, ...] = (),
                  source: Path = MEGAMIND) -> Path:
    """Debian's talking face re-encoded (H.264, no B-frames unless ``codec`` says otherwise)."""
    length = ("-t", str(seconds)) if seconds else ()
    vf = ("-vf", ",".join(filters)) if filters else ()
    encode = codec or ("-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-pix_fmt", "yuv420p")
    ffmpeg("-i", str(source), *length, *vf, *encode, "-an", str(out))
    return out


def zero_timestamps(path_in: Path, path_out: Path) -> Path:
    """An MP4 whose ``stts`` says every frame lasts 0: every presentation time is 0."""
    data = bytearray(path_in.read_bytes())
    at = data.find(b"stts")
    if at < 0:
        raise RuntimeError(f"{path_in} has no stts box")
    entries = struct.unpack_from(">I", data, at + 8)[0]
    for index in range(entries):
        struct.pack_into(">I", data, at + 12 + 8 * index + 4, 0)  # (sample_count, sample_delta)
    path_out.write_bytes(bytes(data))
    return path_out


def rotated(folder: Path) -> Path:
    """A phone-style clip: frames stored sideways with a 90° display matrix, upright when played."""
    stored = megamind_clip(folder / "sideways.mp4", "transpose=1")
    out = folder / "rotated-90.mp4"
    ffmpeg("-i", str(stored), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(out))
    stored.unlink()
    return out


def resolution(width: int, height: int) -> Callable[[Path], Path]:
    """Megamind scaled to a size, 6 s at 10 fps: the same pictures at 720p, 4K and 8K."""
    return lambda d: megamind_clip(d / f"{width}x{height}.mp4", f"scale={width}:{height}", "fps=10", seconds=6)


def _html(folder: Path) -> Path:
    path = folder / "download.mp4"
    path.write_text("<!doctype html>\n<html><head><title>403 Forbidden</title></head>\n"
                    "<body><h1>Forbidden</h1><p>You need to sign in to download this video.</p></body></html>\n")
    return path


def _directory(folder: Path) -> Path:
    path = folder / "folder.mp4"
    path.mkdir()
    (path / "inside.txt").write_text("a directory named like a video\n")
    return path


def _unreadable(folder: Path) -> Path:
    path = tests_media().make_video(folder / "secret.avi", seconds=2)
    path.chmod(0)
    return path


def _renamed(make: Callable[[Path], Path], name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        made = make(folder)
        return made.rename(folder / name)

    return build


def _symlink(folder: Path) -> Path:
    target = tests_media().make_video(folder / "target.avi", seconds=2)
    link = folder / "link.avi"
    link.symlink_to(target)
    return link


def _dangling(folder: Path) -> Path:
    link = folder / "dangling.avi"
    link.symlink_to(folder / "gone.avi")
    return link


def _one_frame(folder: Path) -> Path:
    return tests_media().encode_with_pts(folder / "one-frame.mkv", [0.0])


def _tiny(folder: Path) -> Path:
    out = folder / "tiny-2x2.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=2x2:rate=10", "-t", "2", "-c:v", "ffv1", str(out))
    return out


def _lavfi(name: str, spec: str, *encode: str, seconds: float = 2) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        out = folder / name
        ffmpeg("-f", "lavfi", "-i", spec, "-t", str(seconds), *encode, str(out))
        return out

    return build


def _long_mp4(folder: Path) -> Path:
    return tests_media().encode_with_pts(folder / "long.mp4", [i / 10 for i in range(60)])


def _long_mkv(folder: Path) -> Path:
    return tests_media().encode_with_pts(folder / "long.mkv", [i / 10 for i in range(60)])


def _readable_by_root() -> int:
    """Permission bits do not stop root: then an unreadable file is an ordinary one."""
    return OK if os.geteuid() == 0 else NOTHING


def corpus() -> list[MediaCase]:
    """Every case of the media section, in the order the table shows them."""
    m = tests_media()

    def case(name: str, kind: str, make: Callable[[Path], Path], *expected: int) -> MediaCase:
        return MediaCase(name, kind, make, frozenset(expected))

    return [
        case("megamind", "real footage, a talking face", lambda d: Path(shutil.copy(MEGAMIND, d)), OK),
        case("vtest", "real footage, pedestrians, 80 s", lambda d: Path(shutil.copy(VTEST, d)), OK),
        case("megamind-bugy", "Debian's corrupted AVI (packed B-frames)",
             lambda d: Path(shutil.copy(MEGAMIND_BUGY, d)), OK),
        case("megamind-mp4", "H.264 MP4 (reference for zero-timestamps)",
             lambda d: megamind_clip(d / "megamind.mp4"), OK),
        case("missing", "a path that does not exist", lambda d: d / "not-there.mp4", NOTHING),
        case("zero-bytes", "an empty file", lambda d: m.make_empty(d / "empty.mp4"), NOTHING),
        case("garbage", "64 KiB of random bytes", lambda d: m.make_random_bytes(d / "noise.mp4"), NOTHING),
        case("text-as-mp4", "a text file named .mp4", lambda d: m.make_text_file(d / "notes.mp4"), NOTHING),
        case("html-as-mp4", "an HTML error page saved as .mp4", _html, NOTHING),
        case("audio-only", "AAC in MP4, no video track", lambda d: m.make_audio_only(d / "tone.mp4"), NOTHING),
        case("directory", "a directory named .mp4", _directory, NOTHING),
        case("dangling-symlink", "a symlink to nothing", _dangling, NOTHING),
        case("unreadable", "mode 000 (root reads it anyway)", _unreadable, _readable_by_root()),
        case("moov-less", "MP4 cut in half: no moov, nothing readable",
             lambda d: m.make_truncated(_long_mp4(d), d / "half.mp4"), NOTHING),
        case("truncated-avi", "AVI cut in half",
             lambda d: m.make_truncated(m.make_video(d / "a.avi", 4.0), d / "half.avi"), PARTIAL),
        case("truncated-mkv", "Matroska cut in half", lambda d: m.make_truncated(_long_mkv(d), d / "half.mkv"),
             PARTIAL),
        case("corrupt-mp4", "MP4 with random bytes over its middle",
             lambda d: m.overwrite_middle(_long_mp4(d), d / "bad.mp4"), PARTIAL),
        case("corrupt-mkv", "Matroska with corrupt packets",
             lambda d: m.overwrite_middle(_long_mkv(d), d / "bad.mkv"), PARTIAL),
        case("corrupt-ts", "MPEG-TS with corrupt packets",
             lambda d: m.overwrite_middle(m.make_resolution_change_video(d / "r.ts"), d / "bad.ts"), PARTIAL),
        case("zero-timestamps", "MP4 whose stts deltas are all 0",
             lambda d: zero_timestamps(megamind_clip(d / "ref.mp4"), d / "zero-ts.mp4"), OK),
        case("no-timestamps", "bare H.264, no container", lambda d: m.make_raw_h264(d / "raw.h264"), OK),
        case("vfr", "variable frame rate (40-250 ms gaps)", lambda d: m.make_vfr_video(d / "vfr.mkv"), OK),
        case("zero-fps-header", "AVI claiming 0 fps", lambda d: m.make_zero_fps_header(d / "zero.avi"), OK),
        case("absurd-fps-header", "AVI claiming 1000 fps", lambda d: m.make_absurd_fps_header(d / "absurd.avi"),
             OK),
        case("resolution-change", "MPEG-TS whose size changes mid-stream",
             lambda d: m.make_resolution_change_video(d / "resize.ts"), OK),
        case("rotated-90", "frames sideways + 90° display matrix", rotated, OK),
        case("tiny-2x2", "2x2 pixels", _tiny, OK),
        case("one-frame", "a single frame", _one_frame, OK),
        case("odd-size", "161x121 (odd width and height)",
             _lavfi("odd.mkv", "testsrc=size=161x121:rate=10", "-c:v", "ffv1"), OK),
        case("panorama", "3840x64",
             _lavfi("wide.mp4", "testsrc=size=3840x64:rate=10", "-c:v", "libx264", "-preset", "ultrafast"), OK),
        case("yuv444-10bit", "H.264 High 4:4:4, 10 bit",
             _lavfi("444.mkv", "testsrc=size=320x240:rate=10", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv444p10le"), OK),
        case("vp9-webm", "VP9 in WebM",
             _lavfi("v.webm", "testsrc=size=320x240:rate=10", "-c:v", "libvpx-vp9", "-deadline", "realtime"), OK),
        case("hevc", "H.265 in MP4",
             _lavfi("h.mp4", "testsrc=size=320x240:rate=10", "-c:v", "libx265", "-preset", "ultrafast"), OK),
        case("gif", "an animated GIF", _lavfi("anim.gif", "testsrc=size=160x120:rate=10", "-c:v", "gif"), OK),
        case("720p", "Megamind at 1280x720", resolution(1280, 720), OK),
        case("4k", "Megamind at 3840x2160", resolution(3840, 2160), OK),
        case("8k", "Megamind at 7680x4320", resolution(7680, 4320), OK),
        case("unicode-name", "a name in three scripts and an emoji",
             _renamed(lambda d: m.make_video(d / "u.avi"), "ça-видео-映像-👀 clip.avi"), OK),
        case("long-name", "a 200-character name", _renamed(lambda d: m.make_video(d / "l.avi"), "n" * 196 + ".avi"),
             OK),
        case("longest-name", "a 250-character name (its .affect.json would not fit)",
             _renamed(lambda d: m.make_video(d / "x.avi"), "x" * 246 + ".avi"), OK, USAGE),
        case("symlink", "a symlink to a video", _symlink, OK),
    ]


def restore_permissions(folder: Path) -> None:
    """Make everything under ``folder`` removable again (the unreadable case sets mode 000)."""
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
