#!/usr/bin/env bash
# DMTP ingest versus SMTP accept, one gateway, same run, same durability.
#
#   benches/dmtp-ingest.sh [MESSAGES] [ROUNDS]      (defaults: 2000 messages, 3 rounds)
#   PERF=1 benches/dmtp-ingest.sh [MESSAGES] [ROUNDS]   also: one more DMTP round with B under
#                                        `perf record --call-graph dwarf`, and the top of its profile
#
# Two gateways on loopback, A (secure.test, 127.0.0.2) and B (other.test, 127.0.0.3), with their
# _dx records in a DNSSEC-signed Knot tree (../shared/testbed/mk-knot-tree.sh). A 10 KiB message
# is sealed by A's tools (`dimegate message seal`, alice@secure.test -> bob@other.test) for every
# transfer, each with its own Message-ID. Each round, alternating:
#   dmtp: examples/dmtp_load sends MESSAGES such transfers to B's DMTP port over 20 concurrent
#         sessions; B answers each only after the keyslot opened, the origin signatures verified
#         against A's org signet (from B's signet cache: one warm-up transfer fetched it through
#         DNSSEC and A's DMTP server, as a busy peer's would be) and the append was fsync'd.
#   smtp: smtp-source -s 20 -d pushes MESSAGES 10 KiB messages into B's SMTP port (fsync'd too).
# Prints msg/s per run, the gateway's CPU and the load client's CPU (dmtp_load or smtp-source,
# which share the machine's cores with the gateway), the medians and the ratio dmtp/smtp
# (goal >= 0.7).
# Needs root, knot (knotd, knotc, keymgr), postfix (smtp-source), bc, curl, GNU time; perf for PERF=1.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-2000}; ROUNDS=${2:-3}; SESSIONS=20
export PATH="$PATH:/usr/sbin"
TB=$(mktemp -d /tmp/dimegate-dmtp-bench.XXXXXX); chmod 755 "$TB"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -s "$TB/tree/knotd.pid" ] && kill "$(cat "$TB/tree/knotd.pid")" 2>/dev/null || true
    sleep 1; rm -rf "$TB"
}
trap cleanup EXIT

cargo build --release --quiet --bin dimegate --example dmtp_load
# DIMEGATE_BIN: another build of the gateway to measure (an A/B against the tree's own).
BIN=${DIMEGATE_BIN:-target/release/dimegate}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DMTP_PORT=$(port); SMTP_PORT=$(port); KNOT_PORT=$(port)

config() {  # config NAME DOMAIN IP ADMIN_PORT
    mkdir -p "$TB/$1"
    cat > "$TB/$1/dimegate.toml" <<EOC
data_dir = "$TB/$1/data"
[[domain]]
name = "$2"
[smtp]
listen = "$3:$SMTP_PORT"
hostname = "mx.$2"
max_message_size = "1MiB"
[admin]
listen = "127.0.0.1:$4"
[dmtp]
listen = "$3:$DMTP_PORT"
dx = ["dx.$2"]
connect_port = $DMTP_PORT
dual_mode_port = $SMTP_PORT
[dns]
servers = ["127.0.0.1:$KNOT_PORT"]
timeout = "2s"
trust_anchor = "$TB/tree/trust-anchor.keys"
EOC
}
A_ADMIN=$(port); B_ADMIN=$(port)
config a secure.test 127.0.0.2 "$A_ADMIN"
config b other.test 127.0.0.3 "$B_ADMIN"
$BIN users add alice@secure.test --config "$TB/a/dimegate.toml" >/dev/null
$BIN users add bob@other.test --config "$TB/b/dimegate.toml" >/dev/null
record() {  # record NAME DOMAIN -> the TXT rdata
    $BIN record "$2" --config "$TB/$1/dimegate.toml" | sed 's/^[^ ]* IN TXT //'
}
A_REC=$(record a secure.test); B_REC=$(record b other.test)
printf 'secure.test. _dx IN TXT %s\nother.test. _dx IN TXT %s\n' "$A_REC" "$B_REC" > "$TB/records.txt"
bash ../shared/testbed/mk-knot-tree.sh "$TB/tree" "$KNOT_PORT" "$TB/records.txt" >/dev/null

start() {  # start NAME ADMIN_PORT
    $BIN serve --config "$TB/$1/dimegate.toml" 2>"$TB/$1/log" &
    PIDS+=($!)
    until curl -sf "http://127.0.0.1:$2/readyz" >/dev/null 2>&1; do sleep 0.1; done
}
start a "$A_ADMIN"; start b "$B_ADMIN"
B_PID=${PIDS[1]}; HZ=$(getconf CLK_TCK)
b_cpu() { awk '{print $14+$15}' "/proc/$B_PID/stat"; }

