"""MediaTimeSampler: exact counts on regular and variable frame rates, jitter, jumps, resets."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from affectstream.errors import ConfigError
from affectstream.stream.sampler import (
    DEFAULT_FILE_RATE_HZ,
    DEFAULT_LIVE_RATE_HZ,
    SEED_RATE_HZ,
    MediaTimeSampler,
)


def sampled(sampler: MediaTimeSampler, timestamps: list[float]) -> list[float]:
    return [pts for pts in timestamps if sampler.offer(pts)]


def regular(fps: float, seconds: float, start: float = 0.0) -> list[float]:
    return [start + index / fps for index in range(round(seconds * fps))]


def test_constants() -> None:
    assert (DEFAULT_LIVE_RATE_HZ, DEFAULT_FILE_RATE_HZ, SEED_RATE_HZ) == (4.0, 2.0, 0.25)


@pytest.mark.parametrize(
    ("fps", "rate", "seconds", "expected"),
    [
        (30, 4.0, 10, 40),
        (25, 4.0, 10, 40),
        (29.97, 2.0, 60, 120),
        (30, 0.25, 60, 15),  # the seed's 1 frame / 4 s
        (10, 10.0, 5, 50),  # rate = fps: every frame
        (10, 20.0, 5, 50),  # rate above fps: every frame, never more
        (24, 1.0, 3.5, 4),  # grid points 0, 1, 2, 3
    ],
)
def test_exact_counts_on_regular_frame_rates(fps: float, rate: float, seconds: float, expected: int) -> None:
    assert len(sampled(MediaTimeSampler(rate), regular(fps, seconds))) == expected


def test_sampled_frames_are_the_first_at_or_after_each_grid_point() -> None:
    assert sampled(MediaTimeSampler(4.0), regular(30, 1.0)) == pytest.approx([0.0, 8 / 30, 15 / 30, 23 / 30])


def test_grid_starts_at_the_first_frame_not_at_zero() -> None:
    timestamps = regular(10, 2.0, start=1234.05)
    assert sampled(MediaTimeSampler(2.0), timestamps) == pytest.approx([1234.05, 1234.55, 1235.05, 1235.55])


@pytest.mark.parametrize("rate", [None, 0, 0.0])
def test_no_rate_samples_every_frame(rate: float | None) -> None:
    sampler = MediaTimeSampler(rate)
    timestamps = [0.0, 0.0, 0.001, 5.0, 1.0]  # even duplicates and jumps
    assert sampled(sampler, timestamps) == timestamps
    assert sampler.rate_hz is None and sampler.period == 0.0


def test_variable_frame_rate_counts_grid_points_reached() -> None:
    # 2 s at 60 fps, then 2 s at 5 fps, then 2 s at 30 fps.
    timestamps = regular(60, 2.0) + regular(5, 2.0, start=2.0) + regular(30, 2.0, start=4.0)
    picks = sampled(MediaTimeSampler(4.0), timestamps)
    # 60 fps and 30 fps reach every 0.25 s grid point; 5 fps (one frame / 0.2 s) also does, late
    # by up to 0.15 s, and one frame never stands for two grid points.
    assert len(picks) == 24
    assert all(b - a > 0.1 for a, b in itertools.pairwise(picks))


def test_a_slow_stream_gives_one_sample_per_frame_at_most() -> None:
    picks = sampled(MediaTimeSampler(4.0), regular(1, 10.0))  # 1 fps against a 4 Hz grid
    assert len(picks) == 10


def test_forward_jump_skips_to_the_grid() -> None:
    sampler = MediaTimeSampler(1.0)
    timestamps = [0.0, 0.5, 1.0, 10.3, 10.6, 11.0, 11.2, 12.0]
    # After the jump to 10.3 the next due point is 11.0 (on the grid from 0), not 11.3 or 2.0.
    assert sampled(sampler, timestamps) == [0.0, 1.0, 10.3, 11.0, 12.0]


@given(
    fps=st.sampled_from([15.0, 24.0, 25.0, 30.0, 50.0, 60.0]),
    rate=st.sampled_from([1.0, 2.0, 4.0]),
    jitter_fraction=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**16),
)
def test_jitter_does_not_change_the_long_run_rate(fps: float, rate: float, jitter_fraction: float,
                                                 seed: int) -> None:
    rng = random.Random(seed)
    seconds = 20.0
    frame_interval = 1.0 / fps
    timestamps = [
        index * frame_interval + rng.uniform(-jitter_fraction, jitter_fraction) * frame_interval / 2
        for index in range(int(seconds * fps))
    ]
    timestamps[0] = 0.0
    picks = sampled(MediaTimeSampler(rate), timestamps)
    expected = math.ceil((timestamps[-1] - 1e-9) * rate)  # grid points in [0, last], give or take one
    assert abs(len(picks) - expected) <= 1
    # Each pick is the first frame at or past its grid point, so it lies within one frame interval
    # plus the jitter after it: consecutive picks are a period apart, less that much at most.
    slack = (1 + jitter_fraction) * frame_interval + 1e-9
    assert all(b - a >= 1.0 / rate - slack for a, b in itertools.pairwise(picks))


def test_small_backwards_jitter_does_not_restart_the_grid() -> None:
    sampler = MediaTimeSampler(4.0)
    assert sampled(sampler, [0.0, 0.26, 0.24, 0.2, 0.27, 0.5]) == [0.0, 0.26, 0.5]


def test_backwards_jump_restarts_the_grid() -> None:
    sampler = MediaTimeSampler(2.0)
    before = sampled(sampler, regular(10, 3.0, start=100.0))
    assert len(before) == 6
    # A reconnect: timestamps start again from 0.
    after = sampled(sampler, regular(10, 2.0))
    assert after == pytest.approx([0.0, 0.5, 1.0, 1.5])


def test_backwards_by_less_than_a_period_waits_for_the_grid() -> None:
    sampler = MediaTimeSampler(1.0)
    assert sampled(sampler, [0.0, 1.0, 1.6, 0.7, 1.9, 2.0]) == [0.0, 1.0, 2.0]


def test_reset_samples_the_next_frame_and_anchors_a_new_grid() -> None:
    sampler = MediaTimeSampler(1.0)
    assert sampled(sampler, [0.0, 0.5]) == [0.0]
    sampler.reset()
    assert sampled(sampler, [0.6, 1.0, 1.5, 1.6]) == [0.6, 1.6]


def test_timestamps_without_a_value_are_not_sampled() -> None:
    sampler = MediaTimeSampler(1.0)
    assert sampled(sampler, [math.nan, 0.0, math.inf, 0.2, 1.0]) == [0.0, 1.0]
    assert MediaTimeSampler(None).offer(math.nan) is False


def test_float_timestamps_on_the_grid_count_as_reached() -> None:
    # 0.1 * 3 == 0.30000000000000004 and 0.7 / 0.1 == 6.999999999999999: neither may skip a point.
    sampler = MediaTimeSampler(10.0)
    timestamps = [round(index * 0.1, 10) for index in range(100)]
    assert sampled(sampler, timestamps) == timestamps


@pytest.mark.parametrize("rate", [-1.0, math.nan, math.inf])
def test_invalid_rates_are_refused(rate: float) -> None:
    with pytest.raises(ConfigError, match="sampling rate"):
        MediaTimeSampler(rate)
