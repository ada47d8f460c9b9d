"""The type check really checks across our own modules (scripts/typecheck.sh, as CI runs it).

pyproject maps stream/, engine/ and training/ into ``affectstream``; a checker that cannot follow the
mapping turns every first-party import into ``Any`` and passes any call. The canary below makes a
wrong call between two of our modules and must fail the check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MYPY = Path(sys.executable).with_name("mypy")

CANARY = '''from affectstream.stream.ring import RingBuffer

reveal_type(RingBuffer)
RingBuffer("not", "valid", "args", 5, 6)
'''


@pytest.mark.skipif(not MYPY.exists(), reason="mypy is not installed in this environment (the [test] extra)")
def test_a_wrong_call_between_our_modules_fails_the_type_check() -> None:
    canary = ROOT / "stream" / f"_typecheck_canary_{os.getpid()}.py"
    canary.write_text(CANARY)
    try:
        result = subprocess.run(["bash", str(ROOT / "scripts" / "typecheck.sh")], cwd=ROOT, capture_output=True,
                                text=True, timeout=600, env={**os.environ, "MYPY": str(MYPY)})
    finally:
        canary.unlink()
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    lines = [line for line in out.splitlines() if canary.stem in line]
    # The import resolved to the real class (not Any) ...
    assert any("Revealed type" in line and "capacity: int" in line and "affectstream.stream.ring.RingBuffer" in line for line in lines), out
    # ... so the wrong call is an error, and nothing else in the tree is.
    assert any('Too many arguments for "RingBuffer"' in line for line in lines), out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert errors and all(canary.stem in line for line in errors), out
