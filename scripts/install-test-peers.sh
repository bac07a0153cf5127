#!/usr/bin/env bash
# Installs the real peers the tests run against, on a fresh Debian machine:
#   - moto (pinned in tests/peers/requirements.txt), in a virtualenv under target/peers/venv
#   - promtool, from Debian's prometheus package (its service is kept from starting)
#   - systemd-analyze, from Debian's systemd package
# Safe to run again: what is already installed is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-moto.sh
venv=target/peers/venv

if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "promtool is missing: install Debian's 'prometheus' package (as root) for the exposition lint test" >&2
        exit 1
    fi
    echo "installing Debian's prometheus package for promtool"
    # Package scripts must not start the Prometheus service on this machine.
    created_policy=no
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=yes
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [ "$created_policy" = yes ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "systemd-analyze is missing: install Debian's 'systemd' package (as root) for the unit tests" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
echo "test peers ready: $("$venv/bin/python" -c 'import moto; print("moto", moto.__version__)'), $(promtool --version 2>&1 | head -1), $(systemd-analyze --version | head -1)"
