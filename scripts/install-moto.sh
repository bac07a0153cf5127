#!/usr/bin/env bash
# Installs moto, the local IAM API of the tests and the demo, pinned by
# tests/peers/requirements.txt, into the virtualenv target/peers/venv. Does nothing when the
# virtualenv already holds exactly those requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/peers/venv
if ! cmp -s tests/peers/requirements.txt "$venv/.requirements" 2>/dev/null; then
    echo "installing moto into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
    cp tests/peers/requirements.txt "$venv/.requirements"
fi
