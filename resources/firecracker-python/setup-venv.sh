#!/usr/bin/env bash
# A Python virtual environment with the unmodified Firecracker client from
# PyPI (`firecracker-python`, pinned), for tests/tests/firecracker_python.rs:
# it drives `vmm run --api-sock` as it drives Firecracker. Idempotent: a
# venv that already has the pinned version is kept. Prints the venv's
# python on stdout.
#
# Usage: setup-venv.sh [VENV_DIR]   (default: .cache/firecracker-python)
set -euo pipefail
cd "$(dirname "$0")/../.."

version=0.0.5
venv=${1:-.cache/firecracker-python}
mkdir -p "$(dirname "$venv")"
python=$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")/bin/python

if [ -x "$python" ] && "$python" -m pip show firecracker-python 2>/dev/null | grep -qx "Version: $version"; then
    echo "$python"
    exit 0
fi

command -v python3 >/dev/null || { echo "setup-venv: python3 is missing (apt-get install python3 python3-venv)" >&2; exit 1; }
rm -rf "$venv"
python3 -m venv "$venv" >&2 || { echo "setup-venv: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
# The client's own pinned dependencies (docker, requests, requests-unixsocket,
# pyroute2, paramiko, ...) come with it: `import firecracker` imports them all.
"$python" -m pip install --quiet --disable-pip-version-check "firecracker-python==$version" >&2
echo "$python"
