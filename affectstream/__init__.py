"""affectstream: real-time emotion analysis for video streams.

``affectstream.client`` reads a running server's messages as typed records (``connect``,
``connect_sync``); it is imported on first use, so ``import affectstream`` stays light.
"""

from typing import Any

from affectstream._version import PROTOCOL_VERSION, __version__

__all__ = ["PROTOCOL_VERSION", "__version__", "client"]


def __getattr__(name: str) -> Any:
    if name == "client":
        import importlib

        return importlib.import_module("affectstream.client")
    raise AttributeError(f"module 'affectstream' has no attribute {name!r}")
