#!/usr/bin/env bash
# The README's quick start: a local IAM API (moto) seeded with the sample inventory of
# tests/peers/sample-inventory.json, and the exporter refreshing from it. No AWS account
# is used or needed. Open http://localhost:9887/metrics; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-moto.sh
venv=target/peers/venv
cargo build --release --locked

# The peer prints one JSON line with its endpoint, then serves until its stdin reaches EOF.
# Its stdin is a FIFO whose only writer is fd 3, which the exporter inherits below: when
# the exporter exits, however it exits, the peer exits too.
fifo=target/peers/demo-stdin
rm -f "$fifo" target/peers/demo-seed.json
mkfifo "$fifo"
exec 3<> "$fifo"
"$venv/bin/python" tests/peers/moto_server.py --scenario tests/peers/sample-inventory.json \
    --host 127.0.0.1 --port 0 < "$fifo" 3>&- > target/peers/demo-seed.json &
rm -f "$fifo"
for _ in $(seq 300); do [ -s target/peers/demo-seed.json ] && break; sleep 0.1; done
endpoint=$("$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' target/peers/demo-seed.json)
echo "sample IAM API at $endpoint; exporter at http://localhost:9887/metrics"

# Dummy credentials for the local API; no shared config files, no instance metadata lookups.
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export IAM_KEY_EXPORTER_AWS__ENDPOINT_URL="$endpoint"
export IAM_KEY_EXPORTER_SERVICE_ACCESS__POLL_INTERVAL=200ms
exec target/release/iam-key-exporter "$@"
