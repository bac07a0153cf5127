#!/usr/bin/env bash
# The benchmarks behind BENCHMARKS.md, against moto seeded with 5,000 users x 2 keys (the
# account maximum). Prints every run and the medians. Takes about 5 minutes after the
# release build. RUNS (default 5) sets the runs per measurement.
#
# `scripts/bench.sh throttled` runs only the last section, an account behind a peer that
# throttles like IAM (about 5 minutes a run at 5,000 users); USERS (default 5000) sets its
# account's users there, e.g. `USERS=500 RUNS=1 scripts/bench.sh throttled`.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}
only=${1:-all}
case $only in
    all) users=5000 ;;
    throttled) users=${USERS:-5000} ;;
    *) echo "usage: $0 [throttled]" >&2; exit 2 ;;
esac

scripts/install-moto.sh
if ! command -v wrk >/dev/null 2>&1; then
    apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked --benches
exe=target/release/iam-key-exporter

. scripts/moto.sh
start_moto --bench-users "$users"
echo "moto with $users users x 2 keys at $MOTO_ENDPOINT"

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export IAM_KEY_EXPORTER_AWS__ENDPOINT_URL=$MOTO_ENDPOINT
export IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED=false
# moto is no IAM: no client-side rate limit, so the figures show the exporter's own cost.
export IAM_KEY_EXPORTER_AWS__REQUESTS_PER_SECOND=0

median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
metric() { grep "^$1 " | cut -d' ' -f2; }
# refresh_runs KIND N: N one-shot refreshes of source KIND; the median leaves out run 1,
# which may have generated the report.
refresh_runs() {
    local kind=$1 n=$2 durations=() out duration
    for i in $(seq "$n"); do
        out=$(IAM_KEY_EXPORTER_SOURCE__KIND=$kind "$exe" --once --log.level warn)
        duration=$(metric iam_key_exporter_refresh_duration_seconds <<<"$out")
        echo "$kind run $i: $(calls <<<"$out") calls, $duration s"
        [ "$i" -gt 1 ] && durations+=("$duration")
    done
    echo "$kind: median of runs 2-$n: $(printf '%s\n' "${durations[@]}" | median) s"
}
calls() { grep '^iam_key_exporter_aws_requests_total{' | grep -v GetCallerIdentity | awk '{s+=$2} END {print s}'; }

