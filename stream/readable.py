"""Messages as one readable line each, for a person at a terminal (`listen`, and `run` on a terminal)."""

from __future__ import annotations

import json
from datetime import datetime

from affectstream.stream.messages import Wire


def format_message(message: Wire) -> str:
    """One readable line: time, stream, type, and the message's gist."""
    wall = message.get("wall")
    when = datetime.fromtimestamp(wall / 1000).strftime("%H:%M:%S.%f")[:-3] if isinstance(wall, int) else "--"
    kind = message.get("type")
    head = f"{when} {message.get('stream', '-'):<10} {kind:<8}"
    if kind == "estimate":
        if message.get("state") == "no_face":
            return f"{head} no face in view"
        scores = message.get("scores") or {}
        top = sorted(scores.items(), key=lambda item: -item[1])[:3]
        gist = " ".join(f"{label}={value:.2f}" for label, value in top)
        faces = message.get("faces")
        extra = f" faces={len(faces)}" if isinstance(faces, list) else ""
        state = f" ({message['state']})" if message.get("state") == "uncertain" else ""
        return f"{head} {gist} sentiment={message.get('sentiment', 0):+.2f}{extra}{state}"
    if kind == "event":
        value = message.get("value")
        shown = f" {value:.2f}" if isinstance(value, (int, float)) else ""
        face = f" face #{message['face']}" if isinstance(message.get("face"), int) else ""
        return f"{head} {message.get('kind')} {message.get('label') or ''}{shown}{face}".rstrip()
    if kind == "summary":
        return f"{head} window={message.get('window_s')}s dominant={message.get('dominant')}"
    if kind == "stats":
        latency = message.get("latency_ms") or {}
        return (f"{head} input={message.get('input_fps')}fps sampled={message.get('sampled_fps')}fps "
                f"drops={message.get('drops')} p50={latency.get('p50')}ms p99={latency.get('p99')}ms")
    if kind == "server_status":
        detail = f": {message['detail']}" if message.get("detail") else ""
        return (f"{head} event log {message.get('event_log')} backlog={message.get('backlog')} "
                f"lost={message.get('lost')}{detail}")
    if kind == "hello":
        return f"{head} {message.get('server')} streams={','.join(message.get('streams') or [])}"
    return f"{head} {json.dumps(message)}"
