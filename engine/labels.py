"""The label set: CMU-MOSEI's six emotions, in MOSEI's own column order, and a sentiment in [-1, 1]."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("anger", "happiness", "disgust", "fear", "sadness", "surprise")
# MOSEI annotates sentiment on [-3, 3]; affectstream reports it scaled to [-1, 1].
SENTIMENT_SCALE = 3.0
