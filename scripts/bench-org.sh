#!/usr/bin/env bash
# An organization at scale, for BENCHMARKS.md: the release exporter with Organizations
# discovery against moto seeded as an organization of N member accounts with USERS users
# each (2 keys per user; the management account holds USERS more), for N in ACCOUNTS
# (default "10 100 1000"). Every setting at its default except the endpoint,
# organizations.enabled = true and refresh.interval = 60s: the interval only sets how long
# the exporter waits between rounds, not what a round costs, so the run takes minutes
# instead of a quarter of an hour per round; the CPU share is computed against the
# default 5-minute interval.
#
# Per N it prints every round as it ends and then: the first round (start until every
# account has been refreshed once), the medians of ROUNDS (default 3) steady rounds (every
# round after the first whole list: duration, IAM calls in all and by operation, CPU),
# peak and steady RSS, the /metrics body plain and gzipped and its series, and what the
# exporter logged at WARN or above. A markdown table of all N comes last.
#
# SERVICE_ACCESS=off (the default here) disables the service-access pass: it starts
# after the first account's inventory and runs alongside the first round, so the rounds
# measured are the key refresh's alone. SERVICE_ACCESS=on keeps it at its default
# (enabled, hourly): the script then reports the pass (when it ended, its calls, the rounds
# it overlapped) and measures the steady rounds after it, which the next pass, an hour
# later, does not reach.
#
# Each N is bounded by TIMEOUT seconds (default 600 + 2 x N) after the exporter starts;
# what was measured by then is printed. About 24 minutes in all on 2 cores (5 at N = 10,
# 6 at 100, 12 at 1,000, where the first round alone takes 9).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${ACCOUNTS:-10 100 1000}
users=${USERS:-20}
rounds=${ROUNDS:-3}
service_access=${SERVICE_ACCESS:-off}
port=${PORT:-19889}
case $service_access in on | off) ;; *) echo "SERVICE_ACCESS is on or off" >&2; exit 2 ;; esac

scripts/install-moto.sh
cargo build --release --locked
exe=target/release/iam-key-exporter
echo "exporter built from $(git rev-parse --short HEAD)$(git status --porcelain -- src Cargo.toml Cargo.lock | awk '{f = f " " $2} END {if (f) print " with local changes to" f}')"
. scripts/moto.sh

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export IAM_KEY_EXPORTER_ORGANIZATIONS__ENABLED=true
export IAM_KEY_EXPORTER_REFRESH__INTERVAL=60s
if [ "$service_access" = off ]; then
    export IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED=false
fi

work=$(mktemp -d)
pid=
moto=
# Stops what this script started: the exporter, then moto (its stdin FIFO's writer is fd 3).
stop() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    pid=
    exec 3>&-
    if [ -n "$moto" ]; then wait "$moto" 2>/dev/null || true; fi
    moto=
}
trap 'stop; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

