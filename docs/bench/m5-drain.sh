#!/usr/bin/env bash
# What a flush costs, without the load competing with it (docs/BENCHMARKS.md,
# "Where a flush's time goes"): the service takes a fixed open-loop load with
# no flush at all (FLUSH_INTERVAL=1h, no early flush), then gets SIGTERM and
# drains the WAL into PostgreSQL in one final flush, alone on the machine.
# The drain's wall time and PostgreSQL's statement time (pg_stat_statements)
# are the flush's cost for exactly that load.
#
#   BIN_A=<build before issue 17> PGHOST=/tmp PGPORT=5432 PGUSER=postgres ROUNDS=3 \
#     bash docs/bench/m5-drain.sh A2 B2 D E
#
# Configurations as in docs/bench/m5-rounds.sh (A2 needs BIN_A). RATE events/s
# for SECS seconds (default 5,000 for 10 s: 50,000 events, the same ones for
# every configuration). One JSON line per run goes to OUT (default
# m5-drain.jsonl). Needs psql, python3, curl, and a PostgreSQL the libpq
# variables reach with pg_stat_statements in shared_preload_libraries.
set -euo pipefail
export PGOPTIONS="${PGOPTIONS:--c client_min_messages=warning}"
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release/challenge-event-handler}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-5000}
SECS=${SECS:-10}
USERS=${USERS:-100000}
OUT=${OUT:-m5-drain.jsonl}
GRPC_PORT=${GRPC_PORT:-16565}
METRICS_PORT=${METRICS_PORT:-18080}
[ $# -gt 0 ] || set -- A2 B2 D E
psql -q -d postgres -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

. docs/bench/lib.sh

# PostgreSQL's time in the statements that match a pattern, ms.
pg_ms() {
  psql -qAt -d postgres -c "SELECT coalesce(round(sum(total_exec_time)), 0)
    FROM pg_stat_statements WHERE query ~ '$1'"
}

run_one() { # tag, configuration
  local tag=$1 cfg=$2 bin conf stat pid
  configuration "$cfg"
  local db="m5drain_${tag,,}" data
  data=$(mktemp -d)
  prepare_database "$db" "$conf"
  FLUSH_INTERVAL=1h BUFFER_MAX_KEYS=100000000 SHUTDOWN_GRACE=600s start_service "$db" "$data"
  bench_load "$stat" "${SECS}s" 0s --rate "$RATE" >"$data.report" || true
  sleep 1
  psql -q -d postgres -c "SELECT pg_stat_statements_reset()" >/dev/null
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  t1=$(date +%s.%N)
  local rows_ms read_ms state_ms ledger_ms changed
  rows_ms=$(pg_ms '^\s*(UPDATE|INSERT INTO) user_goal_progress')
  read_ms=$(pg_ms '^\s*SELECT p\.progress')
  state_ms=$(pg_ms 'challenge_event_handler_goal_state')
  ledger_ms=$(pg_ms 'challenge_event_handler_events_')
  changed=$(psql -qAt -d "$db" -c "SELECT count(*) FROM user_goal_progress WHERE updated_at > created_at")
  python3 - "$tag" "$cfg" "$rc" "$t0" "$t1" "$rows_ms" "$read_ms" "$state_ms" "$ledger_ms" \
    "$changed" "$data.report" >>"$OUT" <<'EOF'
import json, sys
tag, cfg, rc, t0, t1, rows_ms, read_ms, state_ms, ledger_ms, changed, report = sys.argv[1:]
text = open(report).read()
run = next((r for r in json.loads(text)["runs"] if r["target"] == "service"), {}) if text.strip() else {}
print(json.dumps({
    "tag": tag, "config": cfg, "events_per_sec": run.get("per_sec"), "errors": run.get("errors"),
    "drain_seconds": round(float(t1) - float(t0), 3), "exit_code": int(rc),
    "pg_write_ms": int(float(rows_ms)), "pg_read_ms": int(float(read_ms)),
    "pg_state_ms": int(float(state_ms)), "pg_ledger_ms": int(float(ledger_ms)),
    "rows_changed": int(changed),
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
