# Sourced by scripts/demo.sh and scripts/bench.sh: starts the seeded moto IAM API of
# tests/peers/moto_server.py in the background and sets MOTO_ENDPOINT.
#
# The peer serves until its stdin reaches EOF. Its stdin is a FIFO whose only writer is
# this shell's fd 3: when this shell exits, however it exits, the peer exits too (a
# process exec'd from this shell inherits fd 3 and keeps the peer alive as long as it runs).

start_moto() {
    local venv=target/peers/venv seed=target/peers/seed-$$.json fifo=target/peers/stdin-$$
    rm -f "$fifo" "$seed"
    mkfifo "$fifo"
    exec 3<> "$fifo"
    "$venv/bin/python" tests/peers/moto_server.py --host 127.0.0.1 --port 0 "$@" \
        < "$fifo" 3>&- > "$seed" &
    rm -f "$fifo"
    for _ in $(seq 600); do [ -s "$seed" ] && break; sleep 0.1; done
    MOTO_ENDPOINT=$("$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint"])' "$seed")
    rm -f "$seed"
    export MOTO_ENDPOINT
}
