#!/usr/bin/env bash
# Installs the real peers the tests run against, on a fresh Debian machine:
#   - moto (pinned in tests/peers/requirements.txt), in a virtualenv under target/peers/venv
#   - Prometheus and promtool, Alertmanager and systemd-analyze, from Debian's packages
#     prometheus, prometheus-alertmanager and systemd (their services kept from starting)
#   - curl and openssl, the TLS clients and certificate maker of tests/web.rs
#   - kubectl, kubernetes-validate and the Prometheus Operator's schemas for
#     tests/kubernetes.rs (scripts/install-kubernetes-peers.sh)
#   - podman (with netavark, the network backend it initialises), umoci and debootstrap:
#     tests/image.rs builds the container image, unpacks it and runs its entrypoint
# wrk is no test peer: scripts/bench.sh and scripts/loadtest.sh install it themselves.
# Safe to run again: what is already installed is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-moto.sh
venv=target/peers/venv

# Debian packages the tests run, by the command each provides.
packages=""
command -v promtool >/dev/null 2>&1 || packages="$packages prometheus"
command -v prometheus-alertmanager >/dev/null 2>&1 || packages="$packages prometheus-alertmanager"
command -v systemd-analyze >/dev/null 2>&1 || packages="$packages systemd"
command -v curl >/dev/null 2>&1 || packages="$packages curl"
command -v openssl >/dev/null 2>&1 || packages="$packages openssl"
command -v podman >/dev/null 2>&1 || packages="$packages podman netavark aardvark-dns"
command -v umoci >/dev/null 2>&1 || packages="$packages umoci"
command -v debootstrap >/dev/null 2>&1 || packages="$packages debootstrap"
if [ -n "$packages" ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing test peers: install Debian's$packages (as root)" >&2
        exit 1
    fi
    echo "installing Debian's$packages"
    # Package scripts must not start the Prometheus or Alertmanager services here.
    created_policy=no
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=yes
    fi
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
    if [ "$created_policy" = yes ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
scripts/install-kubernetes-peers.sh
echo "test peers ready: $("$venv/bin/python" -c 'import moto; print("moto", moto.__version__)'), $(promtool --version 2>&1 | head -1), $(prometheus-alertmanager --version 2>&1 | head -1), $(systemd-analyze --version | head -1), $(curl --version | head -1 | cut -d' ' -f1-2), $(openssl version | cut -d' ' -f1-2), $(podman --version), $(umoci --version), kubectl $(kubectl version --client -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | head -1), $("$venv/bin/pip" show kubernetes-validate | sed -n 's/^Version: /kubernetes-validate /p')"
