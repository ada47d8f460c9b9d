"""The per-frame, per-face table of ``affectstream analyze --csv FILE`` / ``--parquet FILE``.

One row per sampled frame and face (a frame without a face, or any frame without the face stage, is
one row with the face columns empty), in the order the estimates were made. Columns, for pandas:

- ``file``, ``frame`` (the sampled frame's number in its file, from 0), ``time_s`` (media time),
  ``duration_s`` (the media time this frame stands for: the summary's weight, ``report.sample_weights``),
  ``state`` (``ok``, ``no_face``, ``uncertain``; empty without the face stage), ``dominant`` (the
  stream's dominant label, ``no_face`` when none), ``sentiment``, ``score_<label>`` (the stream's scores);
- per face: ``face_id``, ``face_primary`` (the face the stream's scores were built from), ``face_x``,
  ``face_y``, ``face_w``, ``face_h`` (source pixels), ``face_detector_score``, ``face_state``,
  ``face_dominant``, ``face_sentiment``, ``face_frame_<label>`` (the classifier on this frame) and
  ``face_smoothed_<label>`` (after the per-face smoother).

So ``df.drop_duplicates("frame").groupby("dominant").duration_s.sum() / df.drop_duplicates("frame")
.duration_s.sum()`` is the summary's ``share``. Rows are written as they come (a CSV line, or a
Parquet row group every ``ROW_GROUP`` rows): memory stays flat over an hour.
"""

from __future__ import annotations

import csv
import math
from array import array
from pathlib import Path
from typing import IO, Any

import numpy as np

from affectstream.engine.labels import NO_FACE
from affectstream.errors import ConfigError, MissingExtraError
from affectstream.stream.messages import Estimate, Record
from affectstream.stream.report import sample_weights

ROW_GROUP = 8192  # Parquet rows per row group (and rows held before one is written)
TABLE_SUFFIXES = {"csv": (".csv",), "parquet": (".parquet", ".pq")}


def columns(labels: tuple[str, ...]) -> list[str]:
    return (["file", "frame", "time_s", "duration_s", "state", "dominant", "sentiment"]
            + [f"score_{label}" for label in labels]
            + ["face_id", "face_primary", "face_x", "face_y", "face_w", "face_h", "face_detector_score",
               "face_state", "face_dominant", "face_sentiment"]
            + [f"face_frame_{label}" for label in labels] + [f"face_smoothed_{label}" for label in labels])


def require_pyarrow() -> Any:
    """pyarrow, or the error that names the extra (checked before the model loads)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingExtraError("pyarrow", "parquet", "--parquet") from None
    return pyarrow


class FrameTable:
    """Writes one file's (or several files') estimates as table rows; ``write`` takes any record and
    keeps the estimates; ``start_file`` begins the next input (its frames count from 0 again)."""

    def __init__(self, labels: tuple[str, ...], csv_path: Path | None = None, parquet_path: Path | None = None) -> None:
        if csv_path is None and parquet_path is None:
            raise ConfigError("a frame table needs a CSV or a Parquet path")
        self.labels = tuple(labels)
        self.columns = columns(self.labels)
        self._writers: list[_CsvWriter | _ParquetWriter] = []
        if csv_path is not None:
            self._writers.append(_CsvWriter(csv_path, self.columns))
        if parquet_path is not None:
            self._writers.append(_ParquetWriter(parquet_path, self.labels, self.columns))
        self.rows = 0
        self._file = ""
        self._pending: Estimate | None = None  # its duration is known at the next estimate
        self._frame = 0
        self._ts = array("d")

    @property
    def paths(self) -> list[Path]:
        return [writer.path for writer in self._writers]

    def start_file(self, name: str) -> None:
        self._finish_file()
        self._file = name
        self._frame = 0
        self._ts = array("d")

    def write(self, record: Record) -> None:
        if not isinstance(record, Estimate):
            return
        if self._pending is not None:
            self._emit(self._pending, record.ts - self._pending.ts)
        self._pending = record
        self._ts.append(float(record.ts))

    def close(self) -> None:
        self._finish_file()
        for writer in self._writers:
            writer.close()

    def _finish_file(self) -> None:
        if self._pending is not None:
            # The last frame stands for the median gap: the same rule as the summary's weights.
            self._emit(self._pending, float(sample_weights(np.frombuffer(self._ts, dtype=np.float64))[-1]))
            self._pending = None

    def _emit(self, estimate: Estimate, duration: float) -> None:
        rows = self._rows(estimate, duration)
        self._frame += 1
        self.rows += len(rows)
        for writer in self._writers:
            writer.add(rows)

    def _rows(self, estimate: Estimate, duration: float) -> list[list[Any]]:
        labels = self.labels
        head: list[Any] = [self._file, self._frame, round(float(estimate.ts), 6), round(float(duration), 6),
                           None if estimate.state is None else estimate.state.value,
                           estimate.dominant if estimate.dominant is not None else NO_FACE, estimate.sentiment]
        head += [estimate.scores.get(label, 0.0) for label in labels]
        if not estimate.faces:
            return [head + [None] * (10 + 2 * len(labels))]
        rows = []
        for face in estimate.faces:
            x, y, w, h = (round(float(v), 1) for v in face.box)
            rows.append(head + [face.id, face.id == estimate.primary, x, y, w, h, round(face.score, 4),
                                face.state.value, face.dominant, face.sentiment]
                        + [face.frame_scores.get(label, 0.0) for label in labels]
                        + [face.scores.get(label, 0.0) for label in labels])
        return rows


class _CsvWriter:
    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        self._handle: IO[str] = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 closed by close()
        self._csv = csv.writer(self._handle)
        self._csv.writerow(names)

    def add(self, rows: list[list[Any]]) -> None:
        self._csv.writerows([["" if value is None else _csv_value(value) for value in row] for row in rows])

    def close(self) -> None:
        self._handle.close()


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


class _ParquetWriter:
    def __init__(self, path: Path, labels: tuple[str, ...], names: list[str]) -> None:
        pa = require_pyarrow()
        import pyarrow.parquet as pq

        self.path = path
        self._pa = pa
        kinds: dict[str, Any] = {"file": pa.string(), "frame": pa.int64(), "state": pa.string(),
                                 "dominant": pa.string(), "face_id": pa.int64(), "face_primary": pa.bool_(),
                                 "face_state": pa.string(), "face_dominant": pa.string()}
        self._schema = pa.schema([(name, kinds.get(name, pa.float64())) for name in names])
        self._names = names
        self._writer = pq.ParquetWriter(str(path), self._schema)
        self._rows: list[list[Any]] = []

    def add(self, rows: list[list[Any]]) -> None:
        self._rows += rows
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        table = self._pa.Table.from_pylist([dict(zip(self._names, row)) for row in self._rows], schema=self._schema)
        self._writer.write_table(table)
        self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
