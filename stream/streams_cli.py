"""`affectstream streams list|add|remove --server URL`: a running `run`'s streams, through /api/streams.

    affectstream streams list --server http://127.0.0.1:8765
    affectstream streams add door rtsp://10.0.0.5/stream --rate 4 --server http://127.0.0.1:8765
    affectstream streams remove door --server http://127.0.0.1:8765

The token comes from ``--token`` or AFFECTSTREAM_TOKEN (sent as ``Authorization: Bearer``). What the
server refuses is printed as its own one-line reason, with exit status 2 (a request that cannot be
done: a bad name, a name in use, no such stream, a wrong token) or 4 (no server answered).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

from affectstream.errors import ConfigError, ExitStatus


def add_streams_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("streams", help="list, add or remove the streams of a running `run`")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every stream the run knows, running or ended")
    add = actions.add_parser("add", help="start a stream")
    add.add_argument("name", help="1-64 of A-Z a-z 0-9 . _ -")
    add.add_argument("uri", help="file, webcam index or /dev/videoN, rtsp:// rtmp:// http(s):// URL")
    add.add_argument("--rate", type=float, default=None, metavar="HZ",
                     help="frames per second analysed for this stream (0: every frame; default: the run's)")
    add.add_argument("--faces", choices=("on", "off"), default=None,
                     help="whether the face stage analyses this stream (default: the run's --faces)")
    remove = actions.add_parser("remove", help="stop a stream (it ends with stream_ended)")
    remove.add_argument("name")
    for sub in (listing, add, remove):
        sub.add_argument("--server", default="http://127.0.0.1:8765", metavar="URL",
                         help="the run's dashboard address (ws:// and host:port work too)")
        sub.add_argument("--token", default=None, help="the server's token (or AFFECTSTREAM_TOKEN)")
        sub.add_argument("--json", action="store_true", help="print the server's JSON answer as it is")


def api_base(server: str) -> str:
    """``http://host:port/api/streams`` from what a user types for the server."""
    text = server.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--server {server!r}: give the run's address, e.g. http://127.0.0.1:8765")
    return f"{scheme}://{parts.netloc}/api/streams"


def run_streams(args: argparse.Namespace, environment: dict[str, str]) -> int:
    base = api_base(args.server)
    token = args.token or environment.get("AFFECTSTREAM_TOKEN")
    if args.action == "list":
        status, body = _call("GET", base, None, token)
    elif args.action == "add":
        payload: dict[str, Any] = {"name": args.name, "uri": args.uri}
        if args.rate is not None:
            payload["rate"] = args.rate
        if args.faces is not None:
            payload["faces"] = args.faces == "on"
        status, body = _call("POST", base, payload, token)
    else:
        status, body = _call("DELETE", f"{base}/{quote(args.name, safe='')}", None, token)
    if status == 0:
        print(f"affectstream: no server at {args.server}: {body.get('error')}", file=sys.stderr)
        return ExitStatus.NOTHING
    if status >= 400:
        print(f"affectstream: {body.get('error') or f'HTTP {status}'}", file=sys.stderr)
        return ExitStatus.USAGE
    if args.json:
        print(json.dumps(body))
    elif args.action == "list":
        for entry in body.get("streams", []):
            state = "running" if entry["running"] else f"ended ({entry.get('ended') or 'ended'})"
            rate = "" if entry.get("rate") is None else f"  {entry['rate']:g} Hz"
            faces = "" if entry.get("faces") is None else f"  faces {'on' if entry['faces'] else 'off'}"
            print(f"{entry['name']}\t{state}\t{entry['uri']}{rate}{faces}")
    elif args.action == "add":
        print(f"{args.name}: started")
    else:
        print(f"{args.name}: stopping")
    return ExitStatus.OK


def _call(method: str, url: str, payload: dict[str, Any] | None, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _json(error.read())
    except (urllib.error.URLError, OSError) as error:
        return 0, {"error": str(getattr(error, "reason", error))}


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"error": raw.decode(errors="replace").strip()[:200]}
    return value if isinstance(value, dict) else {"error": str(value)}
