"""Shared fixtures: generated videos and the tiny-random model."""

from __future__ import annotations
