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
#   DP  BIN_PREV (an earlier build of this work, to measure a change), as D
#
# RATE=10000 sends in open loop at that many events/s instead of a closed loop.
# One JSON line per run goes to OUT (default m5-rounds.jsonl): events/s, errors,
# latency, from /metrics the flushes, their rows and seconds (also by phase), the WAL left, and
# the CPU seconds of the service, of PostgreSQL (all its processes) and of the
# load generator over the load, also per event (us_per_event_*).
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
  local cpu0 t0 wall cpu1
  cpu0=$(cpu_seconds "$pid")
  t0=$(date +%s.%N)
  CLIENT_TIME=$data.time bench_load "$stat" "$DURATION" 2s ${RATE:+--rate "$RATE"} >"$data.report" || true
  wall=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$(date +%s.%N)")
  cpu1=$(cpu_seconds "$pid")
  local metrics
  metrics=$(curl -fs "http://127.0.0.1:$METRICS_PORT/metrics")
  local phases # "begin=0.12 ledger=0.03 …", every phase /metrics has
  phases=$(awk -F'[{}"= ]+' '$1 == "challenge_event_handler_flush_phase_seconds_total" { printf "%s=%s ", $3, $4 }' <<<"$metrics")
  t0=$SECONDS
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  python3 - "$tag" "$cfg" "$rc" "$((SECONDS - t0))" \
    "$(metric flush_duration_seconds_count "$metrics")" \
    "$(metric flush_duration_seconds_sum "$metrics")" \
    "$(metric db_batch_size_sum "$metrics")" \
    "$(metric wal_bytes "$metrics")" "$data.report" \
    "$wall" "$cpu0" "$cpu1" "$(cat "$data.time")" "$phases" >>"$OUT" <<'EOF'
import json, sys
tag, cfg, rc, drain, flushes, flush_s, rows, wal, report, wall, cpu0, cpu1, client, phases = sys.argv[1:]
text = open(report).read()
run = next((r for r in json.loads(text)["runs"] if r["target"] == "service"), {}) if text.strip() else {}

def cpu(wall, before, after, client, per_sec):
    """CPU seconds of the service, PostgreSQL and the load generator over the
    load (warm-up included), and per event at the measured rate."""
    (s0, p0), (s1, p1) = map(float, before.split()), map(float, after.split())
    c = sum(map(float, client.split())) if client.strip() else 0.0
    spent = {"service": s1 - s0, "postgres": p1 - p0, "client": c}
    out = {"wall_seconds": round(wall, 2)}
    for who, s in spent.items():
        out[f"cpu_{who}_s"] = round(s, 2)
        if per_sec:
            out[f"us_per_event_{who}"] = round(s / (per_sec * wall) * 1e6, 1)
    return out
print(json.dumps({
    "tag": tag, "config": cfg, "events_per_sec": run.get("per_sec"), "errors": run.get("errors"),
    "offered_per_sec": run.get("offered_per_sec"),
    "p50_ms": run.get("p50_ms"), "p99_ms": run.get("p99_ms"),
    "flushes": float(flushes), "flush_seconds": float(flush_s), "rows_flushed": float(rows),
    "rows_per_flush_second": float(rows) / float(flush_s) if float(flush_s) > 0 else None,
    "wal_left_bytes": float(wal), "drain_seconds": int(drain), "exit_code": int(rc),
    # Seconds of the committed flushes by phase (0 for a build without the metric).
    "flush_phase_s": {k: round(float(v), 3) for k, v in (p.split("=") for p in phases.split())},
    **cpu(float(wall), cpu0, cpu1, client, run.get("per_sec")),
}))
EOF
  tail -1 "$OUT"
  psql -q -d postgres -c "DROP DATABASE $db"
  rm -rf "$data" "$data.log" "$data.report" "$data.time"
}

for r in $(seq "$ROUNDS"); do
  for cfg in "$@"; do
    run_one "R$r$cfg" "$cfg"
  done
done
