"""PNG plots of a bench report (matplotlib, the ``plots`` extra)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from affectstream.errors import MissingExtraError

log = logging.getLogger("affectstream.bench")


def write_plots(report: dict[str, Any], directory: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("matplotlib", "plots", "bench plots") from None
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("encoders", _encoders), ("latency", _latency), ("streams", _streams),
                       ("naive_vs_pipeline", _naive)):
        section = report.get(name)
        if not section:
            continue
        figure, axes = plt.subplots(figsize=(7, 4))
        draw(axes, section)
        figure.tight_layout()
        path = directory / f"bench_{name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(str(path))
    return written


def _encoders(axes: Any, section: dict[str, Any]) -> None:
    variants = sorted({row["variant"] for row in section["rows"]})
    for variant in variants:
        rows = [row for row in section["rows"] if row["variant"] == variant]
        axes.plot([row["batch"] for row in rows], [row["frames_per_s"] for row in rows], marker="o", label=variant)
    axes.set(xlabel="batch size", ylabel="frames / s", title="a. encoder throughput (uint8 frames in)")
    axes.legend()


def _latency(axes: Any, section: dict[str, Any]) -> None:
    stages = section["run"]["stages_ms"]
    names = list(stages) + ["frame-to-event"]
    for offset, quantile in enumerate(("p50", "p95", "p99")):
        values = [stages[name].get(quantile, 0.0) for name in stages]
        values.append(section["run"]["frame_to_event_ms"].get(quantile, 0.0))
        axes.bar([i + 0.27 * (offset - 1) for i in range(len(names))], values, width=0.27, label=quantile)
    axes.set_xticks(range(len(names)), names, rotation=30)
    axes.set(ylabel="ms", title=f"b. frame-to-event by stage ({section['variant']}, {section['rate_hz']} Hz)")
    axes.legend()


def _streams(axes: Any, section: dict[str, Any]) -> None:
    runs = section["runs"]
    axes.plot([run["streams"] for run in runs], [run["frame_to_event_ms"].get("p99", 0.0) for run in runs],
              marker="o", label="p99")
    axes.axhline(section["target_p99_ms"], color="red", linestyle="--", label="target")
    axes.set(xlabel="streams", ylabel="ms", title=f"c. p99 frame-to-event at {section['rate_hz']} Hz per stream")
    axes.legend()


def _naive(axes: Any, section: dict[str, Any]) -> None:
    rows = section["rows"]
    labels = [str(row["streams"]) for row in rows]
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [row["naive"]["estimates_per_s"] for row in rows], 0.4, label="naive loop")
    axes.bar([p + 0.2 for p in positions], [row["pipeline"]["estimates_per_s"] for row in rows], 0.4, label="pipeline")
    axes.set_xticks(list(positions), labels)
    axes.set(xlabel="streams", ylabel="sampled frames / s", title="d. naive loop vs pipeline (torch fp32)")
    axes.legend()
