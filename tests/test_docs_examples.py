"""The README's examples, run as written (in a scratch directory, on real footage as talk.mp4, with
the offline models or tiny-random as the example says). Each `affectstream` line of the README is
either run here or skipped with its reason: a new example that is neither fails this test."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.timeouts import scaled

ROOT = Path(__file__).resolve().parents[1]
MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")

# Examples that need what a test machine has not, with the reason.
SKIPPED = {
    "affectstream run cam=0": "needs a webcam and an RTSP camera on the LAN",
    "affectstream run talk.mp4 --out talk.jsonl --show": "opens a window (the GUI extra); run without --show below",
    "affectstream run --allow-browser-sources": "waits for browser cameras until stopped; tests/test_webrtc.py "
                                                "and tests/test_video_browser.py run it with a camera",
    "affectstream analyze https://host/talk.mp4": "needs a web server; tests/test_http_sources.py serves one",
    "affectstream analyze videos/": "needs a directory of videos; tests/test_analyze_many.py analyses one",
    "affectstream listen ws://127.0.0.1:8765/": "needs a running server; tests/test_listen.py runs one",
    "affectstream extract /data/mosei": "needs CMU-MOSEI",
    "bash scripts/setup.sh": "is what CI runs before this test",
    "ray start": "starts a node of a Ray cluster; tests/test_ray_cluster.py runs a two-node one on one machine",
    "affectstream run --ray": "needs a Ray cluster; tests/test_ray_cluster.py runs the run against one",
    "bash scripts/test.sh": "is this test suite",
}
# Additions that keep an example short without changing what it shows.
SHORTER = {
    "synth": ["--videos", "4", "--seconds", "4"],
    "train": ["--epochs", "2", "--hidden", "16", "--no-progress"],
    "evaluate": ["--no-progress"],
}


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command:
                lines.append(command)
    return lines


def skipped(command: str) -> str | None:
    return next((reason for prefix, reason in SKIPPED.items() if command.startswith(prefix)), None)


def test_every_readme_example_is_run_or_skipped_for_a_reason() -> None:
    commands = readme_examples()
    assert len(commands) >= 10
    for command in commands:
        assert command.startswith("affectstream ") or skipped(command), f"README example not covered: {command}"


@pytest.mark.slow
@pytest.mark.skipif(not MEGAMIND.exists() or shutil.which("ffmpeg") is None, reason="needs opencv-doc and ffmpeg")
def test_the_readme_examples_run(tmp_path: Path) -> None:
    shutil.copy(MEGAMIND, tmp_path / "talk.mp4")  # an AVI under the example's name: FFmpeg reads by content
    ran = []
    for command in readme_examples():
        if skipped(command) and not command.startswith("affectstream run talk.mp4 --out talk.jsonl --show"):
            continue
        words = shlex.split(command)[1:]
        if "--show" in words:
            words.remove("--show")
            words += ["--fast", "--no-serve", "--quiet"]
        words += SHORTER.get(words[0], [])
        done = subprocess.run([sys.executable, "-m", "affectstream", *words], cwd=tmp_path, capture_output=True,
                              text=True, timeout=scaled(300))
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        ran.append(words[0])
    assert ran.count("analyze") == 3 and {"run", "synth", "extract", "train", "evaluate"} <= set(ran)
    assert (tmp_path / "talk.jsonl").is_file() and (tmp_path / "talk.mp4.affect.json").is_file()
    assert (tmp_path / "bundles" / "synth" / "manifest.json").is_file() and (tmp_path / "report.md").is_file()


def cli_md_examples() -> list[str]:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            # Comments and the synopsis's descriptions stand two spaces or more after the command.
            command = re.split(r"\s{2,}", line.strip())[0].split(" | ")[0].strip()
            # The synopsis at the top names placeholders (SOURCE, FILE …) and alternatives (create|inspect).
            if command.startswith("affectstream ") and not re.search(r"\b[A-Z]{3,}\b|\||…", command):
                found.append(command)
    return found


def test_every_cli_md_example_parses() -> None:
    """Each example of docs/cli.md is accepted by the real argument parser, option by option."""
    from affectstream.cli import build_parser

    examples = cli_md_examples()
    assert len(examples) >= 20
    parser = build_parser()
    for command in examples:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as error:
            raise AssertionError(f"docs/cli.md example does not parse: {command}") from error


CLI_SKIPPED = {
    "affectstream run cam=0": "needs a webcam and an RTSP camera on the LAN",
    "affectstream listen": "needs a running server; tests/test_listen.py runs one",
    "affectstream build-engine zs-b32 --backend tensorrt": "needs TensorRT and a GPU (tests/test_tensorrt.py)",
    "affectstream build-engine zs-b32 --backend compile": "torch.compile warms for minutes on 2 cores "
                                                          "(tests/test_compiled.py covers it)",
    "affectstream bench": "the benchmark itself (tests/test_bench.py runs a quick one)",
    "affectstream run --allow-browser-sources": "waits for browser cameras until stopped (tests/test_webrtc.py, "
                                                "tests/test_video_browser.py)",
    "affectstream run talk.mp4 --video-lines": "lingers a minute after the file (tests/test_dashboard_browser.py "
                                               "runs --linger)",
    "affectstream streams": "needs a running server; tests/test_stream_control.py runs each against one",
    "affectstream run --ray": "needs a Ray cluster; tests/test_ray_cluster.py runs the run against one",
}


def cli_skipped(command: str) -> str | None:
    return next((reason for prefix, reason in CLI_SKIPPED.items() if command.startswith(prefix)), None)


@pytest.mark.slow
@pytest.mark.skipif(not MEGAMIND.exists() or shutil.which("ffmpeg") is None, reason="needs opencv-doc and ffmpeg")
def test_the_cli_md_examples_run(tmp_path: Path) -> None:
    """docs/cli.md's examples in its order, with tiny-random for clip-vit-b32 (no hub here), files run
    --fast on a free port, and the synthetic set made small."""
    for name in ("talk.mp4", "a.mp4", "b.mp4", "clip.mp4"):
        shutil.copy(MEGAMIND, tmp_path / name)
    ran = []
    for command in cli_md_examples():
        if cli_skipped(command):
            continue
        words = ["tiny-random" if word == "clip-vit-b32" else word for word in shlex.split(command)[1:]]
        if words[0] == "run":
            words += ["--fast", "--quiet"] + ([] if "--no-serve" in words else ["--port", "0"])
        words += {"synth": ["--videos", "4", "--seconds", "4"], "train": ["--epochs", "2", "--no-progress"],
                  "evaluate": ["--no-progress"], "extract": ["--no-progress"]}.get(words[0], [])
        done = subprocess.run([sys.executable, "-m", "affectstream", *words], cwd=tmp_path, capture_output=True,
                              text=True, timeout=scaled(300))
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        ran.append(" ".join(words[:2]))
    assert len(ran) >= 12, ran
    assert (tmp_path / "zs-b32" / "visual.onnx").is_file() and (tmp_path / "bundle" / "manifest.json").is_file()
