#!/usr/bin/env bash
# What a refresh costs once nothing changes, at 5,000 users x 2 keys in one account, with
# the change feed off (every refresh lists every user: the cost before the feed) and on
# (the default); then what a second service-access pass costs at 500 users when nobody
# was active since the first. Every setting at its default but the endpoint and the
# intervals, which only set how long the script waits: a refresh every minute instead of
# five, a service-access pass every three minutes instead of an hour. About 20 minutes
# after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-moto.sh
cargo build --release --locked
exe=target/release/iam-key-exporter
. scripts/moto.sh

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

port=$((20000 + RANDOM % 20000))
scrape() { curl -sf "http://127.0.0.1:$port/metrics"; }
value() { scrape | awk -v name="$1" '$1 == name {print $2}'; }
# requests OPERATIONS...: the requests counted so far for those operations, summed.
requests() {
    local pattern
    pattern=$(printf '|%s' "$@")
    scrape | { grep -E "^iam_key_exporter_aws_requests_total\{operation=\"(${pattern:1})\"\}" || true; } |
        awk '{s += $2} END {print s + 0}'
}
by_operation() {
    scrape | sed -n 's/^iam_key_exporter_aws_requests_total{operation="\([^"]*\)"} \(.*\)/\1 \2/p'
}
wait_refreshes() {
    local n=$1 last now
    last=$(value iam_key_exporter_last_refresh_success_timestamp_seconds)
    for _ in $(seq "$n"); do
        until now=$(value iam_key_exporter_last_refresh_success_timestamp_seconds) &&
            [ -n "$now" ] && [ "$now" != "$last" ]; do
            sleep 1
        done
        last=$now
    done
}
start_exporter() {
    "$exe" --web.listen-address "127.0.0.1:$port" --log.level warn &
    exporter=$!
    until curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null; do sleep 1; done
}
stop_exporter() { kill "$exporter"; wait "$exporter" 2>/dev/null || true; }
# The peer exits when the writer of its stdin (fd 3, see scripts/moto.sh) closes.
stop_moto() { exec 3>&-; sleep 1; }
trap 'kill ${exporter:-} 2>/dev/null || true' EXIT

key_operations=(ListUsers ListAccessKeys GetAccessKeyLastUsed GetUser GetCredentialReport
    GenerateCredentialReport GetAccountSummary LookupEvents ListUserTags)

start_moto --bench-users 5000
export IAM_KEY_EXPORTER_AWS__ENDPOINT_URL=$MOTO_ENDPOINT
export IAM_KEY_EXPORTER_REFRESH__INTERVAL=60s
export IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED=false
for feed in false true; do
    export IAM_KEY_EXPORTER_CHANGE_FEED__ENABLED=$feed
    start_exporter
    # The first refresh lists every user either way; measure the three after the next.
    wait_refreshes 1
    costs=()
    for round in 1 2 3; do
        before=$(requests "${key_operations[@]}")
        wait_refreshes 1
        after=$(requests "${key_operations[@]}")
        costs+=($((after - before)))
        echo "change_feed=$feed: refresh $((round + 2)): $((after - before)) IAM calls"
    done
    echo "change_feed=$feed: median $(printf '%s\n' "${costs[@]}" | sort -n | sed -n 2p) calls a refresh at 5,000 users"
    by_operation | sed "s/^/change_feed=$feed: so far: /"
    stop_exporter
done
stop_moto

start_moto --bench-users 500
export IAM_KEY_EXPORTER_AWS__ENDPOINT_URL=$MOTO_ENDPOINT
export IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED=true
export IAM_KEY_EXPORTER_SERVICE_ACCESS__INTERVAL=3m
export IAM_KEY_EXPORTER_CHANGE_FEED__ENABLED=true
start_exporter
jobs() { requests GenerateServiceLastAccessedDetails; }
last_run=0
for pass in 1 2; do
    # A pass has ended when the time of its end moves.
    until run=$(value iam_key_exporter_service_access_last_run_timestamp_seconds) &&
        [ -n "$run" ] && [ "$run" != 0 ] && [ "$run" != "$last_run" ]; do
        sleep 2
    done
    last_run=$run
    total=$(jobs)
    echo "service-access pass $pass at 500 users: $((total - ${previous:-0})) jobs," \
        "$(value iam_key_exporter_service_access_duration_seconds) s"
    previous=$total
done
stop_exporter
