"""Every test timeout is scaled from one variable, AFFECTSTREAM_TEST_TIMEOUT_SCALE (default 1.0).

Raise it on slow or loaded machines (CI sets 3): ``scaled(5)`` then waits 15 s.
"""

from __future__ import annotations

import os


def scale() -> float:
    return float(os.environ.get("AFFECTSTREAM_TEST_TIMEOUT_SCALE", "1.0"))


def scaled(seconds: float) -> float:
    return seconds * scale()
