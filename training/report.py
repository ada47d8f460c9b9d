"""Evaluation reports as Markdown tables in the seeds' formats, the seeds' own figures beside ours.

The seeds' figures come from CMU-MOSEI (000) and CK+ / MUG (004) with real CLIP and CNN models; ours
come from whatever feature set was evaluated. Every table says so: a seed row is a reference point,
not a result to beat, until the same protocol runs on the same data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from affectstream.engine.labels import EMOTIONS

MODEL_NAMES = {
    "lstm": "LSTM (this bundle)",
    "frame_classifier": "per-frame classifier (MLP on frozen features, segment mean)",
    "zero_shot": "zero-shot, segment mean + dynamic threshold",
}
# 000 seed, tables 9 and 10 (test side): loss, precision, recall, AUC, binary accuracy
SEED_000_TEST = {
    "seed 000, CMU-MOSEI, one emotion per segment (table 9)": (0.2953, 0.6769, 0.4730, 0.8679, 0.8876),
    "seed 000, CMU-MOSEI, multi-label (table 10)": (0.4654, 0.6321, 0.4721, 0.8113, 0.8177),
}
SEED_000_ZERO_SHOT = (0.6877, 0.2471, 0.2539)  # section 5.3: accuracy, recall, precision
# 004 seed, table 13: normalized accuracy without / with synthetic samples
SEED_004_TABLE_13 = {
    "CK+, MobileNet": (0.3542, 0.4150), "CK+, proposed CNN": (0.3632, 0.3926),
    "MUG, MobileNet": (0.6134, 0.6434), "MUG, ResNet50": (0.5841, 0.6250),
}


def number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.2f} %"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def caveat(report: dict[str, Any]) -> str:
    return (f"Seed rows are the seeds' published figures on their data (CMU-MOSEI; CK+ and MUG), shown for "
            f"format only: **not comparable** with ours ({report['dataset']} features, "
            f"{report['side']} side, {report['segments']} segments of {report['videos']} videos) until the same "
            f"protocol runs on the real datasets.")


def multilabel_section(report: dict[str, Any]) -> list[str]:
    rows = [[f"{name} ¹", *(number(v) for v in values), "–"] for name, values in SEED_000_TEST.items()]
    for key, model in report["models"].items():
        m = model["multilabel"]
        rows.append([MODEL_NAMES.get(key, key), number(m.get("loss")), number(m["precision"]), number(m["recall"]),
                     number(m["auc"]), number(m["binary_accuracy"]), number(m["macro_auc"])])
    lines = ["### Multi-label metrics (000 seed, tables 9-10 format)", ""]
    lines += table(["model", "loss", "precision", "recall", "AUC (micro, as Keras)", "binary acc.", "macro AUC"], rows)
    lines += ["", "Precision, recall and binary accuracy at 0.5 (Keras's default, as the seed); the zero-shot "
              "row decides with the dynamic threshold instead, and has no loss.", ""]
    per_label = [[MODEL_NAMES.get(key, key), *(number(model["multilabel"]["per_label"][e]["auc"], 3) for e in EMOTIONS),
                  number(model["multilabel"]["macro_auc"], 3)] for key, model in report["models"].items()]
    lines += ["AUC per emotion:", ""] + table(["model", *EMOTIONS, "macro"], per_label) + [""]
    return lines


def zero_shot_section(report: dict[str, Any]) -> list[str]:
    if "zero_shot" not in report["models"]:
        return []
    m = report["models"]["zero_shot"]["multilabel"]
    rows = [["seed 000, CMU-MOSEI, CLIP ViT-B/32 (section 5.3) ¹", *(percent(v) for v in SEED_000_ZERO_SHOT), "–"],
            [f"ours (dynamic threshold {m.get('dynamic_threshold')})", percent(m["binary_accuracy"]),
             percent(m["recall"]), percent(m["precision"]), number(m["auc"], 3)]]
    lines = ["### Zero-shot baseline (000 seed, section 5.3 format)", ""]
    lines += table(["", "accuracy", "recall", "precision", "AUC of the segment means"], rows)
    counts = m.get("emotions_per_segment")
    if counts:
        lines += ["", "Emotions per segment after the dynamic threshold (the seed's table 8): "
                  + ", ".join(f"{i}: {c}" for i, c in enumerate(counts) if c)]
    return lines + [""]


def confusion_section(report: dict[str, Any]) -> list[str]:
    lines = ["### Confusion matrices, single-emotion segments (004 seed, tables 5-12 format)", ""]
    for key, model in report["models"].items():
        single = model["single_label"]
        if not single["n"]:
            continue
        present = [i for i, row in enumerate(single["confusion"]) if sum(row) > 0]
        rows = [[EMOTIONS[i], *(f"{v:.2f}" for v in single["confusion_normalised"][i])] for i in present]
        lines += [f"{MODEL_NAMES.get(key, key)}, {single['n']} segments, rows normalised; normalized accuracy "
                  f"**{percent(single['normalized_accuracy'])}** (accuracy {percent(single['accuracy'])}):", ""]
        lines += table(["true \\ predicted", *EMOTIONS], rows) + [""]
    return lines


def table_13_section(reports: Sequence[dict[str, Any]]) -> list[str]:
    """Normalized accuracy per model across bundles trained with different balancing (table 13)."""
    header = ["model", *(f"{r['dataset']}, balance {r['balance']}" for r in reports)]
    keys = [k for k in ("lstm", "frame_classifier") if all(k in r["models"] for r in reports)]
    short = {"lstm": "LSTM", "frame_classifier": "per-frame classifier"}
    rows = [[short[k], *(percent(r["models"][k]["single_label"]["normalized_accuracy"]) for r in reports)]
            for k in keys]
    seed_rows = [[f"{name} ¹", percent(without), percent(with_)] for name, (without, with_) in SEED_004_TABLE_13.items()]
    lines = ["### Normalized accuracy with and without synthetic samples (004 seed, table 13 format)", ""]
    lines += table(header, rows) + ["", "The seed's table 13:", ""]
    lines += table(["", "without synthetic samples", "with synthetic samples"], seed_rows)
    return lines + [""]


def render(reports: Sequence[dict[str, Any]]) -> str:
    lines = ["## Evaluation", ""]
    for report in reports:
        lines += [f"Bundle `{report['bundle']}` (balance {report['balance']}, target "
                  f"{report['train_config']['target']}, context {report['train_config']['context']}) on "
                  f"{report['dataset']}, {report['side']} side: {report['segments']} segments, {report['videos']} "
                  f"videos.", ""]
        lines += multilabel_section(report) + zero_shot_section(report) + confusion_section(report)
        sentiment = report["models"]["lstm"].get("sentiment", {})
        if sentiment.get("n"):
            lines += [f"Sentiment head (LSTM, mean over each segment's steps, in [-1, 1]): mean absolute error "
                      f"{number(sentiment['mae'], 3)}, Pearson r {number(sentiment['pearson'], 3)} over "
                      f"{sentiment['n']} segments.", ""]
    if len(reports) > 1:
        lines += table_13_section(reports)
    lines += [f"¹ {caveat(reports[0])}", ""]
    return "\n".join(lines)
