#!/usr/bin/env bash
# The load test behind BENCHMARKS.md's "/metrics over TLS with basic auth": the release
# exporter on the bundled sample report, and wrk with 32 connections for 10,000 requests
# (scripts/wrk-count.lua stops each of wrk's threads after its share), gzip accepted,
# twice in a row, over plain HTTP and over TLS with basic auth. Prints each batch's
# requests, errors, latency and throughput, and the exporter's memory (VmRSS and VmHWM of
# /proc/PID/status) before the load, after the first 10,000 and after the second, so that
# flat memory shows. RUNS (default 3) fresh exporters per mode, then the medians.
# Loopback only; every batch is bounded in requests and in time.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
requests=10000
connections=32
threads=2
port=19889

# wrk is a tool of the benchmarks, not of the tests: installed here, as in bench.sh.
if ! command -v wrk >/dev/null 2>&1; then
    apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked
exe=target/release/iam-key-exporter

work=$(mktemp -d)
daemon=
cleanup() {
    if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# A throwaway CA and a server certificate for 127.0.0.1; the password of the shipped
# example's hash (bcrypt at cost 10, what htpasswd -B makes by default).
(
    cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=loadtest-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >server.ext
    openssl x509 -req -days 1 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
        -extfile server.ext -out server.crt 2>/dev/null
)
hash=$(awk '$1 == "prometheus:" {print $2}' config/web-config.yml)
password=s3cret
cat >"$work/web.yml" <<EOF
tls_server_config:
  cert_file: server.crt
  key_file: server.key
basic_auth_users:
  prometheus: $hash
EOF
authorization="Basic $(printf 'prometheus:%s' "$password" | base64)"

median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# memory: "VmRSS VmHWM" of the daemon, in MB.
memory() { awk '/^VmRSS|^VmHWM/ {printf "%.1f ", $2/1024}' "/proc/$daemon/status"; }

# batch URL [HEADER]: one batch of $requests; prints "requests errors p50 p99 req/s".
batch() {
    local url=$1
    shift
    local wrk_pid
    : >"$work/finished"
    # -d only bounds a batch in time, should the count never be reached.
    wrk -t"$threads" -c"$connections" -d120s --latency -H 'Accept-Encoding: gzip' "$@" \
        -s scripts/wrk-count.lua "$url" -- $((requests / threads)) "$work/finished" >"$work/wrk.out" &
    wrk_pid=$!
    # wrk sleeps out its duration even when every thread has stopped; SIGINT ends the wait.
    while kill -0 "$wrk_pid" 2>/dev/null && [ "$(wc -l <"$work/finished")" -lt "$threads" ]; do
        sleep 0.02
    done
    kill -INT "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid"
    awk '
        function ms(t) { return t ~ /us$/ ? t / 1000 : t ~ /ms$/ ? t + 0 : t * 1000 }
        /^counted:/ {n=$2; rps=$7}
        /Non-2xx/ {bad+=$NF}
        /Socket errors/ {gsub(",", ""); bad+=$4+$6+$8+$10}
        /^ +50%/ {p50=ms($2)}
        /^ +99%/ {p99=ms($2)}
        END {print n, bad+0, p50, p99, rps}
    ' "$work/wrk.out"
}

results="$work/results"
for mode in plain tls; do
    for run in $(seq "$runs"); do
        args=(--config.file config/sample-report.toml --web.listen-address "127.0.0.1:$port" --log.level warn)
        if [ "$mode" = tls ]; then
            args+=(--web.config.file "$work/web.yml")
            url="https://127.0.0.1:$port/metrics"
            ready=(curl -sf --cacert "$work/ca.crt" -u "prometheus:$password" "https://127.0.0.1:$port/-/ready")
            extra=(-H "Authorization: $authorization")
        else
            url="http://127.0.0.1:$port/metrics"
            ready=(curl -sf "http://127.0.0.1:$port/-/ready")
            extra=()
        fi
        "$exe" "${args[@]}" 3>&- &
        daemon=$!
        for _ in $(seq 200); do "${ready[@]}" >/dev/null 2>&1 && break; sleep 0.05; done
        before=$(memory)
        read -r n1 e1 p50_1 p99_1 rps1 < <(batch "$url" "${extra[@]}")
        after1=$(memory)
        read -r n2 e2 p50_2 p99_2 rps2 < <(batch "$url" "${extra[@]}")
        after2=$(memory)
        kill "$daemon"
        wait "$daemon" || true
        daemon=
        echo "$mode run $run: RSS/HWM MB before $before| after 10,000 $after1| after 20,000 $after2"
        echo "  batch 1: $n1 requests, $e1 non-2xx or socket errors, p50 $p50_1 ms, p99 $p99_1 ms, $rps1 req/s"
        echo "  batch 2: $n2 requests, $e2 non-2xx or socket errors, p50 $p50_2 ms, p99 $p99_2 ms, $rps2 req/s"
        echo "$mode $before $after1 $after2 $rps1 $rps2 $p50_1 $p50_2 $p99_1 $p99_2" >>"$results"
    done
done

echo
echo "Medians over $runs runs (memory in MB, latency in ms):"
for mode in plain tls; do
    col() { awk -v m="$mode" -v c="$1" '$1 == m {print $c}' "$results" | median; }
    echo "$mode: RSS before $(col 2), after 10,000 $(col 4), after 20,000 $(col 6);" \
        "HWM after 20,000 $(col 7); req/s $(col 8) then $(col 9);" \
        "p50 $(col 10) then $(col 11); p99 $(col 12) then $(col 13)"
done
