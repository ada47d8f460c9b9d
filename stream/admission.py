"""Who may talk to the server: one set of rules for the websocket, the video routes and the capture page.

Pure functions over what a request carries (its Host, Origin and Authorization headers and its query);
the server and the video routes turn a ``Refusal`` into an HTTP answer. The rules:

- Host must name us: localhost or a ``*.localhost`` name, an IP literal, the address we are bound to,
  or a name given with ``--allow-host``. A page on evil.example that re-resolves its own name to our
  address (DNS rebinding) sends ``Host: evil.example``, and its Origin matches that Host, so the
  Origin rule alone would let it in. ``/healthz`` is exempt (it says nothing but "ok").
- Token (when the server has one): ``?token=`` in the URL or ``Authorization: Bearer``; 401 otherwise.
- Origin (when a browser sends one): the page's own origin or one given with ``--allow-origin``; 403.
"""

from __future__ import annotations

import hmac
import http
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Refusal:
    status: http.HTTPStatus
    text: str  # one line for a person, ending in a newline


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or "0.0.0.0"-like wildcard: treat as reachable from outside


def host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case ("" if there is none)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else ""
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return name.rstrip(".")  # "box.lan." is "box.lan"


def host_allowed(host_header: str, bound: str, allowed: tuple[str, ...]) -> bool:
    """A request may name us as localhost, an IP address, the address we are bound to, or an allowed
    name (see the module docstring for why any other name is refused)."""
    name = host_name(host_header)
    if not name:
        return False
    if "*" in allowed or name in {h.lower() for h in allowed} or name == bound.lower() or name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.endswith(".localhost")  # RFC 6761: always loopback
    return True  # an IP literal cannot be rebound


@dataclass(frozen=True)
class Admission:
    """The server's rules, from its settings; each check returns None (admitted) or a Refusal."""

    bound_host: str
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    def check_host(self, headers: Mapping[str, str], path: str) -> Refusal | None:
        host = headers.get("Host", "")
        if path == "/healthz" or host_allowed(host, self.bound_host, self.allowed_hosts):
            return None
        name = host_name(host) or "(none)"
        return Refusal(http.HTTPStatus.FORBIDDEN,
                       f"Host {name} is not this server's name: start the server with --allow-host {name} if it is\n")

    def check_token(self, headers: Mapping[str, str], query: str) -> Refusal | None:
        if self.token is None:
            return None
        offered = parse_qs(query).get("token", [""])[-1]
        authorization = headers.get("Authorization", "")
        if authorization.lower().startswith("bearer "):
            offered = authorization[7:].strip()
        if hmac.compare_digest(offered.encode(), self.token.encode()):
            return None
        return Refusal(http.HTTPStatus.UNAUTHORIZED,
                       "missing or wrong token: add ?token=... to the URL or send 'Authorization: Bearer ...'\n")

    def check_origin(self, headers: Mapping[str, str]) -> Refusal | None:
        origin = headers.get("Origin")
        if origin is None:
            return None  # not a browser, or a same-origin GET: the token is what guards it
        host = headers.get("Host", "")
        allowed = self.allowed_origins
        if "*" in allowed or origin in allowed or origin in (f"http://{host}", f"https://{host}"):
            return None
        return Refusal(http.HTTPStatus.FORBIDDEN, f"Origin {origin} is not allowed: start the server with "
                                                  f"--allow-origin {origin}\n")

    def check_client(self, headers: Mapping[str, str], query: str) -> Refusal | None:
        """Token, then Origin: what the websocket and every mounted route need once the server has
        checked the Host of the request (every request, first)."""
        return self.check_token(headers, query) or self.check_origin(headers)
