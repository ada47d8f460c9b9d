"""Datasets, frame sampling, feature extraction, LSTM training, metrics and bundle export."""
