#!/usr/bin/env bash
# What reading an account's roles costs at 1,000 roles (the default quota of an account):
# IAM calls, wall time of the reading, and the exporter's peak memory with and without
# roles, from `--once` runs against moto seeded with 1,000 generated roles (40
# service-linked, 640 used, 480 tagged) and 10 users. Every setting at its default but
# the endpoint, `tags.keys = ["team"]` (so the role series carry a tag label) and no
# service-access jobs; then one `--once.service-access` run for the roles' jobs (each job
# IN_PROGRESS at its first poll, as IAM's take a few seconds).
# RUNS=5 by default; a few minutes after the release build.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-5}
scripts/install-moto.sh
cargo build --release --locked
exe=target/release/iam-key-exporter
. scripts/moto.sh

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED=false

start_moto --bench-roles 1000 --bench-users 10 --bench-job-polls 1
export IAM_KEY_EXPORTER_AWS__ENDPOINT_URL=$MOTO_ENDPOINT
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '[tags]\nkeys = ["team"]\n' > "$work/config.toml"

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for roles in true false; do
    : > "$work/ms" ; : > "$work/rss"
    for run in $(seq "$runs"); do
        IAM_KEY_EXPORTER_ROLES__ENABLED=$roles /usr/bin/time -f '%M' -o "$work/time" \
            "$exe" --config.file "$work/config.toml" --once > "$work/out" 2> "$work/log"
        rss=$(cat "$work/time")
        echo "$rss" >> "$work/rss"
        if [ "$roles" = true ]; then
            ms=$(sed -n 's/.*roles read.*duration_ms=\([0-9]*\).*/\1/p; s/.*"duration_ms":\([0-9]*\).*"roles read".*/\1/p' "$work/log" | head -1)
            echo "$ms" >> "$work/ms"
            calls=$(sed -n 's/^iam_key_exporter_aws_requests_total{operation="GetAccountAuthorizationDetails"} //p' "$work/out")
            series=$(grep -c '^aws_iam_role_' "$work/out" || true)
            echo "roles on, run $run: reading 1,000 roles ${ms} ms, ${calls} GetAccountAuthorizationDetails calls, ${series} role series, peak RSS ${rss} KB"
        else
            echo "roles off, run $run: peak RSS ${rss} KB"
        fi
    done
    if [ "$roles" = true ]; then
        echo "roles on: median reading $(median < "$work/ms") ms, median peak RSS $(median < "$work/rss") KB"
    else
        echo "roles off: median peak RSS $(median < "$work/rss") KB"
    fi
done
# One service-access pass over the 10 users' and 1,000 roles' jobs (service-linked roles
# left out by default), at the default 20 jobs at once.
IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED=true "$exe" --config.file "$work/config.toml" \
    --once --once.service-access > "$work/out" 2> "$work/log"
calls() { sed -n "s/^iam_key_exporter_aws_requests_total{operation=\"$1\"} //p" "$work/out"; }
echo "service-access pass: $(calls GenerateServiceLastAccessedDetails) jobs," \
    "$(calls GetServiceLastAccessedDetails) polls and pages," \
    "$(sed -n 's/^iam_key_exporter_service_access_duration_seconds //p' "$work/out") s," \
    "$(grep -c '^aws_iam_role_services_granted' "$work/out") roles counted," \
    "$(grep -c '^aws_iam_role_tracked_actions_granted' "$work/out") role tracked-action series"
# The peer exits when the writer of its stdin (fd 3, see scripts/moto.sh) closes.
exec 3>&-
