#!/usr/bin/env bash
# The bridge's rate: legacy SMTP -> gateway A (wrap: seal) -> DMTP -> gateway B (unwrap: open) ->
# smtp-sink, against a Postfix relay to the same sink; same machine, same run, alternating.
#
#   benches/dime-vs-postfix.sh [MESSAGES]      (default: 2000 messages per run)
#   PERF=1 benches/dime-vs-postfix.sh [M]      also: one more bridge run under `perf record --call-graph dwarf` on
#                                              A and B, and the top of each profile
#
# Set-up (as tests/bridge.rs): A serves secure.test on 127.0.0.2 (hosted user alice@secure.test,
# relays for 127.0.0.0/8), B serves other.test on 127.0.0.3 (trustful user bob@other.test, backend
# = the sink); both publish `_dx` in a DNSSEC-signed Knot tree (../shared/testbed/mk-knot-tree.sh),
# which both gateways validate from its trust anchor. Postfix (mk-postfix.sh, relay mode) has the
# sink as its relayhost.
#
# Each run: smtp-source -s 20 -d pushes MESSAGES 10 KiB messages from alice@secure.test to
# bob@other.test, Subject "dimegate bench" (D/MIME requires one); the clock runs from the first
# message sent until the sink holds the last one (the sink dumps each transaction into its own file, -d). Durability: A acknowledges after its
# fsync, B answers DMTP's 250 after its own, Postfix after cleanup's fsync of the queue file.
# One warm-up of 50 messages through each first (signet cache, Postfix processes); then three
# rounds of bridge, Postfix; the median of three of each is reported, with every run.
# Also per run: the CPU time A and B used (utime + stime from /proc), per message, and Postfix's
# (all its processes, exited ones included), per message.
# Peak RSS: VmHWM of A and of B over the whole run; for Postfix as in e2e-vs-postfix.sh (largest
# sum of VmRSS and of PSS over its processes while polling, and the largest single VmHWM).
# Needs root, postfix (smtp-source, smtp-sink), knot, bc, curl, perf for PERF=1.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-2000}
SIZE=10240
export PATH="$PATH:/usr/sbin"
TB=$(mktemp -d /tmp/dimegate-dvp.XXXXXX); chmod 755 "$TB"
A_PID=; B_PID=; SINK_PID=; PF_STARTED=; KNOT_PID=
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -d "$TB/a" ]; then
        for side in a b; do echo "--- gateway ${side^^} log (last lines) ---" >&2; grep -v -e "alice@secure.test" -e "DSN queued" "$TB/$side/log" | tail -n 25 >&2 || true; done
    fi
    [ -n "$A_PID" ] && kill "$A_PID" 2>/dev/null || true
    [ -n "$B_PID" ] && kill "$B_PID" 2>/dev/null || true
    [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
    [ -n "$KNOT_PID" ] && kill "$KNOT_PID" 2>/dev/null || true
    [ -n "$PF_STARTED" ] && postfix -c "$TB/pf/etc" stop >/dev/null 2>&1 || true
    sleep 1; rm -rf "$TB"
}
trap cleanup EXIT

