"""SIGTERM is handled like Ctrl-C by the long commands: what is done is written, marked partial, and
the exit status says which signal (143 SIGTERM, 130 Ctrl-C)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from affectstream.errors import ExitStatus
from tests.timeouts import scaled


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "affectstream", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, ExitStatus.TERMINATED),
                                                (signal.SIGINT, ExitStatus.INTERRUPTED)])
def test_analyze_stopped_by_a_signal_writes_a_partial_summary(tmp_path: Path, signum: int, status: int) -> None:
    from tests.media import make_video

    video = make_video(tmp_path / "long.avi", seconds=300.0, fps=10, size=(160, 120))
    # Every one of 3000 frames, one per batch: long enough to be stopped on the way.
    process = start(["analyze", str(video), "--model", "tiny-random", "--faces", "off", "--rate", "0",
                     "--max-batch", "1", "--out", "m.jsonl", "--summary", "s.json"], tmp_path)
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:  # the model has loaded and the file is being read: stop it soon
            seen.append(line)
            if "opened file" in line:
                break
        time.sleep(1.0)
        process.send_signal(signum)
        _, rest = process.communicate(timeout=scaled(60))
        err = "".join(seen) + rest
    finally:
        process.kill()
    assert process.returncode == status, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["partial"] is True and summary["processing"]["interrupted"] is True
    assert 0 < summary["frames"] < 3000
    assert "Traceback" not in err
