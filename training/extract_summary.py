"""What an extraction did: per-shard statistics, the run's summary and the record of what was skipped.

A shard's statistics travel in its own header, so a reused shard reports its frames and skips as if it
had just been computed.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affectstream.training.datasets import Dataset
from affectstream.training.sampling import SkipReason, SkipRecord

SKIPPED = "skipped.csv"


@dataclass(frozen=True)
class ShardStats:
    """What one shard holds (from computing it, or read back from a reused shard's header)."""

    name: str
    sequences: int
    frames: int
    skipped: tuple[SkipRecord, ...]
    reused: bool

    def header(self) -> dict[str, str]:
        return {"frames": str(self.frames), "skipped": json.dumps([s.as_dict() for s in self.skipped])}

    @classmethod
    def from_header(cls, name: str, header: dict[str, str]) -> ShardStats:
        sequences = json.loads(header.get("sequences", "[]"))
        skipped = _records(json.loads(header.get("skipped", "[]")))
        frames = sum(int(item["n_frames"]) for item in sequences)
        return cls(name, len(sequences), frames, skipped, reused=True)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "sequences": self.sequences, "frames": self.frames,
                           "skipped": [record.as_dict() for record in self.skipped]})

    @classmethod
    def from_json(cls, text: str) -> ShardStats:
        data = json.loads(text)
        return cls(data["name"], int(data["sequences"]), int(data["frames"]), _records(data["skipped"]),
                   reused=False)


def _records(items: list[dict[str, Any]]) -> tuple[SkipRecord, ...]:
    return tuple(SkipRecord(item["key"], SkipReason(item["reason"]), item["detail"], item["whole_segment"])
                 for item in items)


@dataclass(frozen=True)
class ExtractSummary:
    dataset: str
    out: Path
    segments_planned: int
    segments_extracted: int
    frames: int
    frames_encoded: int  # in this run only: 0 when every shard was reused
    skipped_by_reason: dict[str, int]
    segments_skipped: int  # whole segments left out by sampling (dataset problems are counted by reason)
    shards_written: int
    shards_reused: int
    seconds: float
    ray: str | None = None
    stats: tuple[ShardStats, ...] = field(default=(), repr=False)

    def lines(self) -> list[str]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_by_reason.items())) or "none"
        where = f" on Ray ({self.ray})" if self.ray else ""
        return [
            f"extracted {self.dataset}{where} -> {self.out}",
            f"  segments: {self.segments_extracted} of {self.segments_planned} planned "
            f"({self.segments_skipped} skipped while sampling)",
            f"  frames:   {self.frames} ({self.frames_encoded} encoded in this run)",
            f"  skipped:  {reasons}  (details in {SKIPPED})",
            f"  shards:   {self.shards_written} written, {self.shards_reused} reused",
            f"  time:     {self.seconds:.1f} s",
        ]

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if k != "stats"}


def summarise(dataset: Dataset, out: Path, stats: Sequence[ShardStats], seconds: float, ray: str | None
              ) -> ExtractSummary:
    reasons: Counter[str] = Counter(problem.kind.value for problem in dataset.problems)
    for shard in stats:
        reasons.update(record.reason.value for record in shard.skipped)
    return ExtractSummary(
        dataset=dataset.name, out=out, segments_planned=len(dataset.segments),
        segments_extracted=sum(s.sequences for s in stats), frames=sum(s.frames for s in stats),
        frames_encoded=sum(s.frames for s in stats if not s.reused), skipped_by_reason=dict(reasons),
        segments_skipped=sum(1 for s in stats for r in s.skipped if r.whole_segment),
        shards_written=sum(1 for s in stats if not s.reused), shards_reused=sum(1 for s in stats if s.reused),
        seconds=seconds, ray=ray, stats=tuple(stats),
    )


def write_skipped(out: Path, dataset: Dataset, stats: Sequence[ShardStats]) -> Path:
    path = out / SKIPPED
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stage", "item", "reason", "whole_segment", "detail"])
        for problem in dataset.problems:
            writer.writerow(["dataset", problem.item, problem.kind.value, True, problem.detail])
        for shard in stats:
            for record in shard.skipped:
                writer.writerow(["sampling", record.key, record.reason.value, record.whole_segment, record.detail])
    return path