cargo build --release --quiet
# DIMEGATE_BIN: another build of the gateway to measure (an A/B against the tree's own).
BIN=${DIMEGATE_BIN:-target/release/dimegate}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
A_SMTP=$(port); B_SMTP=$(port); A_ADMIN=$(port); B_ADMIN=$(port); DMTP_PORT=$(port)
PF_PORT=$(port); SINK_PORT=$(port); KNOT_PORT=$(port)

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
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
# Postfix's CPU in clock ticks: every live process's utime + stime, plus what the master has
# reaped of exited children (cutime + cstime), so a process that exits between two samples is
# still counted once.
pf_ticks() {
    local files=("/proc/$PF_MASTER/stat") p
    for p in $(ps -o pid= --ppid "$PF_MASTER"); do files+=("/proc/$p/stat"); done
    awk -v m="$PF_MASTER" '{t += $14 + $15} $1 == m {t += $16 + $17} END {print t + 0}' "${files[@]}" 2>/dev/null
}
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# run ADDR PORT COUNT [POLL_FN]: smtp-source into ADDR:PORT, wait until the sink holds COUNT.
# Sets E2E_S.
run() {
    local t0 t2 src n=$3
    start_sink
    t0=$(date +%s.%N)
    smtp-source -s 20 -d -m "$n" -l "$SIZE" -S "dimegate bench" -f alice@secure.test -t bob@other.test "$1:$2" >/dev/null &
    src=$!
    while kill -0 "$src" 2>/dev/null; do ${4:-true}; sleep 0.2; done
    wait "$src"
    local deadline=$(( $(date +%s) + 120 + n / 5 ))
    while [ "$(delivered)" -lt "$n" ]; do
        ${4:-true}
        [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out: $(delivered) of $n delivered" >&2; exit 1; }
        sleep 0.2
    done
    t2=$(date +%s.%N)
    E2E_S=$(echo "$t2 - $t0" | bc -l)
    stop_sink
}

# --- the two gateways and the DNSSEC tree --------------------------------------------------------
# gw_config NAME DOMAIN IP EXTRA: the side's configuration (DNS appended once the tree runs).
gw_config() {
    local dir=$TB/$1 smtp admin
    mkdir -p "$dir"
    if [ "$1" = a ]; then smtp=$A_SMTP; admin=$A_ADMIN; else smtp=$B_SMTP; admin=$B_ADMIN; fi
    cat > "$dir/dimegate.toml" <<EOC
data_dir = "$dir/data"
$4
[[domain]]
name = "$2"
[smtp]
listen = "$3:$smtp"
hostname = "mx.$2"
max_connections_per_ip = 100
[admin]
listen = "127.0.0.1:$admin"
[dmtp]
listen = "$3:$DMTP_PORT"
dx = ["dx.$2"]
connect_port = $DMTP_PORT
${5:-}
EOC
}
A_EXTRA="[relay]
networks = [\"127.0.0.0/8\"]"
B_EXTRA="[backend]
address = \"127.0.0.1:$SINK_PORT\"
starttls = \"off\""
gw_config a secure.test 127.0.0.2 "$A_EXTRA"
gw_config b other.test 127.0.0.3 "$B_EXTRA"
"$BIN" users add alice@secure.test --config "$TB/a/dimegate.toml" >/dev/null
"$BIN" users add bob@other.test --config "$TB/b/dimegate.toml" >/dev/null
record() {  # the `_dx` line of side $1 for mk-knot-tree.sh
    "$BIN" record "$2" --config "$TB/$1/dimegate.toml" | sed -n 's/.* IN TXT /'"$2"'. _dx IN TXT /p'
}
{ record a secure.test; record b other.test; } > "$TB/records.txt"
[ "$(wc -l < "$TB/records.txt")" -eq 2 ] || { echo "no _dx records:" >&2; cat "$TB/records.txt" >&2; exit 1; }
bash ../shared/testbed/mk-knot-tree.sh "$TB/knot" "$KNOT_PORT" "$TB/records.txt" >/dev/null
KNOT_PID=$(cat "$TB/knot/knotd.pid")
DNS="[dns]
servers = [\"127.0.0.1:$KNOT_PORT\"]
timeout = \"2s\"
trust_anchor = \"$TB/knot/trust-anchor.keys\""
gw_config a secure.test 127.0.0.2 "$A_EXTRA" "$DNS"
gw_config b other.test 127.0.0.3 "$B_EXTRA" "$DNS"
"$BIN" serve --config "$TB/a/dimegate.toml" 2>"$TB/a/log" & A_PID=$!
"$BIN" serve --config "$TB/b/dimegate.toml" 2>"$TB/b/log" & B_PID=$!
for p in "$A_ADMIN" "$B_ADMIN"; do
    until curl -sf "http://127.0.0.1:$p/readyz" >/dev/null 2>&1; do sleep 0.1; done
done

# --- Postfix (relay mode, relayhost = the sink) ---------------------------------------------------
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
LOADS=()
load_sample() { LOADS+=("$(cut -d' ' -f1 /proc/loadavg)"); }
dime_poll() { load_sample; }
pf_poll() { load_sample; sample_postfix; }

# --- warm-up, then three alternating rounds -------------------------------------------------------
run 127.0.0.2 "$A_SMTP" 50 dime_poll
run 127.0.0.1 "$PF_PORT" 50
DIME=(); PF=()
HZ=$(getconf CLK_TCK)
for round in 1 2 3; do
    a0=$(cpu_ticks "$A_PID"); b0=$(cpu_ticks "$B_PID")
    run 127.0.0.2 "$A_SMTP" "$M" dime_poll; DIME+=("$E2E_S")
    a1=$(cpu_ticks "$A_PID"); b1=$(cpu_ticks "$B_PID")
    p0=$(pf_ticks)
    run 127.0.0.1 "$PF_PORT" "$M" pf_poll; PF+=("$E2E_S")
    p1=$(pf_ticks)
    printf "round %d: bridge %.2f s (%.0f msg/s; CPU per message: A %.2f ms, B %.2f ms), postfix %.2f s (%.0f msg/s; CPU per message %.2f ms)\n" \
        "$round" "${DIME[-1]}" "$(echo "$M / ${DIME[-1]}" | bc -l)" \
        "$(echo "($a1 - $a0) * 1000 / $HZ / $M" | bc -l)" "$(echo "($b1 - $b0) * 1000 / $HZ / $M" | bc -l)" \
        "${PF[-1]}" "$(echo "$M / ${PF[-1]}" | bc -l)" "$(echo "($p1 - $p0) * 1000 / $HZ / $M" | bc -l)"
done
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
DIME_MED=$(median "${DIME[@]}"); PF_MED=$(median "${PF[@]}")
A_HWM=$(kib "$A_PID" VmHWM); B_HWM=$(kib "$B_PID" VmHWM)
metric() {  # metric ADMIN_PORT NAME_PREFIX: the sum of the samples whose line starts so
    curl -s "http://127.0.0.1:$1/metrics" | awk -v p="$2" 'index($0, p) == 1 {s += $NF} END {print s + 0}'
}
A_WRAP=$(metric "$A_ADMIN" 'dimegate_route_decisions_total{flow="wrap"}')
B_UNWRAP=$(metric "$B_ADMIN" 'dimegate_route_decisions_total{flow="unwrap"}')
LOAD_RANGE=$(printf '%s\n' "${LOADS[@]}" | sort -g | sed -n '1p;$p' | paste -sd- -)
PF_LEFT=$(postqueue -c "$TB/pf/etc" -p | tail -1)

rate() { echo "$M / $1" | bc -l; }
printf "bridge:   %d x 10 KiB end to end, median of 3: %.2f s = %6.0f msg/s; peak RSS A %d KiB, B %d KiB (VmHWM); wrapped by A %d, unwrapped by B %d (incl. warm-up)\n" \
    "$M" "$DIME_MED" "$(rate "$DIME_MED")" "$A_HWM" "$B_HWM" "$A_WRAP" "$B_UNWRAP"
printf "postfix:  %d x 10 KiB end to end, median of 3: %.2f s = %6.0f msg/s; peak RSS %d KiB summed over its processes (PSS %d KiB; largest process VmHWM %d KiB); queue after: %s\n" \
    "$M" "$PF_MED" "$(rate "$PF_MED")" "$PF_RSS_MAX" "$PF_PSS_MAX" "$PF_HWM_MAX" "$PF_LEFT"
printf "ratio (bridge / postfix, end to end, medians): %.2fx   (smtp-source -s 20 -d, %d cores, 1-min load during the runs %s, now %s)\n" \
    "$(echo "$PF_MED / $DIME_MED" | bc -l)" "$(nproc)" "$LOAD_RANGE" "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- where the bridge's time goes -----------------------------------------------------------------
if [ -n "${PERF:-}" ]; then
    perf record --call-graph dwarf,32768 -F 499 -p "$A_PID" -o "$TB/a.perf" >/dev/null 2>&1 & PA=$!
    perf record --call-graph dwarf,32768 -F 499 -p "$B_PID" -o "$TB/b.perf" >/dev/null 2>&1 & PB=$!
    sleep 1
    run 127.0.0.2 "$A_SMTP" "$M"
    printf "profiled run: %.2f s = %.0f msg/s (under perf)\n" "$E2E_S" "$(rate "$E2E_S")"
    kill -INT "$PA" "$PB"; wait "$PA" "$PB" 2>/dev/null || true
    for side in a b; do
        printf "gateway %s: %s samples at 499 Hz over the run (CPU seconds = samples / 499)\n" "${side^^}" \
            "$(perf report -i "$TB/$side.perf" --stdio --sort dso -g none 2>/dev/null | awk '/^# Samples:/ {print $3}')"
    done
    for side in a b; do
        echo "--- gateway ${side^^}: top self cost (perf report --no-children) ---"
        perf report -i "$TB/$side.perf" --no-children --stdio --sort dso,symbol -g none 2>/dev/null |
            grep -E '^ +[0-9]' | head -25 || true
        echo "--- gateway ${side^^}: top inclusive cost (perf report --children) ---"
        perf report -i "$TB/$side.perf" --children --stdio --sort symbol -g none 2>/dev/null |
            grep -E '^ +[0-9]' | grep -E 'dimegate::|rustls::|redb::|fsync|fdatasync|sys_write|tcp_' | head -40 || true
    done
    [ -z "${PERF_KEEP:-}" ] || cp "$TB/a.perf" "$TB/b.perf" "$PERF_KEEP"/
fi
