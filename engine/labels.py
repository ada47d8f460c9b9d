"""The label sets: CMU-MOSEI's six emotions, in MOSEI's own column order, and a sentiment in [-1, 1];
for facial expressions, those six and the neutral face (engine/expression.py maps a model's labels to them).
"""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("anger", "happiness", "disgust", "fear", "sadness", "surprise")
# MOSEI annotates sentiment on [-3, 3]; affectstream reports it scaled to [-1, 1].
SENTIMENT_SCALE = 3.0
# Ours for expressions: the six emotions and the neutral face that expression models know and MOSEI does not.
EXPRESSION_LABELS: tuple[str, ...] = (*EMOTIONS, "neutral")
