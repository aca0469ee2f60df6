#!/usr/bin/env bash
# The peers' venv (uvicorn, Granian, Robyn, and matplotlib for the charts): a GIL CPython 3.13 venv at
# $PERCORE_CACHE/venv/peers built from benches/requirements-peers.txt, rebuilt from scratch whenever that
# file changes. Prints the venv's python.   usage: benches/peers-venv.sh BASE_PYTHON
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base=$1
peers="${PERCORE_CACHE:-$HOME/.cache/percore}/venv/peers"
wanted=$(sha256sum "$root/benches/requirements-peers.txt" | cut -c1-16)
if [ "$(cat "$peers/.requirements" 2>/dev/null)" != "$wanted" ]; then
    printf '\033[1mdev: installing the peers (benches/requirements-peers.txt) into %s\033[0m\n' "$peers" >&2
    rm -rf "$peers"
    "$base" -m venv "$peers" >&2
    "$peers/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$root/benches/requirements-peers.txt" >&2
    echo "$wanted" > "$peers/.requirements"
fi
echo "$peers/bin/python"
