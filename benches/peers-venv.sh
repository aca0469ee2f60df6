#!/usr/bin/env bash
# A peers' venv: `$PERCORE_CACHE/venv/NAME` made by BASE_PYTHON from REQUIREMENTS, rebuilt from scratch
# whenever that file changes. Prints the venv's python.
#   usage: benches/peers-venv.sh BASE_PYTHON [REQUIREMENTS NAME]
#   default: benches/requirements-peers.txt into venv/peers (GIL 3.13: uvicorn, Granian, Robyn, matplotlib);
#   scripts/dev bench also makes benches/requirements-peers-nogil.txt into venv/peers-nogil (3.13t).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base=$1
requirements=${2:-$root/benches/requirements-peers.txt}
venv="${PERCORE_CACHE:-$HOME/.cache/percore}/venv/${3:-peers}"
wanted=$(sha256sum "$requirements" | cut -c1-16)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$wanted" ]; then
    printf '\033[1mdev: installing the peers (%s) into %s\033[0m\n' "${requirements#"$root"/}" "$venv" >&2
    rm -rf "$venv"
    "$base" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
    echo "$wanted" > "$venv/.requirements"
fi
echo "$venv/bin/python"
