"""A progress bar over media time for `affectstream analyze`: fed by the pipeline's records, so it
knows the file's stated duration (the stream_started event's SourceInfo) and how far the estimates
are; tqdm turns that into a rate and the time left. The rate is the average since the bar started
(tqdm's ``smoothing=0``): analysing a file runs at a steady pace, and over an hour the average says the
time left better than a moving one, which follows every busy second of a shared machine
(benchmarks/long_file.py measures it). Log lines go through the bar (``logging_redirect_tqdm`` in the
runner), so they do not break it."""

from __future__ import annotations

from typing import Any

from affectstream.errors import SourceOutcome
from affectstream.stream.messages import Estimate, Event, EventKind, Record


class MediaProgress:
    """Media seconds analysed, against the duration the file states (unknown: no total, a counter)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar  # a tqdm (or anything with total, n, refresh, update, close)
        self._done = 0.0
        self._origin: float | None = None

    def on_record(self, record: Record) -> None:
        if isinstance(record, Event) and record.kind is EventKind.STREAM_STARTED and record.source is not None:
            info = record.source.info
            if info is not None and info.duration_s:
                self.bar.total = round(float(info.duration_s), 1)
                self.bar.refresh()
        elif isinstance(record, Estimate):
            if self._origin is None:
                self._origin = record.ts  # media time may not start at 0 (HLS, cut files)
            done = max(self._done, record.ts - self._origin)
            # Rounded positions, not rounded steps: an hour of 0.5005 s steps must not drift by seconds.
            self.bar.update(round(done, 3) - round(self._done, 3))
            self._done = done
        elif isinstance(record, Event) and record.kind is EventKind.STREAM_ENDED and record.outcome is SourceOutcome.ENDED:
            total = self.bar.total
            if total and self.bar.n < total:  # read to its end: the last frame is the end, whatever was sampled
                self.bar.update(total - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def media_progress(label: str, disable: bool | None = None) -> MediaProgress:
    """A bar on stderr; ``disable=None``: shown only on a terminal (tqdm's own rule)."""
    from tqdm import tqdm

    return MediaProgress(tqdm(total=None, unit="s", unit_scale=False, desc=label, disable=disable, smoothing=0,
                              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} s media "
                                         "[{elapsed}<{remaining}, {rate_fmt}]"))
