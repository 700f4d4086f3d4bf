#!/usr/bin/env bash
# A queue that stays small: memory, disk, scrape, list, retry and restart with a large queue.
#
#   benches/queue-scale.sh [N] [LARGE] [LARGE_BYTES]    (defaults: 1000000, 200, 26214400)
#
# 1. N messages of 1 KiB (smtp-source -s 20 -l 1024) are queued while the backend is down, then
#    LARGE messages of LARGE_BYTES (smtp-source -s 4). Printed: RSS (peak while sampling every
#    0.2 s, and now), queue size on disk against the bytes acknowledged
#    (dimegate_smtp_accepted_bytes_total), each after the small and after the large batch: the
#    blocks allocated to queue.redb + queue.bodies (du), which is the disk used, and their length
#    (du -b), which is larger because redb grows its file by doubling it as a sparse file.
# 2. With the queue full: a /metrics scrape, `queue list --limit 100`, `queue retry --domain D`
#    (through the server's admin API, as an operator would), and a restart (SIGTERM, start, until
#    /readyz), each timed; and the SMTP accept latency of one client sending message after message
#    (each transaction timed: median, p99, max), idle for 3 s and then while the retry runs.
# 3. The backend (smtp-sink) comes up, `queue retry --domain D` makes everything due, and the queue
#    drains: drain rate (messages / seconds until dimegate_queue_messages is 0), peak RSS, and the
#    disk use left after the drain.
# Goals (issue 10): RSS under 128 MiB throughout, disk at most 1.25x, scrape under 50 ms, list under
# 200 ms, restart under 2 s, drain at least as fast as benches/e2e-vs-postfix.sh.
# Needs the postfix package (smtp-source, smtp-sink), curl, bc, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}; LARGE=${2:-200}; LARGE_BYTES=${3:-26214400}
DOMAIN=example.test
export PATH="$PATH:/usr/sbin"
TB=$(mktemp -d /tmp/dimegate-scale.XXXXXX); chmod 755 "$TB"
GW_PID=; SINK_PID=; SAMPLER_PID=
cleanup() {
    [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
    [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null || true
    [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
    sleep 1; rm -rf "$TB"
}
trap cleanup EXIT

cargo build --release --quiet
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GW_PORT=$(port); ADMIN_PORT=$(port); SINK_PORT=$(port)
mkdir -p "$TB/gw"
cat > "$TB/gw/dimegate.toml" <<EOC
data_dir = "$TB/gw/data"
[smtp]
listen = "127.0.0.1:$GW_PORT"
max_connections_per_ip = 100
max_message_size = "$(( LARGE_BYTES / 1048576 + 8 ))MiB"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[[domain]]
name = "$DOMAIN"
[backend]
address = "127.0.0.1:$SINK_PORT"
[queue]
max_messages = $(( N + LARGE + 100000 ))
EOC
# DIMEGATE_BIN: another build of the gateway to measure (an A/B against the tree's own).
DG=("${DIMEGATE_BIN:-target/release/dimegate}")
CONF=(--config "$TB/gw/dimegate.toml")

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
metric() {  # metric NAME -> sum of its samples
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m || index($1, m"{") == 1 {s += $NF} END {printf "%.0f\n", s + 0}'
}
disk() { du -s --block-size=1 "$TB/gw/data/queue.redb" "$TB/gw/data/queue.bodies" 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
length() { du -sb "$TB/gw/data/queue.redb" "$TB/gw/data/queue.bodies" 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
rss_now() { awk '$1 == "VmRSS:" {print $2}' "/proc/$GW_PID/status"; }

# RSS sampler: the gateway's VmRSS every 0.2 s, labelled with the phase named in $TB/phase.
echo start > "$TB/phase"
sampler() {
    while true; do
        [ -n "$(cat "$TB/pid" 2>/dev/null)" ] &&
            awk -v p="$(cat "$TB/phase")" '$1 == "VmRSS:" {print p, $2}' "/proc/$(cat "$TB/pid")/status" 2>/dev/null || true
        # (A sample missed while the gateway restarts must not end the sampler under set -e:
        # it did, and the drain had no RSS figures.)
        sleep 0.2
    done >> "$TB/rss"
}
peak() { awk -v p="$1" '$1 == p && $2 > m {m = $2} END {print m + 0}' "$TB/rss"; }
phase() { echo "$1" > "$TB/phase"; }

start_gateway() {
    "${DG[@]}" serve "${CONF[@]}" 2>>"$TB/gw/log" &
    GW_PID=$!; echo "$GW_PID" > "$TB/pid"
    until curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; do sleep 0.02; done
}
stop_gateway() { kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=; : > "$TB/pid"; }

sampler & SAMPLER_PID=$!
start_gateway

report_disk() {  # report_disk LABEL
    local d l b
    d=$(disk); l=$(length); b=$(metric dimegate_smtp_accepted_bytes_total)
    printf "%-22s queued %8d msgs, %12d bytes acknowledged, %12d bytes on disk = %.3fx (length %d = %.3fx); RSS now %d KiB\n" \
        "$1" "$(metric dimegate_queue_messages)" "$b" "$d" "$(echo "$d / $b" | bc -l)" "$l" "$(echo "$l / $b" | bc -l)" "$(rss_now)"
}

# --- 1. fill the queue with the backend down ---------------------------------------------------
phase small
t0=$(now)
smtp-source -s 20 -m "$N" -l 1024 -f a@client.test -t "b@$DOMAIN" "127.0.0.1:$GW_PORT" >/dev/null
t1=$(now)
printf "queued %d x 1 KiB in %.1f s = %.0f msg/s\n" "$N" "$(secs "$t0" "$t1")" "$(echo "$N / $(secs "$t0" "$t1")" | bc -l)"
report_disk "after the small:"
phase large
t0=$(now)
smtp-source -s 4 -m "$LARGE" -l "$LARGE_BYTES" -f a@client.test -t "b@$DOMAIN" "127.0.0.1:$GW_PORT" >/dev/null
t1=$(now)
printf "queued %d x %d bytes in %.1f s = %.1f MB/s\n" "$LARGE" "$LARGE_BYTES" "$(secs "$t0" "$t1")" \
    "$(echo "$LARGE * $LARGE_BYTES / 1000000 / $(secs "$t0" "$t1")" | bc -l)"
report_disk "after the large:"
printf "peak RSS while queueing: small %d KiB, large %d KiB\n" "$(peak small)" "$(peak large)"

# --- 2. operations on the full queue ------------------------------------------------------------
phase ops
SCRAPE=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$ADMIN_PORT/metrics")
SCRAPE2=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$ADMIN_PORT/metrics")
printf "/metrics scrape: %.1f ms, again %.1f ms\n" "$(echo "$SCRAPE * 1000" | bc -l)" "$(echo "$SCRAPE2 * 1000" | bc -l)"
t0=$(now); LINES=$("${DG[@]}" queue "${CONF[@]}" list --limit 100 | wc -l); t1=$(now)
printf "queue list --limit 100: %.1f ms (%d lines)\n" "$(echo "$(secs "$t0" "$t1") * 1000" | bc -l)" "$LINES"
# SMTP accept latency: one client sends 1 KiB messages back to back on one connection and times
# each transaction (MAIL to the 250 after DATA), first for a few seconds with the queue idle, then
# for as long as the retry runs; the retry holds the store's write lock one chunk at a time.
latency() {  # latency FILE: until $TB/stop-latency exists, or for $2 seconds
    python3 - "$GW_PORT" "$DOMAIN" "$1" "${2:-0}" "$TB/stop-latency" <<'EOP'
import os, smtplib, sys, time
port, domain, out, limit, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
body = "Subject: latency\r\n\r\n" + ("x" * 76 + "\r\n") * 13
s = smtplib.SMTP("127.0.0.1", port); s.ehlo("latency.test")
times, end = [], (time.monotonic() + limit if limit else None)
while not os.path.exists(stop) and (end is None or time.monotonic() < end):
    t = time.monotonic(); s.sendmail("a@client.test", ["b@" + domain], body); times.append(time.monotonic() - t)
s.quit()
with open(out, "w") as f:
    f.write("\n".join("%.6f" % x for x in times) + "\n")
EOP
}
lat_summary() {  # lat_summary FILE -> "n N, median M ms, p99 P ms, max X ms"
    sort -n "$1" | awk '{v[NR] = $1} END {if (NR == 0) {print "n 0"; exit}
        p = int(NR * 0.99); if (p < 1) p = 1
        printf "n %d, median %.1f ms, p99 %.1f ms, max %.1f ms", NR, 1000 * v[int((NR + 1) / 2)], 1000 * v[p], 1000 * v[NR]}'
}
latency "$TB/lat-idle" 3
rm -f "$TB/stop-latency"; latency "$TB/lat-retry" & LAT_PID=$!
t0=$(now); RETRIED=$("${DG[@]}" queue "${CONF[@]}" retry --domain "$DOMAIN"); t1=$(now)
touch "$TB/stop-latency"; wait "$LAT_PID"
printf "queue retry --domain %s: %.2f s (%s)\n" "$DOMAIN" "$(secs "$t0" "$t1")" "$RETRIED"
printf "SMTP accept latency, one client: idle %s; during the retry %s\n" "$(lat_summary "$TB/lat-idle")" "$(lat_summary "$TB/lat-retry")"
phase restart
t0=$(now); stop_gateway; t1=$(now); start_gateway; t2=$(now)
printf "restart: stop %.2f s, start until /readyz %.2f s; RSS after %d KiB\n" "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")" "$(rss_now)"
printf "peak RSS during operations %d KiB\n" "$(peak ops)"

# --- 3. the backend comes up; drain -------------------------------------------------------------
phase drain
TOTAL=$(metric dimegate_queue_messages)
t0=$(now)
smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>&1 &
SINK_PID=$!
until (exec 3<>"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null; do sleep 0.1; done
"${DG[@]}" queue "${CONF[@]}" retry --domain "$DOMAIN" >/dev/null
deadline=$(( $(date +%s) + 7200 ))
while [ "$(metric dimegate_queue_messages)" -gt 0 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "drain timed out: $(metric dimegate_queue_messages) left" >&2; exit 1; }
    sleep 0.5
done
t1=$(now)
printf "drained %d messages in %.1f s = %.0f msg/s; peak RSS while draining %d KiB\n" \
    "$TOTAL" "$(secs "$t0" "$t1")" "$(echo "$TOTAL / $(secs "$t0" "$t1")" | bc -l)" "$(peak drain)"
printf "after the drain: %d bytes on disk (queue.redb %d, queue.bodies %d); recipients delivered %s\n" "$(disk)" \
    "$(du -sb "$TB/gw/data/queue.redb" | cut -f1)" "$(du -sb "$TB/gw/data/queue.bodies" | cut -f1)" \
    "$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^dimegate_deliveries_total\{.*outcome="delivered"/ {s += $NF} END {print s + 0}')"
printf "peak RSS over the whole run: %d KiB (N=%d, %d x %d bytes, %d cores, load %s)\n" \
    "$(awk '$2 > m {m = $2} END {print m + 0}' "$TB/rss")" "$N" "$LARGE" "$LARGE_BYTES" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
