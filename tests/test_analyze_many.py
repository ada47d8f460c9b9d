"""`affectstream analyze` over several files and directories (affectstream/analyze.py), its per-frame table
(stream/frame_table.py), where its outputs go, and the mistakes it refuses before the model loads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from affectstream.errors import ExitStatus
from tests.timeouts import scaled

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
MEGAMIND = OPENCV_DATA / "Megamind.avi"
MEGAMIND_BUGY = OPENCV_DATA / "Megamind_bugy.avi"
needs_footage = pytest.mark.skipif(not MEGAMIND.exists() or not MEGAMIND_BUGY.exists(),
                                   reason="Debian's opencv-doc is not installed")


def affectstream(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "affectstream", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=scaled(timeout))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@needs_footage
def test_three_files_one_broken_give_two_reports_an_index_and_status_3(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(MEGAMIND, videos / "a-megamind.avi")
    shutil.copy(MEGAMIND_BUGY, videos / "b-bugy.avi")
    (videos / "c-broken.mp4").write_bytes(bytes(range(256)) * 400)  # not a video FFmpeg can read
    (videos / "notes.txt").write_text("not a video: a directory gives its video files only")
    out = tmp_path / "reports"
    done = affectstream("analyze", str(videos), "--out-dir", str(out), "--model", "tiny-random", "--progress",
                        "--csv", str(out / "frames.csv"), "--parquet", str(out / "frames.parquet"), cwd=tmp_path)
    assert done.returncode == ExitStatus.PARTIAL, done.stderr  # some failed (docs/cli.md "Exit statuses")
    assert "Traceback" not in done.stderr
    reports = sorted(path.name for path in out.glob("*.affect.html"))
    assert reports == ["a-megamind.avi.affect.html", "b-bugy.avi.affect.html"]
    # A progress bar per file, with the time left.
    for n, name in ((1, "a-megamind.avi"), (2, "b-bugy.avi")):
        assert f"[{n}/3] {name}:" in done.stderr and "s media [" in done.stderr
    # The failure is listed at the end, with why; the paths written are said.
    tail = done.stderr[done.stderr.index("files analysed without a problem"):]
    assert "2 of 3 files analysed without a problem" in done.stderr
    assert f"failed: {videos / 'c-broken.mp4'} (not_video): not a video FFmpeg can read" in tail
    assert str(out / "a-megamind.avi.affect.html") in done.stderr and "index written to" in done.stderr
    # The index links each report (addresses that resolve) and names the broken file as failed.
    index = (out / "affect-index.html").read_text()
    for report in reports:
        assert f"href='{report}'" in index and (out / report).is_file()
    assert re.search(r"<tr class='failed'><td>[^<]*/c-broken\.mp4", index), index
    assert "2 of 3 files analysed; 1 failed" in index
    # Through a pipe, one summary per line; the broken file's says why nothing was read.
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["source"]["path"] for line in lines] == [str(videos / name) for name in
                                                          ("a-megamind.avi", "b-bugy.avi", "c-broken.mp4")]
    assert lines[2]["frames"] == 0 and lines[2]["damage"]["outcome"] == "not_video"
    # One table for all files: its rows are the summaries' frames and faces, file by file.
    import pandas as pd

    table = pd.read_csv(out / "frames.csv")
    parquet = pd.read_parquet(out / "frames.parquet")
    assert len(table) == len(parquet) and list(table.columns) == list(parquet.columns)
    assert sorted(table["file"].unique()) == [str(videos / "a-megamind.avi"), str(videos / "b-bugy.avi")]
    for line in lines[:2]:
        rows = table[table["file"] == line["source"]["path"]]
        assert rows["frame"].nunique() == line["frames"]
        assert_shares_equal(rows, line)
    assert (table["face_frame_happiness"].fillna(0) == parquet["face_frame_happiness"].fillna(0)).all()


def assert_shares_equal(rows: Any, summary: dict[str, Any]) -> None:
    """The table's shares, computed as a pandas user would, are the summary's."""
    frames = rows.drop_duplicates("frame")
    shares = frames.groupby("dominant")["duration_s"].sum() / frames["duration_s"].sum()
    for label, share in summary["share"].items():
        assert float(shares.get(label, 0.0)) == pytest.approx(share, abs=6e-5), label
    states = frames.groupby("state")["duration_s"].sum() / frames["duration_s"].sum()
    for state, share in summary["states"].items():
        assert float(states.get(state, 0.0)) == pytest.approx(share, abs=6e-5), state
    assert frames["duration_s"].sum() == pytest.approx(summary["duration_s"], abs=1e-3)


@pytest.mark.slow
@needs_footage
def test_the_csv_has_one_row_per_frame_and_face(tmp_path: Path) -> None:
    done = affectstream("analyze", str(MEGAMIND), "--summary", "s.json", "--out", "m.jsonl", "--csv", "t.csv",
                        "--model", "tiny-random", "--no-progress", "--no-html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "s.html").exists()  # --no-html
    import pandas as pd

    table = pd.read_csv(tmp_path / "t.csv")
    summary = json.loads((tmp_path / "s.json").read_text())
    estimates = [m for m in read_jsonl(tmp_path / "m.jsonl") if m["type"] == "estimate"]
    assert len(estimates) == summary["frames"] and len(table) == sum(max(1, len(m["faces"])) for m in estimates)
    assert any(len(m["faces"]) > 1 for m in estimates), "Megamind has frames with two faces"
    expected = [(i, m["ts"], face["id"], face["box"], face["frame_scores"]["fear"], face["scores"]["fear"], face["state"])
                for i, m in enumerate(estimates) for face in m["faces"]]
    with_face = table[table["face_id"].notna()]
    got = [(int(r.frame), r.time_s, int(r.face_id), [r.face_x, r.face_y, r.face_w, r.face_h], r.face_frame_fear,
            r.face_smoothed_fear, r.face_state) for r in with_face.itertuples()]
    assert got == expected
    no_face = table[table["face_id"].isna()]
    assert set(no_face["state"]) <= {"no_face"} and set(no_face["dominant"]) <= {"no_face"}
    # The face the stream's scores came from is marked, one per frame with a face.
    assert (with_face.groupby("frame")["face_primary"].sum() == 1).all()
    assert_shares_equal(table, summary)


def test_mistakes_with_several_inputs_are_refused_before_the_model(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x" * 100)
    (tmp_path / "b.mp4").write_bytes(b"x" * 100)
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    cases = [
        (["a.mp4", "b.mp4", "--summary", "s.json"], ExitStatus.USAGE, "--summary names one file: give one input"),
        (["a.mp4", "b.mp4", "--out", "m.jsonl", "--annotate", "x.mp4"], ExitStatus.USAGE,
         "--out and --annotate name one file"),
        (["a.mp4", "--out-dir", "no/such/out"], ExitStatus.USAGE, "--out-dir no/such/out: the directory no/such does not exist"),
        (["a.mp4", "--out-dir", "a.mp4"], ExitStatus.USAGE, "--out-dir a.mp4 is a file"),
        (["a.mp4", "--summary", "s.json", "--out-dir", "."], ExitStatus.USAGE, "give one of them"),
        (["a.mp4", "--csv", "a.mp4"], ExitStatus.USAGE, "--csv a.mp4 is an input"),
        (["a.mp4", "--csv", "t.csv", "--parquet", "t.csv"], ExitStatus.USAGE, "--parquet t.csv is also the --csv file"),
        (["missing-1.mp4", "missing-2.mp4"], ExitStatus.NOTHING, "cannot analyse missing-2.mp4: missing-2.mp4: no such file"),
        ([str(empty)], ExitStatus.NOTHING, "nothing-here holds no video file"),
    ]
    for argv, status, message in cases:
        before = sorted(tmp_path.rglob("*"))
        done = affectstream("analyze", *argv, "--model", "tiny-random", cwd=tmp_path, timeout=60)
        assert done.returncode == status and message in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr and "expression model" not in done.stderr, done.stderr
        assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing made


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x" * 100)
    program = ("import sys; sys.modules['pyarrow'] = None; from affectstream.cli import main; "
               "sys.exit(main(['analyze', 'a.mp4', '--parquet', 't.parquet', '--model', 'tiny-random']))")
    done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                          timeout=scaled(60))
    assert done.returncode == ExitStatus.USAGE, done.stderr
    assert "pip install affectstream[parquet]" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "t.parquet").exists()


def test_outputs_go_beside_the_input_else_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import os

    from affectstream.analyze import default_directory, plan_outputs

    video = tmp_path / "in" / "talk.mp4"
    video.parent.mkdir()
    video.write_bytes(b"x")
    assert default_directory(str(video), None) == video.parent
    assert default_directory(str(video), "elsewhere") == Path("elsewhere")
    assert default_directory("https://host/talk.mp4", None) == Path(".")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == video.parent else real_access(path, mode))
    assert default_directory(str(video), None) == Path(".")  # a read-only directory: the current one
    monkeypatch.undo()
    # Two inputs of one name never share outputs; an earlier summary is never replaced without --force.
    args = argparse.Namespace(summary=None, no_html=False, out_dir=str(tmp_path / "out"), force=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "talk.mp4.affect.html").write_text("earlier")
    taken: set[Path] = set()
    first = plan_outputs(str(video), args, taken)
    second = plan_outputs(str(tmp_path / "other" / "talk.mp4"), args, taken)
    assert first.summary.name == "talk.mp4.affect-1.json" and first.html is not None
    assert first.html.name == "talk.mp4.affect-1.html"
    assert second.summary.name == "talk.mp4.affect-2.json"
    args.force = True
    assert plan_outputs(str(video), args, set()).replaces == (tmp_path / "out" / "talk.mp4.affect.html",)
