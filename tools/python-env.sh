#!/usr/bin/env bash
# Creates .venv (once, and again when tools/requirements.txt changes) with the
# pinned Python packages, and prints the interpreter's path.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv="$top/.venv"
stamp="$venv/.requirements"
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$top/tools/requirements.txt" "$stamp"; then
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$top/tools/requirements.txt" >&2
    cp "$top/tools/requirements.txt" "$stamp"
fi
echo "$venv/bin/python"