tick=$(getconf CLK_TCK)
now() { date +%s.%N; }
median() { sort -g | awk '{v[NR]=$1} END {if (NR) print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
scrape() { curl -sf "http://127.0.0.1:$port/metrics"; }
gauge() { awk -v name="$1" '$1 == name {print $2}' "$2"; }
cpu() { awk -v t="$tick" '{printf "%.2f", ($14 + $15) / t}' "/proc/$pid/stat"; }
status_kb() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status"; }
mb() { awk -v kb="$1" 'BEGIN {printf "%.1f", kb / 1024}'; }
# Requests by operation (one "operation count" line each) in scrape file $1.
requests() { sed -n 's/^iam_key_exporter_aws_requests_total{operation="\([^"]*\)"} /\1 /p' "$1" | sort; }
# Calls between two requests files, "operation delta" lines, and their sum as "total".
delta() {
    awk 'NR == FNR {before[$1] = $2; next} {d = $2 - before[$1]; if (d) {print $1, d; s += d}} END {print "total", s + 0}' "$1" "$2"
}
sum() { awk '{s += $2} END {print s + 0}'; }
# Accounts whose refresh has ended (either way) so far, from the exporter's log.
ended() { grep -c -e 'inventory refreshed' -e 'inventory refresh failed' "$log" || true; }

summary=()
for n in $sizes; do
    accounts=$((n + 1))
    echo
    echo "== $n member accounts + the management account, $users users x 2 keys each" \
        "($((accounts * users)) users, $((accounts * users * 2)) keys); service access $service_access"
    start_moto --bench-users "$users" --bench-accounts "$n"
    moto=$!
    export IAM_KEY_EXPORTER_AWS__ENDPOINT_URL=$MOTO_ENDPOINT
    log=$work/log-$n
    dir=$work/$n
    mkdir -p "$dir"
    timeout=${TIMEOUT:-$((600 + 2 * n))}

    started=$(now)
    "$exe" --web.listen-address "127.0.0.1:$port" 3>&- 2> "$log" &
    pid=$!
    deadline=$(($(date +%s) + timeout))
    until curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || break
        sleep 0.05
    done
    ready=$(now)

    # Round k has ended once every account's refresh of it has ended (the log) and the
    # round's own metrics are published: refresh_duration_seconds and the oldest success
    # change at every round's end.
    k=0 previous="" timed_out=no sa_round="" first_clean=""
    while :; do
        k=$((k + 1))
        until [ "$(ended)" -ge $((k * accounts)) ]; do
            if [ "$(date +%s)" -ge "$deadline" ]; then timed_out=yes; break 2; fi
            sleep 0.5
        done
        while :; do
            scrape | grep -E '^(iam_key_exporter_|process_)' > "$dir/scrape-$k" || true
            mark="$(gauge iam_key_exporter_refresh_duration_seconds "$dir/scrape-$k") $(gauge iam_key_exporter_last_refresh_success_timestamp_seconds "$dir/scrape-$k")"
            [ "$mark" != "$previous" ] && [ "$mark" != " " ] && break
            if [ "$(date +%s)" -ge "$deadline" ]; then timed_out=yes; break 2; fi
            sleep 0.2
        done
        previous=$mark
        at=$(now)
        cpu > "$dir/cpu-$k"
        status_kb VmRSS > "$dir/rss-$k"
        status_kb VmHWM > "$dir/hwm-$k"
        requests "$dir/scrape-$k" > "$dir/requests-$k"
        awk -v a="$started" -v b="$at" 'BEGIN {printf "%.1f\n", b - a}' > "$dir/at-$k"
        duration=$(gauge iam_key_exporter_refresh_duration_seconds "$dir/scrape-$k")
        calls=$(if [ "$k" -gt 1 ]; then delta "$dir/requests-$((k - 1))" "$dir/requests-$k" | awk '$1 == "total" {print $2}'; else sum < "$dir/requests-$k"; fi)
        cpu_round=$(if [ "$k" -gt 1 ]; then awk -v a="$(cat "$dir/cpu-$((k - 1))")" -v b="$(cat "$dir/cpu-$k")" 'BEGIN {printf "%.2f", b - a}'; else cat "$dir/cpu-$k"; fi)
        sa_done=$(gauge iam_key_exporter_service_access_last_run_timestamp_seconds "$dir/scrape-$k")
        echo "round $k ended $(cat "$dir/at-$k") s after start: duration $(printf '%.2f' "$duration") s," \
            "$calls calls, CPU $cpu_round s, VmRSS $(mb "$(cat "$dir/rss-$k")") MB," \
            "VmHWM $(mb "$(cat "$dir/hwm-$k")") MB, accounts $(gauge iam_key_exporter_accounts "$dir/scrape-$k")," \
            "refresh_success $(gauge iam_key_exporter_refresh_success "$dir/scrape-$k")" \
            "$([ "$service_access" = on ] && echo ", service-access pass done: ${sa_done:-?}")"
        if [ "$service_access" = on ]; then
            # The pass is over by this round's end; the next round is the first without it.
            if [ -z "$sa_round" ] && [ "${sa_done:-0}" != 0 ]; then sa_round=$k; fi
            [ -n "$sa_round" ] && first_clean=$((sa_round + 1))
        else
            first_clean=2
        fi
        if [ -n "$first_clean" ] && [ "$k" -ge $((first_clean + rounds - 1)) ]; then break; fi
    done
    [ "$timed_out" = yes ] && echo "TIMED OUT after $timeout s at round $k (TIMEOUT sets the bound)"
    last=$((k - 1))
    [ "$timed_out" = no ] && last=$k

    echo "start to ready: $(awk -v a="$started" -v b="$ready" 'BEGIN {printf "%.1f", b - a}') s"
    first_round=- first_duration=-
    if [ "$last" -ge 1 ]; then
        first_round=$(cat "$dir/at-1")
        first_duration=$(printf '%.1f' "$(gauge iam_key_exporter_refresh_duration_seconds "$dir/scrape-1")")
        echo "first round: every account refreshed once $first_round s after start" \
            "(refresh_duration_seconds $first_duration s), $(sum < "$dir/requests-1") calls:" \
            "$(tr '\n' ' ' < "$dir/requests-1")"
    fi

    # The steady rounds: first_clean .. last, each measured from the previous round's end.
    steady_durations=() steady_calls=() steady_cpu=() steady_rss=()
    : > "$dir/by-op"
    if [ -n "$first_clean" ]; then
        for r in $(seq "$first_clean" "$last"); do
            steady_durations+=("$(gauge iam_key_exporter_refresh_duration_seconds "$dir/scrape-$r")")
            delta "$dir/requests-$((r - 1))" "$dir/requests-$r" > "$dir/delta-$r"
            steady_calls+=("$(awk '$1 == "total" {print $2}' "$dir/delta-$r")")
            grep -v '^total ' "$dir/delta-$r" >> "$dir/by-op" || true
            steady_cpu+=("$(awk -v a="$(cat "$dir/cpu-$((r - 1))")" -v b="$(cat "$dir/cpu-$r")" 'BEGIN {printf "%.2f", b - a}')")
            steady_rss+=("$(cat "$dir/rss-$r")")
        done
    fi
    steady=${#steady_durations[@]}
    round=- calls=- cpu_round=- share=- rss=- by_op=-
    if [ "$steady" -gt 0 ]; then
        round=$(printf '%s\n' "${steady_durations[@]}" | median | xargs printf '%.2f')
        calls=$(printf '%s\n' "${steady_calls[@]}" | median)
        cpu_round=$(printf '%s\n' "${steady_cpu[@]}" | median | xargs printf '%.2f')
        share=$(awk -v c="$cpu_round" 'BEGIN {printf "%.2f", 100 * c / 300}')
        rss=$(mb "$(printf '%s\n' "${steady_rss[@]}" | median)")
        # An operation missing from a round made 0 calls in it.
        by_op=$(for op in $(cut -d' ' -f1 "$dir/by-op" | sort -u); do
            values=$(awk -v op="$op" '$1 == op {print $2}' "$dir/by-op")
            # An operation missing from a round made 0 calls in it.
            for _ in $(seq $((steady - $(wc -l <<<"$values")))); do values+=$'\n0'; done
            printf '%s %s, ' "$op" "$(median <<<"$values")"
        done | sed 's/, $//')
        echo "steady rounds $first_clean-$last (each from the previous round's end to its own):"
        echo "  durations ${steady_durations[*]} s; median $round s"
        echo "  IAM calls ${steady_calls[*]}; median $calls; by operation (median): $by_op"
        echo "  CPU ${steady_cpu[*]} s; median $cpu_round s a round = $share % of one core at the default 5-minute interval"
        echo "  VmRSS $(for v in "${steady_rss[@]}"; do printf '%s ' "$(mb "$v")"; done)MB; median $rss MB"
    fi

    hwm=$(mb "$(status_kb VmHWM)")
    echo "peak RSS (VmHWM) at the end: $hwm MB; after the first round: $([ "$last" -ge 1 ] && mb "$(cat "$dir/hwm-1")" || echo -) MB"
    scrape > "$dir/body"
    plain=$(wc -c < "$dir/body")
    series=$(grep -vc '^#' "$dir/body" || true)
    gzipped=$(curl -sf -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/metrics" | wc -c)
    keys=$(gauge iam_key_exporter_snapshot_access_keys "$dir/body")
    echo "/metrics: $plain bytes plain, $gzipped bytes gzip, $series series; snapshot_access_keys $keys"

    if [ "$service_access" = on ]; then
        if [ -n "$sa_round" ]; then
            gauge iam_key_exporter_service_access_duration_seconds "$dir/scrape-$sa_round" > "$dir/sa-duration"
            echo "service-access pass: started after the first account's inventory, took" \
                "$(printf '%.1f' "$(cat "$dir/sa-duration")") s, over by the end of round $sa_round" \
                "($(cat "$dir/at-$sa_round") s after start); it overlapped round$([ "$sa_round" -gt 1 ] && echo "s 1-")$sa_round"
            echo "  its calls: $(grep ServiceLastAccessed "$dir/requests-$sa_round" | tr '\n' ' ')"
            echo "  jobs: $(grep '^iam_key_exporter_service_access_jobs_total' "$dir/scrape-$sa_round" | tr '\n' ' ')"
            if [ "$steady" -gt 0 ] && [ "$sa_round" -gt 1 ]; then
                # CPU of rounds 2..sa_round less what as many steady rounds cost: the pass's share.
                awk -v a="$(cat "$dir/cpu-1")" -v b="$(cat "$dir/cpu-$sa_round")" -v r="$((sa_round - 1))" -v c="$cpu_round" \
                    'BEGIN {printf "  CPU from the end of round 1 to the end of round %d: %.2f s; less %d steady rounds: about %.2f s for the pass (beyond what it added to round 1)\n", 1 + r, b - a, r, b - a - r * c}'
            fi
        else
            echo "service-access pass: not over within the measurement (no steady round was taken)"
        fi
    fi
    echo "throttled: $(grep '^iam_key_exporter_aws_throttled_requests_total' "$dir/body" | sum)," \
        "failed calls: $(grep '^iam_key_exporter_aws_errors_total' "$dir/body" | sum)," \
        "refresh failures: $(gauge iam_key_exporter_refresh_failures_total "$dir/body")," \
        "rate-limit wait: $(gauge iam_key_exporter_aws_rate_limit_wait_seconds_total "$dir/body") s"
    problems=$(grep -c -E ' (WARN|ERROR) ' "$log" || true)
    echo "exporter log: $(wc -l < "$log") lines, $problems at WARN or ERROR"
    grep -E ' (WARN|ERROR) ' "$log" | sed -E 's/^[^ ]+ +//' | cut -c1-300 | sort | uniq -c | sort -rn | head -5 || true

    stop
    summary+=("| $n (+1) | $((accounts * users * 2)) | $first_round ($first_duration) | $round | $calls | $cpu_round | $share % | $hwm | $rss | $plain | $gzipped | $series | $steady |")
done

echo
echo "Medians of the steady rounds; refresh.interval = 60s (wall time only), CPU share against the default 5 minutes; service access $service_access."
echo
echo "| member accounts | keys | first round, s (refresh_duration) | steady round, s | IAM calls / round | CPU / round, s | CPU share at 5 min | peak RSS, MB | steady RSS, MB | /metrics plain, bytes | /metrics gzip, bytes | series | steady rounds |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
