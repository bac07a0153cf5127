#!/usr/bin/env bash
# Service counts at account scale, for BENCHMARKS.md: the exporter at its DEFAULT settings
# (rate limit, job concurrency and polling as shipped; `auto` source) against moto with
# USERS (default 5000) users x 2 keys whose service-last-accessed jobs answer IN_PROGRESS
# to their first poll and complete on the second. Prints: start to ready; ready to the
# first aws_iam_user_services_* series; progress every minute; the whole first pass; and
# each key refresh's duration, the first one (alone) against those run during the pass.
# One run takes about as long as the pass (15 minutes at 5,000 users).
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-5000}
port=${PORT:-19888}

scripts/install-moto.sh
cargo build --release --locked
exe=target/release/iam-key-exporter

. scripts/moto.sh
start_moto --bench-users "$users" --bench-job-polls 1
echo "moto with $users users x 2 keys at $MOTO_ENDPOINT; jobs complete on their second poll"

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export IAM_KEY_EXPORTER_AWS__ENDPOINT_URL=$MOTO_ENDPOINT

log=$(mktemp)
now() { date +%s%N; }
seconds() { echo "scale=1; ($2 - $1) / 1000000000" | bc; }
scrape() { curl -sf "http://127.0.0.1:$port/metrics"; }
gauge() { awk -v name="$1" '$1 == name {print $2}'; }

start=$(now)
"$exe" --web.listen-address "127.0.0.1:$port" 3>&- 2> "$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
until curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; do sleep 0.05; done
ready=$(now)
echo "start to ready: $(seconds "$start" "$ready") s"
until scrape | grep -q '^aws_iam_user_services_granted{'; do sleep 0.05; done
first=$(now)
echo "ready to the first service count on /metrics: $(seconds "$ready" "$first") s"

while :; do
    text=$(scrape)
    done_at=$(gauge iam_key_exporter_service_access_last_run_timestamp_seconds <<<"$text")
    [ "${done_at:-0}" != 0 ] && break
    counted=$(grep -c '^aws_iam_user_services_granted{' <<<"$text" || true)
    echo "$(seconds "$start" "$(now)") s after start: $counted users counted"
    sleep 60
done
text=$(scrape)
echo "whole pass: $(gauge iam_key_exporter_service_access_duration_seconds <<<"$text") s for" \
    "$(grep -c '^aws_iam_user_services_granted{' <<<"$text") users;" \
    "jobs: $(grep '^iam_key_exporter_service_access_jobs_total{' <<<"$text" | tr '\n' ' ')"
echo "requests: $(grep '^iam_key_exporter_aws_requests_total{' <<<"$text" | tr '\n' ' ')"
echo "throttled: $(grep '^iam_key_exporter_aws_throttled_requests_total{' <<<"$text" | tr '\n' ' ')"
echo "key refreshes (the first ran alone; the others during the pass), duration in ms:"
grep 'inventory refreshed' "$log" | grep -o 'duration_ms=[0-9]*' | cut -d= -f2 | nl
