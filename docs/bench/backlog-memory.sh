#!/usr/bin/env bash
# The memory of a backlog (docs/BENCHMARKS.md, "Memory per byte of backlog"): the
# service takes an open-loop load with no flush at all (FLUSH_INTERVAL=1h, no early
# flush), so everything stays in its buffer as it would while the database is
# unreachable; then SIGTERM makes it write the whole backlog in one final flush.
# Prints the WAL and buffer at the end of the load, the resident memory before the
# flush and its peak (VmHWM, read every 50 ms until the process exits).
#
#   BIN=target/release/challenge-event-handler PGHOST=/tmp PGPORT=5432 PGUSER=postgres \
#     USERS=300000 SECS=30s bash docs/bench/backlog-memory.sh D
#
# One configuration of docs/bench/m5-rounds.sh (default D); its database is migrated by
# the challenge service's 001 and pre-initialized with USERS players (so the flush
# reads and writes existing rows). Needs psql, python3, curl.
set -euo pipefail
export PGOPTIONS="${PGOPTIONS:--c client_min_messages=warning}"
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release/challenge-event-handler}
USERS=${USERS:-300000}
SECS=${SECS:-30s}
RATE=${RATE:-10000}
GRPC_PORT=${GRPC_PORT:-16565}
METRICS_PORT=${METRICS_PORT:-18080}

. docs/bench/lib.sh

configuration "${1:-D}"
db=backlogmem
data=$(mktemp -d)
prepare_database "$db" "$conf"
FLUSH_INTERVAL=1h BUFFER_MAX_KEYS=100000000 start_service "$db" "$data"
"$BIN" bench --addr "http://127.0.0.1:$GRPC_PORT" --mix mixed --users "$USERS" \
  --stat-code "$stat" --rate "$RATE" --warmup 0s --duration "$SECS" \
  --metrics-addr "127.0.0.1:$METRICS_PORT" --sample-every 10s --json \
  >"$data.report" 2>"$data.samples" || true
grep "after the load" "$data.samples" || true
before=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
t0=$(date +%s.%N)
kill -TERM "$pid"
peak=0
while kill -0 "$pid" 2>/dev/null; do
  hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$hwm" ] && peak=$hwm
  sleep 0.05
done
t1=$(date +%s.%N)
rows=$(psql -Atq -d "$db" -c "SELECT count(*) FROM user_goal_progress WHERE progress > 0")
python3 -c "import sys; b, p, t0, t1 = sys.argv[1:5]; print(f'resident before the flush {int(b) / 1024:.1f} MiB, peak {int(p) / 1024:.1f} MiB, drain {float(t1) - float(t0):.1f} s, rows changed {sys.argv[5]}')" \
  "$before" "$peak" "$t0" "$t1" "$rows"
rm -rf "$data" "$data.log" "$data.report" "$data.samples"
psql -q -d postgres -c "DROP DATABASE IF EXISTS $db"