# An account behind a peer that throttles like IAM: tests/peers/fault_proxy.py in front of
# moto with a token bucket per account (20 requests a second, burst 20), answering
# over-rate requests with IAM's Throttling error without forwarding them. The exporter
# runs at its DEFAULT settings (no aws.* override: retries, timeouts and its own adaptive
# rate are what ships; `auto` source, about users + 3 calls). The best possible wall time
# is calls / 20 s, so wall / (calls / 20) shows the cost of the throttling: 1.0 is ideal.
bench_throttled() {
    local rate=20 burst=20 fifo=target/peers/proxy-stdin-$$ said=target/peers/proxy-$$.json
    local proxy control pid out ok start end wall stats forwarded throttled requests
    local walls=() ratios=()
    echo
    echo "== $users users behind a peer throttling like IAM ($rate requests/s per account, burst $burst), default settings (--once, auto source, STS included)"
    # As scripts/moto.sh does for moto: the proxy's stdin is a FIFO whose only writer is
    # fd 4 here, so it exits with this shell.
    rm -f "$fifo" "$said"
    mkfifo "$fifo"
    exec 4<> "$fifo"
    target/peers/venv/bin/python tests/peers/fault_proxy.py --upstream "$MOTO_ENDPOINT" \
        --throttle-rate "$rate" --throttle-burst "$burst" < "$fifo" 3>&- 4>&- > "$said" &
    pid=$!
    for _ in $(seq 100); do [ -s "$said" ] && break; sleep 0.1; done
    rm -f "$fifo"  # only once the proxy has opened it
    proxy=$(target/peers/venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' "$said")
    control=$(target/peers/venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["control"])' "$said")
    rm -f "$said"
    for i in $(seq "$runs"); do
        # Every run starts with full buckets and zeroed counters.
        curl -sf -X PUT -H 'Content-Type: application/json' \
            -d "{\"rate\": $rate, \"burst\": $burst}" "$control/throttle" >/dev/null
        curl -sf -X DELETE "$control/stats" >/dev/null
        start=$(date +%s%N)
        if out=$(env -u IAM_KEY_EXPORTER_AWS__REQUESTS_PER_SECOND \
            IAM_KEY_EXPORTER_AWS__ENDPOINT_URL="$proxy" IAM_KEY_EXPORTER_SOURCE__KIND=auto \
            "$exe" --once --log.level warn 4>&-); then ok=yes; else ok=no; fi
        end=$(date +%s%N)
        wall=$(printf '%.1f' "$(echo "scale=3; ($end - $start) / 1000000000" | bc)")
        stats=$(curl -sf "$control/stats")
        forwarded=$(target/peers/venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["forwarded"])' <<<"$stats")
        throttled=$(target/peers/venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["throttled"])' <<<"$stats")
        requests=$(grep '^iam_key_exporter_aws_requests_total{' <<<"$out" | awk '{s+=$2} END {print s+0}')
        # No series at all when no call failed: grep finds nothing, and that is 0.
        errors=$({ grep '^iam_key_exporter_aws_errors_total{' <<<"$out" || true; } | awk '{s+=$2} END {print s+0}')
        ratio=n/a
        [ "$forwarded" -gt 0 ] && ratio=$(printf '%.2f' "$(echo "scale=4; $wall * $rate / $forwarded" | bc)")
        echo "run $i: success $ok, wall $wall s, calls $forwarded (forwarded), throttled $throttled, requests counted by the exporter $requests, errors $errors, wall/(calls/$rate) $ratio"
        walls+=("$wall")
        ratios+=("$ratio")
    done
    echo "median: wall $(printf '%s\n' "${walls[@]}" | median) s, wall/(calls/$rate) $(printf '%.2f' "$(printf '%s\n' "${ratios[@]}" | median)")"
    exec 4>&-
    wait "$pid" || true
}
if [ "$only" = throttled ]; then
    bench_throttled
    exit 0
fi

echo
echo "== IAM calls and wall time per refresh (--once; STS excluded; the first run may generate the report)"
refresh_runs credential_report "$runs"
refresh_runs auto "$runs"

echo
echo "== Start to ready"
ready_time() {
    local port=$1; shift
    local start end pid
    start=$(date +%s%N)
    "$@" --web.listen-address "127.0.0.1:$port" --log.level warn 3>&- &
    pid=$!
    until curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; do sleep 0.005; done
    end=$(date +%s%N)
    kill "$pid"; wait "$pid" || true
    echo "scale=3; ($end - $start) / 1000000000" | bc
}
for kind in credential_report auto; do
    times=()
    for i in $(seq "$runs"); do
        times+=("$(IAM_KEY_EXPORTER_SOURCE__KIND=$kind ready_time 19887 "$exe")")
    done
    echo "$kind: ${times[*]} s; median $(printf '%s\n' "${times[@]}" | median) s"
done
times=()
for i in $(seq "$runs"); do
    times+=("$(ready_time 19887 "$exe" --config.file config/sample-report.toml)")
done
echo "credential_report_file (sample): ${times[*]} s; median $(printf '%s\n' "${times[@]}" | median) s"

echo
echo "== /metrics with 10,000 keys under wrk, 32 connections (auto source)"
IAM_KEY_EXPORTER_SOURCE__KIND=auto "$exe" --web.listen-address 127.0.0.1:19888 --log.level warn 3>&- &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
until curl -sf http://127.0.0.1:19888/-/ready >/dev/null 2>&1; do sleep 0.05; done
keys=$(curl -s http://127.0.0.1:19888/metrics | metric iam_key_exporter_snapshot_access_keys)
echo "keys in the snapshot: $keys; body: $(curl -s http://127.0.0.1:19888/metrics | wc -c) bytes plain, $(curl -s -H 'Accept-Encoding: gzip' http://127.0.0.1:19888/metrics | wc -c) bytes gzip"
echo "after the first refresh: $(grep -E 'VmHWM|VmRSS' /proc/$daemon/status | tr -s ' \n' ' ')"
for encoding in gzip identity; do
    for i in $(seq 3); do
        wrk -t2 -c32 -d10s --latency -H "Accept-Encoding: $encoding" http://127.0.0.1:19888/metrics \
            | awk -v e="$encoding" -v i="$i" '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /^Requests\/sec/ {rps=$2} /Non-2xx|Socket errors/ {err=err" "$0} END {print e" run "i": p50 "p50", p99 "p99", "rps" req/s"err}'
    done
done
echo "after the load: $(grep -E 'VmHWM|VmRSS' /proc/$daemon/status | tr -s ' \n' ' ')"
kill "$daemon"
wait "$daemon" || true

echo
echo "== Credential report parsing (criterion)"
cargo bench -q --locked --bench report_parse 2>&1 | grep -E "time:|parse credential"

echo
echo "== Snapshot rendering, 10,000 keys (criterion)"
cargo bench -q --locked --bench snapshot_render 2>&1 | grep -E "time:|^render snapshot"

echo
echo "== The API source: 15,000 calls a run"
# 15,000 calls a run, about 100 s against moto: three runs.
refresh_runs api 3

echo
echo "== API source against a plain concurrent client (same calls, same server)"
for concurrency in 4 16; do
    plain=()
    exporter=()
    for i in $(seq 2); do
        plain+=("$(cargo bench -q --locked --bench plain_client -- "$MOTO_ENDPOINT" "$concurrency" | awk '{print $(NF-1)}')")
        out=$(IAM_KEY_EXPORTER_SOURCE__KIND=api IAM_KEY_EXPORTER_REFRESH__CONCURRENCY=$concurrency "$exe" --once --log.level warn)
        exporter+=("$(metric iam_key_exporter_refresh_duration_seconds <<<"$out")")
    done
    echo "concurrency $concurrency: plain client median $(printf '%s\n' "${plain[@]}" | median) s, exporter median $(printf '%s\n' "${exporter[@]}" | median) s"
done

bench_throttled
