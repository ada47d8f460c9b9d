"""Hosts and ports as people write them in URLs: an IPv6 host in brackets (``[::1]:8554``), so that
a message or a printed address can be pasted back into a URL. One rule for every message that names
where something is (sources, the server's own address)."""

from __future__ import annotations

from urllib.parse import urlsplit

# The port a URL means when it names none, so that "no answer from cam.local:554" says which port.
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}


def url_host(host: str) -> str:
    """``host`` as it goes into a URL or before ``:port``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_port(host: str, port: int | None) -> str:
    """``host:port`` (IPv6 in brackets); the host alone when the port is unknown."""
    return f"{url_host(host)}:{port}" if port else url_host(host)


def uri_host(uri: str) -> str | None:
    """The host a URL names, without brackets (what a resolver takes); None when it names none."""
    return urlsplit(uri.strip()).hostname or None


def uri_host_port(uri: str) -> str:
    """Where a URL points, as ``host:port``: its port, or its scheme's default port."""
    parts = urlsplit(uri.strip())
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: show what was written
        return parts.netloc.rpartition("@")[2]
    return host_port(parts.hostname or "", port or DEFAULT_PORTS.get(parts.scheme.lower()))
