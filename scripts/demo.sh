#!/usr/bin/env bash
# The second example of the README: a local IAM API (moto) seeded with the sample inventory
# of tests/peers/sample-inventory.json, and the exporter refreshing from it (the default
# `auto` source). No AWS account is used or needed. Open http://localhost:9887/metrics;
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-moto.sh
cargo build --release --locked

. scripts/moto.sh
start_moto --scenario tests/peers/sample-inventory.json
endpoint=$MOTO_ENDPOINT
echo "sample IAM API at $endpoint; exporter at http://localhost:9887/metrics"

# Dummy credentials for the local API; no shared config files, no instance metadata lookups.
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export IAM_KEY_EXPORTER_AWS__ENDPOINT_URL="$endpoint"
export IAM_KEY_EXPORTER_SERVICE_ACCESS__POLL_INTERVAL=200ms
exec target/release/iam-key-exporter "$@"
