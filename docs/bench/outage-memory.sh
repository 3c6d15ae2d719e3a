#!/usr/bin/env bash
# Memory through a database outage and its drain (docs/BENCHMARKS.md, "Memory through
# an outage"): the service takes an open-loop load while its database refuses every
# connection (ALLOW_CONNECTIONS false, the service's sessions terminated), so every
# acknowledged update waits; then the database comes back and the backlog drains while
# the load goes on at the same rate. Prints, per run: the WAL and the keys in memory at
# the end of the outage, the resident memory then and its peak (VmHWM, read every
# 100 ms), and, from when the database came back, when the first flush was done and when
# the WAL was back under 1 MiB.
#
#   BIN=target/release/challenge-event-handler PGHOST=/tmp PGPORT=5432 PGUSER=postgres \
#     ROUNDS=2 bash docs/bench/outage-memory.sh 100000 1000000000
#
# Each argument is a MEMORY_MAX_KEYS to run with (alternating, ROUNDS times); a bound
# larger than the backlog holds it all in memory, as builds before the bound did. The
# database is configuration D of docs/bench/m5-rounds.sh (the M5 example on a table
# migrated by the challenge service's 001, USERS players pre-initialized). Needs psql,
# python3, curl.
set -euo pipefail
export PGOPTIONS="${PGOPTIONS:--c client_min_messages=warning}"
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release/challenge-event-handler}
USERS=${USERS:-300000}
OUTAGE=${OUTAGE:-40}
AFTER=${AFTER:-60}
RATE=${RATE:-5000}
ROUNDS=${ROUNDS:-2}
GRPC_PORT=${GRPC_PORT:-16565}
METRICS_PORT=${METRICS_PORT:-18080}

. docs/bench/lib.sh

# (awk reads to the end: an early exit would fail curl with SIGPIPE under pipefail.)
metric() {
  curl -fs "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk -v name="$1" '$1 == name && !found { print $2; found = 1 }'
}
hwm_kib() { awk '/VmHWM/ { print $2 }' "/proc/$pid/status"; }
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$pid/status"; }

configuration D
db=outagemem
for round in $(seq "$ROUNDS"); do
  for bound in "$@"; do
    data=$(mktemp -d)
    prepare_database "$db" "$conf"
    MEMORY_MAX_KEYS=$bound SHUTDOWN_GRACE=120s start_service "$db" "$data"
    psql -q -d postgres -c "ALTER DATABASE $db ALLOW_CONNECTIONS false" \
      -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$db'" >/dev/null
    # The load runs through the outage and AFTER seconds of drain.
    "$BIN" bench --addr "http://127.0.0.1:$GRPC_PORT" --mix mixed --users "$USERS" \
      --stat-code "$stat" --rate "$RATE" --warmup 0s --duration "$((OUTAGE + AFTER))s" \
      --json >"$data.report" 2>/dev/null &
    load=$!
    sleep "$OUTAGE"
    wal=$(metric challenge_event_handler_wal_bytes)
    keys=$(metric challenge_event_handler_buffer_size)
    spilled=$(metric challenge_event_handler_buffer_spilled)
    rss=$(rss_kib)
    last=$(metric challenge_event_handler_last_flush_success_timestamp_seconds)
    psql -q -d postgres -c "ALTER DATABASE $db ALLOW_CONNECTIONS true"
    first="" drained=""
    start=$(date +%s.%N)
    while kill -0 "$load" 2>/dev/null; do
      now=$(date +%s.%N)
      if [ -z "$first" ] && [ "$(metric challenge_event_handler_last_flush_success_timestamp_seconds)" != "$last" ]; then
        first=$now
      fi
      if [ -n "$first" ] && [ -z "$drained" ] && [ "$(metric challenge_event_handler_wal_bytes)" -lt 1048576 ]; then
        drained=$now
      fi
      peak=$(hwm_kib)
      sleep 0.1
    done
    wait "$load" || true
    errors=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sum(x['errors'] for x in r['runs']), 'of', sum(x['acknowledged'] + x['errors'] for x in r['runs']))" "$data.report" 2>/dev/null || echo '?')
    kill -TERM "$pid"
    wait "$pid" || true
    python3 - "$bound" "$wal" "$keys" "$spilled" "$rss" "$peak" "$start" "$first" "$drained" "$errors" <<'PY'
import sys
bound, wal, keys, spilled, rss, peak, start, first, drained, errors = sys.argv[1:]
drain = f"{float(drained) - float(start):.1f} s" if drained else "not within the run"
wait = f"{float(first) - float(start):.1f} s" if first else "-"
print(f"MEMORY_MAX_KEYS={bound}: at the end of the outage WAL {int(wal) / 2**20:.1f} MiB, "
      f"{keys} keys in memory, spilled {spilled}, resident {int(rss) / 1024:.0f} MiB; "
      f"peak {int(peak) / 1024:.0f} MiB; after the database came back: first flush done "
      f"{wait}, WAL under 1 MiB {drain}; bench errors {errors}")
PY
    rm -rf "$data" "$data.log" "$data.report"
  done
done
psql -q -d postgres -c "DROP DATABASE IF EXISTS $db"
