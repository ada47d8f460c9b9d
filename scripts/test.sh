#!/usr/bin/env bash
# Sets up everything the tests need, then runs the type checker, the linter and the test suite.
#   bash scripts/test.sh               # the whole suite
#   bash scripts/test.sh -k sessions   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
AFFECTSTREAM_EXTRAS="test,server,onnx,plots" bash scripts/setup.sh
.venv/bin/ruff check affectstream stream engine training benchmarks tests
bash scripts/typecheck.sh
.venv/bin/python -m pytest "$@"
