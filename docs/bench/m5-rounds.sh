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

# The goals a player is given by default, as SQL VALUES rows (goal_id, challenge_id).
default_goals() {
  python3 - "$1" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
rows = [f"('{g['goalId']}', '{c['challengeId']}')"
        for c in doc["challenges"] for g in c["goals"] if g.get("defaultAssigned", True)]
print(", ".join(rows))
EOF
}

metric() { # name, /metrics text: the sum of a metric's samples
  awk -v n="challenge_event_handler_$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }' <<<"$2"
}

run_one() { # tag, configuration
  local tag=$1 cfg=$2 bin conf stat
  case $cfg in
    A2) bin=${BIN_A:?BIN_A: the build to compare with}; conf=config/challenges.json; stat=enemy-kills ;;
    B2) bin=$BIN; conf=config/challenges.json; stat=enemy-kills ;;
    D) bin=$BIN; conf=config/challenges.m5.json; stat=kills ;;
    E) bin=$BIN; conf=docs/bench/challenges.m5-same-goals.json; stat=enemy-kills ;;
    *) echo "unknown configuration $cfg (A2, B2, D, E)" >&2; exit 2 ;;
  esac
  local db="m5bench_${tag,,}" data
  data=$(mktemp -d)
  psql -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  psql -q -d "$db" -f tests/fixtures/challenge-service/001_create_user_goal_progress.up.sql
  psql -q -d "$db" -c "INSERT INTO user_goal_progress
      (user_id, goal_id, challenge_id, namespace, progress, status, is_active)
    SELECT 'bench-' || u, g.goal_id, g.challenge_id, 'mygame', 0, 'not_started', true
    FROM generate_series(0, $((USERS - 1))) AS u
    CROSS JOIN (VALUES $(default_goals "$conf")) AS g(goal_id, challenge_id)"
  psql -q -d "$db" -c "VACUUM ANALYZE" -c "CHECKPOINT"

  local host=${PGHOST:-/var/run/postgresql}
  AB_NAMESPACE=mygame LOG_LEVEL=warn DATA_DIR="$data" CONFIG_PATH="$conf" \
    DATABASE_URL="postgres://${PGUSER:-postgres}@localhost:${PGPORT:-5432}/$db?host=$host" \
    GRPC_PORT=$GRPC_PORT METRICS_PORT=$METRICS_PORT "$bin" >"$data.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$METRICS_PORT/healthz" >/dev/null && break
    sleep 0.2
  done
  "$BIN" bench --addr "http://127.0.0.1:$GRPC_PORT" --mix mixed --users "$USERS" \
    --stat-code "$stat" --concurrency 256 --connections 4 --warmup 2s --duration "$DURATION" \
    ${RATE:+--rate "$RATE"} --json >"$data.report" || true
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
