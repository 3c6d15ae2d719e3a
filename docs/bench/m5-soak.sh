#!/usr/bin/env bash
# The soak of docs/BENCHMARKS.md on the M5 example ("Soak on the M5 example"): a
# steady open-loop load for a long time on a database migrated by the challenge
# service's migration 001 and pre-initialized as its Initialize does it; does the
# flush keep up, does the WAL stay bounded, does the memory stay flat?
#
#   BIN=target/release/challenge-event-handler PGHOST=/tmp PGPORT=5432 PGUSER=postgres \
#   RATE=10000 DURATION=600s bash docs/bench/m5-soak.sh D
#
# One configuration of docs/bench/m5-rounds.sh (default D). Writes to OUT (default
# m5-soak/): bench.json (the load generator's report, with /metrics samples every
# SAMPLE seconds), samples.tsv (every SAMPLE seconds: elapsed s, the service's
# resident MB, the WAL's directories on disk in MB, the WAL's records in bytes, the
# buffered keys, flushes so far), and drain.txt (seconds from SIGTERM to exit).
# Needs psql, python3, curl, du, and a PostgreSQL the libpq variables reach.
set -euo pipefail
export PGOPTIONS="${PGOPTIONS:--c client_min_messages=warning}"
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release/challenge-event-handler}
RATE=${RATE:-10000}
DURATION=${DURATION:-600s}
SAMPLE=${SAMPLE:-30}
USERS=${USERS:-100000}
OUT=${OUT:-m5-soak}
GRPC_PORT=${GRPC_PORT:-16565}
METRICS_PORT=${METRICS_PORT:-18080}

. docs/bench/lib.sh

configuration "${1:-D}"
mkdir -p "$OUT"
db=m5soak
data=$(mktemp -d)
prepare_database "$db" "$conf"
start_service "$db" "$data"

metric() { # name: the sum of a metric's samples, from /metrics
  curl -fs "http://127.0.0.1:$METRICS_PORT/metrics" \
    | awk -v n="challenge_event_handler_$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'
}

sample() {
  local t0=$SECONDS
  printf 'elapsed_s\trss_mb\twal_disk_mb\twal_bytes\tbuffered_keys\tflushes\n' >"$OUT/samples.tsv"
  while kill -0 "$pid" 2>/dev/null; do
    sleep "$SAMPLE"
    kill -0 "$pid" 2>/dev/null || break
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$((SECONDS - t0))" \
      "$(awk '/VmRSS/ { print int($2 / 1024) }' "/proc/$pid/status")" \
      "$(du -sm "$data" | cut -f1)" "$(metric wal_bytes)" "$(metric buffer_size)" \
      "$(metric flush_duration_seconds_count)" >>"$OUT/samples.tsv"
  done
}
sample &
sampler=$!

"$BIN" bench --addr "http://127.0.0.1:$GRPC_PORT" --mix mixed --users "$USERS" \
  --stat-code "$stat" --concurrency 256 --connections 4 --rate "$RATE" --warmup 0s \
  --duration "$DURATION" --metrics-addr "127.0.0.1:$METRICS_PORT" \
  --sample-every "${SAMPLE}s" --json >"$OUT/bench.json" || true

t0=$(date +%s.%N)
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f} s, exit {sys.argv[3]}')" \
  "$t0" "$(date +%s.%N)" "$rc" >"$OUT/drain.txt"
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
cp "$data.log" "$OUT/service.log"
rm -rf "$data" "$data.log"
psql -q -d postgres -c "DROP DATABASE IF EXISTS $db"
cat "$OUT/drain.txt"
