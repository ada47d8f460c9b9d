"""One rule for live versus file (stream/sources.py ``is_live``), for every scheme the sources take."""

from __future__ import annotations

import pytest

from affectstream.stream.sources import SourceKind, classify_uri, is_live


@pytest.mark.parametrize(("uri", "kind"), [
    ("rtsp://cam.local/stream", SourceKind.URL), ("rtsps://cam.local/stream", SourceKind.URL),
    ("rtmp://host/live/key", SourceKind.URL), ("rtmps://host/live/key", SourceKind.URL),
    ("srt://host:9000", SourceKind.URL), ("tcp://host:9000", SourceKind.URL), ("udp://239.0.0.1:1234", SourceKind.URL),
])
def test_streaming_protocols_are_live_before_and_after_opening(uri: str, kind: SourceKind) -> None:
    assert classify_uri(uri) is kind
    assert is_live(uri)
    # What they carry is live whatever it says of its length: when it stops, it reconnects.
    assert is_live(uri, duration_s=12.0, opened=True)
    assert is_live(f"  {uri.upper()}  ", duration_s=None, opened=True)


@pytest.mark.parametrize("uri", ["http://host/clip.mp4", "https://host/clip.mp4", "http://host/live/index.m3u8",
                                 "HTTPS://host/vod.m3u8"])
def test_http_is_live_only_while_unknown_or_without_an_end(uri: str) -> None:
    assert classify_uri(uri) is SourceKind.URL
    assert is_live(uri)  # before opening: it may be a camera that is not up yet
    assert is_live(uri, duration_s=None, opened=True)  # a live HLS playlist, an endless HTTP stream
    assert not is_live(uri, duration_s=6.0, opened=True)  # an mp4, a VOD playlist: read like a file
    assert is_live(uri, duration_s=0.0, opened=True)  # no real duration stated


@pytest.mark.parametrize("uri", ["0", "7", "/dev/video0", " 1 "])
def test_webcams_are_live(uri: str) -> None:
    assert classify_uri(uri) is SourceKind.WEBCAM
    assert is_live(uri) and is_live(uri, duration_s=10.0, opened=True)


@pytest.mark.parametrize("uri", ["talk.mp4", "/data/clip.avi", "file:///data/clip.avi", "dir/index.m3u8",
                                 " talk.mp4 "])
def test_files_are_not_live(uri: str) -> None:
    assert classify_uri(uri) is SourceKind.FILE
    assert not is_live(uri) and not is_live(uri, duration_s=None, opened=True)
