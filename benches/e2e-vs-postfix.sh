#!/usr/bin/env bash
# End-to-end rate: dimegate versus Postfix, same machine, same run, same durability.
#
#   benches/e2e-vs-postfix.sh [MESSAGES]      (default: 5000 messages)
#
# smtp-source -s 20 -d pushes MESSAGES 1 KiB messages into
#   a) dimegate, whose backend (the served domain example.test) is an smtp-sink, and
#   b) a Postfix instance in relay mode (mk-postfix.sh) whose relayhost is an smtp-sink.
# Both acknowledge a message only once it is fsync'd (dimegate's group commit into redb, Postfix's
# cleanup writing the queue file), then deliver it from their queue to the sink.
# The clock runs from the first message sent until the sink has the last one; the sink dumps each
# transaction into its own file (-d), so the file count is the delivered count. Also printed:
# the acceptance time alone (smtp-source's exit), the peak RSS of dimegate (VmHWM) and of Postfix
# (the largest sum of VmRSS over the master and its children seen while polling, which counts
# shared library pages once per process; the largest sum of PSS, which splits them; and the largest
# single-process VmHWM), and the load average.
# Needs root, the postfix package (smtp-source, smtp-sink), bc, curl; uses
# ../shared/testbed/mk-postfix.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-5000}
export PATH="$PATH:/usr/sbin"
TB=$(mktemp -d /tmp/dimegate-e2e.XXXXXX); chmod 755 "$TB"
GW_PID=; SINK_PID=; PF_STARTED=
cleanup() {
    [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null || true
    [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
    [ -n "$PF_STARTED" ] && postfix -c "$TB/pf/etc" stop >/dev/null 2>&1 || true
    sleep 1; rm -rf "$TB"
}
trap cleanup EXIT

cargo build --release --quiet
# DIMEGATE_BIN: another build of the gateway to measure (an A/B against the tree's own).
BIN=${DIMEGATE_BIN:-target/release/dimegate}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GW_PORT=$(port); ADMIN_PORT=$(port); PF_PORT=$(port); SINK_PORT=$(port)

start_sink() {  # a fresh sink with an empty dump directory
    rm -rf "$TB/dump"; mkdir -p "$TB/dump"; chmod 777 "$TB/dump"
    smtp-sink -u nobody -d "$TB/dump/%H%M%S." "127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>&1 &
    SINK_PID=$!
    until (exec 3<>"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null; do sleep 0.1; done
}
stop_sink() {
    kill "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true; SINK_PID=
    while (exec 3<>"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null; do sleep 0.1; done
}
delivered() { find "$TB/dump" -type f | wc -l; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Runs smtp-source against 127.0.0.1:$1 and waits for the sink to hold $M messages.
# Sets ACCEPT_S, E2E_S; calls the function named in $2 (if any) on every poll.
run() {
    local t0 t1 t2 src
    t0=$(date +%s.%N)
    smtp-source -s 20 -d -m "$M" -l 1024 -f a@client.test -t b@example.test "127.0.0.1:$1" >/dev/null &
    src=$!
    while kill -0 "$src" 2>/dev/null; do
        ${2:-true}; sleep 0.2
    done
    wait "$src"
    t1=$(date +%s.%N)
    local deadline=$(( $(date +%s) + 600 ))
    while [ "$(delivered)" -lt "$M" ]; do
        ${2:-true}
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out: $(delivered) of $M delivered" >&2; exit 1; }
        sleep 0.2
    done
    t2=$(date +%s.%N)
    ACCEPT_S=$(echo "$t1 - $t0" | bc -l); E2E_S=$(echo "$t2 - $t0" | bc -l)
}

# --- dimegate ---------------------------------------------------------------------------------
start_sink
mkdir -p "$TB/gw"
cat > "$TB/gw/dimegate.toml" <<EOC
data_dir = "$TB/gw/data"
[smtp]
listen = "127.0.0.1:$GW_PORT"
max_connections_per_ip = 100
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[[domain]]
name = "example.test"
[backend]
address = "127.0.0.1:$SINK_PORT"
EOC
"$BIN" serve --config "$TB/gw/dimegate.toml" 2>"$TB/gw/log" &
GW_PID=$!
until curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; do sleep 0.1; done
run "$GW_PORT"
GW_ACCEPT=$ACCEPT_S; GW_E2E=$E2E_S
GW_HWM=$(kib "$GW_PID" VmHWM)
GW_DELIVERED=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
    awk '/^dimegate_deliveries_total\{.*outcome="delivered"/ {s += $NF} END {print s + 0}')
GW_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=
stop_sink

# --- Postfix (relay mode, relayhost = the sink) -------------------------------------------------
start_sink
sh ../shared/testbed/mk-postfix.sh "$TB/pf" "$PF_PORT" "[127.0.0.1]:$SINK_PORT" >/dev/null
postfix -c "$TB/pf/etc" start >/dev/null 2>&1; PF_STARTED=1
until (exec 3<>"/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null; do sleep 0.2; done
PF_MASTER=$(tr -d ' ' < "$TB/pf/spool/pid/master.pid")
PF_RSS_MAX=0; PF_HWM_MAX=0; PF_PSS_MAX=0
sample_postfix() {  # one ps and one awk per poll, so the sampling itself costs little CPU
    local files=() p sum hwm pss
    for p in "$PF_MASTER" $(ps -o pid= --ppid "$PF_MASTER"); do
        files+=("/proc/$p/status" "/proc/$p/smaps_rollup")
    done
    read -r sum hwm pss < <(awk '$1 == "VmRSS:" {s += $2} $1 == "VmHWM:" && $2 > h {h = $2}
                                 $1 == "Pss:" {q += $2} END {print s + 0, h + 0, q + 0}' \
                                 "${files[@]}" 2>/dev/null || echo "0 0 0")
    [ "$sum" -gt "$PF_RSS_MAX" ] && PF_RSS_MAX=$sum
    [ "$hwm" -gt "$PF_HWM_MAX" ] && PF_HWM_MAX=$hwm
    [ "$pss" -gt "$PF_PSS_MAX" ] && PF_PSS_MAX=$pss
    return 0
}
run "$PF_PORT" sample_postfix
PF_ACCEPT=$ACCEPT_S; PF_E2E=$E2E_S
PF_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
PF_LEFT=$(postqueue -c "$TB/pf/etc" -p | tail -1)
stop_sink

rate() { echo "$M / $1" | bc -l; }
printf "dimegate: %d x 1 KiB end to end in %.2f s = %6.0f msg/s (accepted in %.2f s = %6.0f msg/s); peak RSS %d KiB (VmHWM); %s deliveries counted by its metrics; load %s\n" \
    "$M" "$GW_E2E" "$(rate "$GW_E2E")" "$GW_ACCEPT" "$(rate "$GW_ACCEPT")" "$GW_HWM" "$GW_DELIVERED" "$GW_LOAD"
printf "postfix:  %d x 1 KiB end to end in %.2f s = %6.0f msg/s (accepted in %.2f s = %6.0f msg/s); peak RSS %d KiB summed over its processes (shared pages counted in each; PSS %d KiB; largest process VmHWM %d KiB); queue after: %s; load %s\n" \
    "$M" "$PF_E2E" "$(rate "$PF_E2E")" "$PF_ACCEPT" "$(rate "$PF_ACCEPT")" "$PF_RSS_MAX" "$PF_PSS_MAX" "$PF_HWM_MAX" "$PF_LEFT" "$PF_LOAD"
printf "ratio (dimegate / postfix, end to end): %.2fx   (smtp-source -s 20 -d, %d cores, load %s)\n" \
    "$(echo "$PF_E2E / $GW_E2E" | bc -l)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
