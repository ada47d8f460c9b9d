"""A real RTSP camera for tests: GStreamer's RTSP server serving a moving test pattern.

Run with Debian's interpreter (it has python3-gi and the RTSP server typelib)::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--path /test]

It prints ``READY rtsp://127.0.0.1:PORT/PATH`` on stdout once it listens, then serves until killed.
``--check`` only verifies that the GStreamer pieces are importable (exit 0) and exits.
"""

from __future__ import annotations

import argparse
import sys

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=10/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )"
)


def _import_gst() -> tuple[object, object, object]:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[attr-defined]

    return GLib, Gst, GstRtspServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--path", default="/test")
    parser.add_argument("--check", action="store_true", help="only check that GStreamer's RTSP server imports")
    args = parser.parse_args()
    try:
        glib, gst, rtsp = _import_gst()
    except (ImportError, ValueError) as exc:
        print(f"MISSING {exc}", flush=True)
        return 2
    gst.init(None)  # type: ignore[attr-defined]
    if args.check:
        ok = all(gst.ElementFactory.find(name) for name in ("videotestsrc", "x264enc", "rtph264pay"))  # type: ignore[attr-defined]
        print("OK" if ok else "MISSING gstreamer plugins (videotestsrc, x264enc, rtph264pay)", flush=True)
        return 0 if ok else 2
    server = rtsp.RTSPServer()  # type: ignore[attr-defined]
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = rtsp.RTSPMediaFactory()  # type: ignore[attr-defined]
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"FAILED cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 1
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    glib.MainLoop().run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
