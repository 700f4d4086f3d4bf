#!/usr/bin/env bash
# Accept rate: dimegate versus Postfix, same machine, same run, same durability.
#
#   benches/accept-vs-postfix.sh [MESSAGES] [ROUNDS]      (defaults: 10000 messages, 3 rounds)
#
# Pushes MESSAGES 1 KiB messages with `smtp-source -s 20 -d` into each server, alternating, and
# prints msg/s per run, the median of each and the ratio. Both acknowledge a message only once it is
# fsync'd: dimegate's group commit into redb, Postfix's cleanup writing the queue file (fsync is its
# default). Neither delivers during the run: dimegate has no backend, so its runner defers each
# message at once (that CPU is counted in its figure), and Postfix's messages are put on hold
# (access action HOLD), so the comparison is acceptance.
# Needs root, the postfix package (smtp-source), bc; uses ../shared/testbed/mk-postfix.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-10000}; ROUNDS=${2:-3}
export PATH="$PATH:/usr/sbin"
TB=$(mktemp -d /tmp/dimegate-bench.XXXXXX); chmod 755 "$TB"
cleanup() {
    [ -n "${GW_PID:-}" ] && kill "$GW_PID" 2>/dev/null || true
    postfix -c "$TB/pf/etc" stop >/dev/null 2>&1 || true
    sleep 1; rm -rf "$TB"
}
trap cleanup EXIT

cargo build --release --quiet
# DIMEGATE_BIN: another build of the gateway to measure (an A/B against the tree's own).
BIN=${DIMEGATE_BIN:-target/release/dimegate}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GW_PORT=$(port); ADMIN_PORT=$(port); PF_PORT=$(port)

start_gateway() {
    rm -rf "$TB/gw"; mkdir -p "$TB/gw"
    cat > "$TB/gw/dimegate.toml" <<EOC
data_dir = "$TB/gw/data"
[smtp]
listen = "127.0.0.1:$GW_PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[[domain]]
name = "example.test"
EOC
    "$BIN" serve --config "$TB/gw/dimegate.toml" 2>"$TB/gw/log" &
    GW_PID=$!
    until curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; do sleep 0.1; done
}
stop_gateway() { kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=; }
# The gateway's CPU time (user + system) in clock ticks: the rate moves with the machine's other
# work, the CPU per message much less, so an A/B of two builds reads this.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

sh ../shared/testbed/mk-postfix.sh "$TB/pf" "$PF_PORT" >/dev/null
# Accept, fsync, then hold: no delivery competes for the CPU during the measurement.
postconf -c "$TB/pf/etc" -e "smtpd_recipient_restrictions = check_client_access static:HOLD, permit_mynetworks, reject"
postfix -c "$TB/pf/etc" start >/dev/null 2>&1
until (exec 3<>/dev/tcp/127.0.0.1/$PF_PORT) 2>/dev/null; do sleep 0.2; done

run() {  # run NAME PORT -> prints msg/s
    local t0 t1
    t0=$(date +%s.%N)
    smtp-source -s 20 -d -m "$M" -l 1024 -f a@client.test -t b@example.test "127.0.0.1:$1" >/dev/null
    t1=$(date +%s.%N)
    echo "$M / ($t1 - $t0)" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

gw_rates=(); pf_rates=(); gw_cpu=()
for r in $(seq "$ROUNDS"); do
    start_gateway
    c0=$(ticks "$GW_PID"); g=$(run "$GW_PORT"); c1=$(ticks "$GW_PID"); stop_gateway
    cpu=$(echo "($c1 - $c0) * 1000 / $HZ / $M" | bc -l)
    p=$(run "$PF_PORT")
    postsuper -c "$TB/pf/etc" -d ALL hold >/dev/null 2>&1 || true
    printf "round %d: dimegate %8.0f msg/s (%.3f ms CPU/msg)   postfix %8.0f msg/s   load1 %s\n" "$r" "$g" "$cpu" "$p" "$(cut -d' ' -f1 /proc/loadavg)"
    gw_rates+=("$g"); pf_rates+=("$p"); gw_cpu+=("$cpu")
done
G=$(printf '%s\n' "${gw_rates[@]}" | median); C=$(printf '%s\n' "${gw_cpu[@]}" | median); P=$(printf '%s\n' "${pf_rates[@]}" | median)
printf "median: dimegate %.0f msg/s (%.3f ms CPU/msg), postfix %.0f msg/s, ratio %.2fx (%d x 1 KiB, smtp-source -s 20 -d, %d cores, load1 %s)\n" \
    "$G" "$C" "$P" "$(echo "$G / $P" | bc -l)" "$M" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)"
