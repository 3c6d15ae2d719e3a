#!/usr/bin/env bash
# The M5 bench of docs/BENCHMARKS.md ("M5 rules on the challenge service's table"):
# configurations run alternately, each on a new database migrated by the challenge
# service's own migration 001 and pre-initialized the way its Initialize does it.
#
#   BIN=target/release/challenge-event-handler BIN_A=<build before issue 17> \
#   PGHOST=/tmp PGPORT=5432 PGUSER=postgres ROUNDS=3 DURATION=20s \
#     bash docs/bench/m5-rounds.sh A2 B2 D E
#
# Configurations:
#   A2  BIN_A, config/challenges.json (type rules), --stat-code enemy-kills
#   B2  BIN,   config/challenges.json (type rules), --stat-code enemy-kills
#   D   BIN,   config/challenges.m5.json (the M5 example), --stat-code kills
#   E   BIN,   docs/bench/challenges.m5-same-goals.json (A's goals in M5 form), enemy-kills
#
# RATE=10000 sends in open loop at that many events/s instead of a closed loop.
# One JSON line per run goes to OUT (default m5-rounds.jsonl): events/s, errors,
# latency, and from /metrics the flushes, their rows and seconds, the WAL left.
# Needs psql, python3, curl, and a PostgreSQL the libpq variables reach.
set -euo pipefail
export PGOPTIONS="${PGOPTIONS:--c client_min_messages=warning}"
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release/challenge-event-handler}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20s}
USERS=${USERS:-100000}
OUT=${OUT:-m5-rounds.jsonl}
GRPC_PORT=${GRPC_PORT:-16565}
METRICS_PORT=${METRICS_PORT:-18080}
[ $# -gt 0 ] || set -- A2 B2 D E

. docs/bench/lib.sh

metric() { # name, /metrics text: the sum of a metric's samples
  awk -v n="challenge_event_handler_$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }' <<<"$2"
}

run_one() { # tag, configuration
  local tag=$1 cfg=$2 bin conf stat pid
  configuration "$cfg"
  local db="m5bench_${tag,,}" data
  data=$(mktemp -d)
  prepare_database "$db" "$conf"
  start_service "$db" "$data"
  bench_load "$stat" "$DURATION" 2s ${RATE:+--rate "$RATE"} >"$data.report" || true
  local metrics
  metrics=$(curl -fs "http://127.0.0.1:$METRICS_PORT/metrics")
  local t0=$SECONDS
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  python3 - "$tag" "$cfg" "$rc" "$((SECONDS - t0))" \
    "$(metric flush_duration_seconds_count "$metrics")" \
    "$(metric flush_duration_seconds_sum "$metrics")" \
    "$(metric db_batch_size_sum "$metrics")" \
    "$(metric wal_bytes "$metrics")" "$data.report" >>"$OUT" <<'EOF'
import json, sys
tag, cfg, rc, drain, flushes, flush_s, rows, wal, report = sys.argv[1:]
text = open(report).read()
run = next((r for r in json.loads(text)["runs"] if r["target"] == "service"), {}) if text.strip() else {}
print(json.dumps({
    "tag": tag, "config": cfg, "events_per_sec": run.get("per_sec"), "errors": run.get("errors"),
    "offered_per_sec": run.get("offered_per_sec"),
    "p50_ms": run.get("p50_ms"), "p99_ms": run.get("p99_ms"),
    "flushes": float(flushes), "flush_seconds": float(flush_s), "rows_flushed": float(rows),
    "rows_per_flush_second": float(rows) / float(flush_s) if float(flush_s) > 0 else None,
    "wal_left_bytes": float(wal), "drain_seconds": int(drain), "exit_code": int(rc),
}))
EOF
  tail -1 "$OUT"
  psql -q -d postgres -c "DROP DATABASE $db"
  rm -rf "$data" "$data.log" "$data.report"
}

for r in $(seq "$ROUNDS"); do
  for cfg in "$@"; do
    run_one "R$r$cfg" "$cfg"
  done
done