# 10 KiB of text, sealed A -> B, a distinct message for every transfer: B de-duplicates what it
# has stored (a retry gets the first txid), so one message sent again and again would measure B
# answering retries, not ingest. seal DIR N: N messages into DIR.
AD=$TB/a/data/dime/secure.test; BD=$TB/b/data/dime/other.test
seal() {
    mkdir -p "$1"
    for i in $(seq "$2"); do
        {
            printf 'Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nFrom: <alice@secure.test>\r\nTo: <bob@other.test>\r\n'
            printf 'Message-ID: <%s.%06d@secure.test>\r\nSubject: bench\r\n\r\n' "$(basename "$1")" "$i"
            for _ in $(seq 160); do printf '%062d\r\n' 0; done
        } | $BIN message seal --author-key "$AD/users/alice/1.key" --author-signet "$AD/users/alice/1.signet" \
            --origin-key "$AD/org.key" --origin-signet "$AD/org.signet" \
            --destination-signet "$BD/org.signet" --recipient-signet "$BD/users/bob/1.signet" \
            > "$1/$(printf '%06d' "$i").dmime"
    done
}
fp() {  # fp CONFIG_OF DOMAIN -> crypto fingerprint of DOMAIN's org signet, as discovery finds it
    $BIN lookup "$2" --config "$TB/$1/dimegate.toml" | sed -n "s/^org signet: \([^ ]*\) .*/\1/p"
}
A_FP=$(fp b secure.test); B_FP=$(fp a other.test)
[ -n "$A_FP" ] && [ -n "$B_FP" ] || { echo "lookup failed" >&2; exit 1; }
PER=$(( (M + SESSIONS - 1) / SESSIONS ))
RUNS=$(( ROUNDS + ${PERF:+1} + 0 ))
seal "$TB/sealed/warm" "$SESSIONS"
for r in $(seq "$RUNS"); do seal "$TB/sealed/$r" $(( PER * SESSIONS )); done
load() {  # load N -> msg/s, from the next directory of sealed messages; client CPU in $TB/client.cpu
    local dir=$2
    /usr/bin/time -f '%U %S' -o "$TB/client.cpu" target/release/examples/dmtp_load "127.0.0.3:$DMTP_PORT" dx.other.test "$B_REC" \
        secure.test "$A_FP" other.test "$B_FP" "$dir" "$SESSIONS" "$1" |
        sed -n 's/.* rate \(.*\)/\1/p'
}
# Warm-up: B fetches A's org signet once (DNSSEC + SGNT to A); later transfers hit its cache.
load 1 "$TB/sealed/warm" >/dev/null

smtp_run() {
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$TB/client.cpu" smtp-source -s "$SESSIONS" -d -m "$M" -l 10240 -f a@client.test -t bob@other.test \
        "127.0.0.3:$SMTP_PORT" >/dev/null
    t1=$(date +%s.%N)
    echo "$M / ($t1 - $t0)" | bc -l
}
client_cpu() { awk '{print $1+$2}' "$TB/client.cpu"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
dmtp_rates=(); smtp_rates=()
for r in $(seq "$ROUNDS"); do
    dmtp_once() { local c0; c0=$(b_cpu); d=$(load "$PER" "$TB/sealed/$r"); dc=$(echo "($(b_cpu)-$c0)/$HZ" | bc -l); dl=$(client_cpu); }
    smtp_once() { local c0; c0=$(b_cpu); s=$(smtp_run); sc=$(echo "($(b_cpu)-$c0)/$HZ" | bc -l); sl=$(client_cpu); }
    if [ $((r % 2)) -eq 1 ]; then dmtp_once; smtp_once; else smtp_once; dmtp_once; fi
    # The gateway's CPU per run (user+sys) says whether a gap is work or waiting.
    printf "round %d: dmtp %7.1f msg/s (gateway cpu %.2fs, client %.2fs)   smtp %7.1f msg/s (gateway cpu %.2fs, client %.2fs)   load1 %s\n" \
        "$r" "$d" "$dc" "$dl" "$s" "$sc" "$sl" "$(cut -d' ' -f1 /proc/loadavg)"
    dmtp_rates+=("$d"); smtp_rates+=("$s")
done
D=$(printf '%s\n' "${dmtp_rates[@]}" | median); S=$(printf '%s\n' "${smtp_rates[@]}" | median)
printf "median: dmtp %.1f msg/s, smtp %.1f msg/s, ratio %.2fx (%d x 10 KiB, %d sessions, %d cores, load1 %s)\n" \
    "$D" "$S" "$(echo "$D / $S" | bc -l)" "$((PER * SESSIONS))" "$SESSIONS" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)"

# Every transfer must have been stored as new: a retry answered from the de-duplication table
# would make the DMTP side look cheaper or dearer than ingest is.
printf "B stored %d DMTP transfers as new, answered %d as retries\n" \
    "$(grep -c 'DMTP message stored' "$TB/b/log" || true)" "$(grep -c 'already queued' "$TB/b/log" || true)"

if [ -n "${PERF:-}" ]; then
    perf record --call-graph dwarf,32768 -F 499 -p "$B_PID" -o "$TB/b.perf" >/dev/null 2>&1 & PB=$!
    sleep 1
    d=$(load "$PER" "$TB/sealed/$RUNS")
    kill -INT "$PB"; wait "$PB" 2>/dev/null || true
    printf "profiled dmtp round: %.1f msg/s (under perf), %s samples at 499 Hz\n" "$d" \
        "$(perf report -i "$TB/b.perf" --stdio --sort dso -g none 2>/dev/null | awk '/^# Samples:/ {print $3}')"
    echo "--- gateway B: top self cost (perf report --no-children) ---"
    perf report -i "$TB/b.perf" --no-children --stdio --sort dso,symbol -g none 2>/dev/null |
        grep -E '^ +[0-9]' | head -30 || true
    echo "--- gateway B: top inclusive cost (perf report --children) ---"
    perf report -i "$TB/b.perf" --children --stdio --sort symbol -g none 2>/dev/null |
        grep -E '^ +[0-9]' | head -60 || true
    [ -z "${PERF_KEEP:-}" ] || cp "$TB/b.perf" "$PERF_KEEP"/
fi
