#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test: the test
# peers' own self-tests first (a broken peer would make the Rust tests lie), then cargo's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-peers.sh
python=target/peers/venv/bin/python
"$python" -m unittest tests/peers/test_fault_proxy.py tests/peers/test_moto_peer.py
cargo test --locked "$@"
