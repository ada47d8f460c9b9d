"""Every command our messages and docstrings suggest (`affectstream ...` in backticks) exists, and so
do the options it names: each one's --help is run."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.timeouts import scaled

ROOT = Path(__file__).resolve().parents[1]
SUGGESTION = re.compile(r"`affectstream ([^`]+)`")
NESTED = {"bundle": ("create", "inspect"), "models": ("fetch", "list"), "streams": ("list", "add", "remove")}


def suggestions() -> list[str]:
    found: set[str] = set()
    for folder in ("affectstream", "stream", "engine", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            # Messages built over several lines are joined first (f-strings split across lines).
            text = re.sub(r'"\s*\n\s*f?"', "", path.read_text(encoding="utf-8"))
            found.update(match.group(1) for match in SUGGESTION.finditer(text))
    return sorted(found)


@cache
def help_text(command: tuple[str, ...]) -> str:
    done = subprocess.run([sys.executable, "-m", "affectstream", *command, "--help"], capture_output=True,
                          text=True, timeout=scaled(60))
    assert done.returncode == 0, f"affectstream {' '.join(command)} --help: {done.stderr}"
    return done.stdout


def test_there_are_suggestions_to_check() -> None:
    assert len(suggestions()) >= 10


@pytest.mark.parametrize("suggestion", suggestions())
def test_a_suggested_command_exists_with_its_options(suggestion: str) -> None:
    words = suggestion.replace("|", " ").split()
    command = [words[0]]
    nested = NESTED.get(words[0], ())
    if len(words) > 1 and words[1] in nested:
        command.append(words[1])
    text = help_text(tuple(command))
    for option in (word for word in words if word.startswith("--")):
        assert re.search(rf"{re.escape(option)}\b", text), f"{option} is not an option of affectstream {command}"
