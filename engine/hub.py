"""Whether open_clip can fetch a pretrained tag, known before it asks the hub.

open_clip fetches a tag's weights with huggingface_hub. When the hub is out of reach and the file
was never downloaded, huggingface_hub retries five times with backoff for each file name open_clip
tries: about 50 s before the user learns that there is no network. ``build_clip`` therefore checks
first: a copy in huggingface_hub's cache is fine (huggingface_hub falls back to it at once); without
one, a hub whose host name does not resolve fails at once, unless a proxy is set (a proxy resolves
names itself).
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def hub_file_names(hf_hub: str) -> tuple[str, list[str]]:
    """The repo id and the file names open_clip tries for a tag's ``hf_hub`` entry, in its order
    (open_clip.pretrained.download_pretrained_from_hf, whose safetensors rule is private there)."""
    # The file a hub repo holds when the tag names none, and its safetensors twin, tried first.
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    # As open_clip splits it: "org/repo/" names the repo alone, "org/repo/file.bin" a file in it.
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = []
    if filename == HF_WEIGHTS_NAME:
        names.append(HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    return repo_id, [*names, filename]


def weights_in_cache(tag_config: dict[str, Any], cache_dir: Path | None = None) -> Path | None:
    """The tag's weights file if huggingface_hub's cache already holds it; None otherwise."""
    hf_hub = tag_config.get("hf_hub", "")
    if not hf_hub:
        return None  # a URL download: open_clip checks its own cache before any request
    from huggingface_hub import try_to_load_from_cache

    repo_id, names = hub_file_names(hf_hub)
    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def no_clip_in_cache(cache_dir: Path | None = None) -> bool:
    """True when huggingface_hub's cache certainly holds no CLIP weights (no model repo at all, or none
    whose name mentions clip): then nothing is to be found there without importing open_clip (2 s)."""
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = Path(constants.HF_HUB_CACHE)
    try:
        repos = [entry.name.lower() for entry in cache_dir.iterdir() if entry.name.startswith("models--")]
    except OSError:
        return True
    return not any("clip" in repo for repo in repos)


def hub_unreachable(endpoint: str | None = None) -> str | None:
    """Why the hub cannot be reached, when that is certain without trying; None when it may be."""
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    proxies = urllib.request.getproxies()
    if "https" in proxies or "all" in proxies:
        return None
    host = urlsplit(endpoint).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        return f"{host} does not resolve ({error})"
    return None
