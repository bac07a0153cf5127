#!/usr/bin/env bash
# Installs what tests/kubernetes.rs runs, next to the other test peers:
#   - kubectl (with its built-in kustomize) must already be on the machine: no Debian
#     package provides it here, so this only checks;
#   - kubernetes-validate, pinned in tests/peers/requirements.txt, in the moto virtualenv
#     target/peers/venv (scripts/install-moto.sh installs it);
#   - the Prometheus Operator's schemas (@kubernetes-models/prometheus-operator) and a YAML
#     parser for tests/kubernetes/validate-operator.mjs, pinned by
#     tests/kubernetes/package.json and package-lock.json, with `npm ci` into
#     target/peers/node (never into the source tree).
# Safe to run again, and quiet when everything is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null 2>&1; then
    echo "missing test peer kubectl (with kustomize): install kubectl 1.32 or later on PATH;" \
        "no Debian package provides it on this machine" >&2
    exit 1
fi

scripts/install-moto.sh
if [ ! -x target/peers/venv/bin/kubernetes-validate ]; then
    echo "target/peers/venv has no kubernetes-validate: is it pinned in tests/peers/requirements.txt?" >&2
    exit 1
fi

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "missing test peer $tool: install Node.js 20 or later with npm" >&2
        exit 1
    fi
done
node_dir=target/peers/node
# What the last install was made from: both files, as they were.
wanted=$(cat tests/kubernetes/package.json tests/kubernetes/package-lock.json)
if [ "$(cat "$node_dir/.installed-from" 2>/dev/null)" != "$wanted" ] || [ ! -d "$node_dir/node_modules" ]; then
    echo "installing the Prometheus Operator's schemas into $node_dir"
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp tests/kubernetes/package.json tests/kubernetes/package-lock.json "$node_dir/"
    # The models declare Node.js 22 in `engines` but run on Node.js 20, which the tests
    # prove (every schema passes and fails where it should); npm only warns about it.
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    printf '%s' "$wanted" > "$node_dir/.installed-from"
fi
