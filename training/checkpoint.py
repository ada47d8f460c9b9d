"""Writing what a training run produced: the checkpoint with its config, the history as JSON and PNG.

::

    <dir>/checkpoint.safetensors   TemporalLSTM weights (best epoch)
    <dir>/checkpoint.json          temporal config, train config, best epoch, split, feature set
    <dir>/history.json             per epoch: loss, precision, recall, AUC (per label, macro), binary accuracy
    <dir>/history.png              the same, plotted (needs matplotlib: affectstream[plots])
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.errors import ConfigError, MissingExtraError
from affectstream.training.train import TrainConfig, TrainResult

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_CONFIG = "checkpoint.json"
HISTORY = "history.json"
HISTORY_PLOT = "history.png"
PLOTTED = ("loss", "precision", "recall", "macro_auc", "binary_accuracy")


def json_safe(value: Any) -> Any:
    """NaN and infinity become null, so that the files are strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, document: Any) -> Path:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(json_safe(document), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def save_checkpoint(directory: Path, result: TrainResult, extra: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.module.state_dict().items()}
    temporary = directory / f".{CHECKPOINT}.tmp"
    save_file(state, str(temporary))
    os.replace(temporary, directory / CHECKPOINT)
    write_json(directory / CHECKPOINT_CONFIG, {
        "temporal": result.module.config.to_dict(), "train": result.config.to_dict(),
        "best_epoch": result.best_epoch, "stopped_early": result.stopped_early, **(extra or {}),
    })
    write_json(directory / HISTORY, result.history)
    return directory / CHECKPOINT


def load_checkpoint(directory: Path) -> tuple[TemporalLSTM, TrainConfig, dict[str, Any]]:
    """The module (eval mode), its train config, and the whole checkpoint.json document."""
    directory = Path(directory)
    if not (directory / CHECKPOINT).is_file() or not (directory / CHECKPOINT_CONFIG).is_file():
        raise ConfigError(f"{directory} holds no {CHECKPOINT} with its {CHECKPOINT_CONFIG}: train one with "
                          f"`affectstream train`")
    document = json.loads((directory / CHECKPOINT_CONFIG).read_text(encoding="utf-8"))
    module = TemporalLSTM(TemporalConfig.from_dict(document["temporal"]))
    module.load_state_dict(load_file(str(directory / CHECKPOINT)))
    return module.eval(), TrainConfig.from_dict(document["train"]), document


def plot_history(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One panel per metric, training and validation per epoch (the seed's figures 8-12)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display is needed or wanted
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("matplotlib", "plots", "plotting the training history") from None
    figure, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2))
    epochs = [record["epoch"] for record in history]
    for axis, metric in zip(axes, PLOTTED):
        for side, style in (("train", "-"), ("val", "--")):
            values = [record.get(side, {}).get(metric) for record in history]
            if any(v is not None for v in values):
                axis.plot(epochs, [math.nan if v is None else v for v in values], style, label=side)
        axis.set_title(metric.replace("_", " "))
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return Path(path)
