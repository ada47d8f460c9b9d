"""Shared fixtures: generated videos and the tiny-random engine (built once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from affectstream.engine.runtime import Engine, EngineChoice, load_engine


@pytest.fixture(scope="session")
def tiny_engine() -> Engine:
    """The zero-shot engine on the tiny-random preset (CPU): whole-frame CLIP only, no face stage."""
    return load_engine(EngineChoice(model="tiny-random", device="cpu", faces="off"))


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def short_video(video_dir: Path) -> Path:
    """4 s at 10 fps, 160x120, visibly changing."""
    from tests.media import make_video

    return make_video(video_dir / "short.avi", seconds=4.0, fps=10, size=(160, 120))


@pytest.fixture(scope="session")
def other_video(video_dir: Path) -> Path:
    """A different 3 s video, so that two streams see different content."""
    from tests.media import make_video

    return make_video(video_dir / "other.avi", seconds=3.0, fps=15, size=(128, 96), pattern="other")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a shared CI machine, more threads only contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright (no browser download); skips without either."""
    from tests._browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
