"""The label sets: CMU-MOSEI's six emotions, in MOSEI's own column order, and a sentiment in [-1, 1];
for facial expressions, those six and the neutral face (engine/expression.py maps a model's labels to them).
"""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("anger", "happiness", "disgust", "fear", "sadness", "surprise")
# MOSEI annotates sentiment on [-3, 3]; affectstream reports it scaled to [-1, 1].
SENTIMENT_SCALE = 3.0
# Ours for expressions: the six emotions and the neutral face that expression models know and MOSEI does not.
EXPRESSION_LABELS: tuple[str, ...] = (*EMOTIONS, "neutral")
NEUTRAL = EXPRESSION_LABELS[-1]
# The dominant "label" of an estimate without a face, in shares of time (never reported as neutral).
NO_FACE = "no_face"
# Valence of each label on [-1, 1], for a sentiment from expression probabilities (p @ VALENCE).
# From the valence axis of Russell's circumplex (1980) and where the FER literature places the basic
# emotions on it: happiness clearly positive, surprise slightly positive (it is mixed), the four
# negative emotions negative, neutral 0. An approximation, documented as such (docs/faces.md).
VALENCE: dict[str, float] = {"anger": -0.8, "happiness": 1.0, "disgust": -0.7, "fear": -0.6, "sadness": -0.7,
                             "surprise": 0.2, NEUTRAL: 0.0}
