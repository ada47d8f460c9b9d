"""affectstream: real-time emotion analysis for video streams."""

from affectstream._version import PROTOCOL_VERSION, __version__

__all__ = ["PROTOCOL_VERSION", "__version__"]
