#!/usr/bin/env bash
# The type check, exactly as CI runs it (scripts/test.sh calls this).
#
# pyproject maps stream/, engine/ and training/ into the `affectstream` package; mypy cannot follow
# a setuptools package-dir mapping (nor the editable install's import hook), so first-party imports
# would silently become Any. Instead mypy checks a tree of links laid out as the installed package
# (build/typecheck/affectstream/{*.py, stream, engine, training}), so every `affectstream.*` import
# resolves to our real modules. ignore_missing_imports covers third-party packages only (pyproject).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
tree="build/typecheck"
rm -rf "$tree"
mkdir -p "$tree/affectstream"
for file in affectstream/*.py; do
  ln -s "$root/$file" "$tree/affectstream/$(basename "$file")"
done
for part in stream engine training; do
  ln -s "$root/$part" "$tree/affectstream/$part"
done
mypy="${MYPY:-$root/.venv/bin/mypy}"
cd "$tree"
# --config-file: the project's settings; the cache stays in the repository's .mypy_cache.
exec "$mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" -p affectstream "$@"
