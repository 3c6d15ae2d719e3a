#!/usr/bin/env bash
# The rate one replica holds (docs/BENCHMARKS.md, "Eleventh round"): for each
# configuration, the highest open-loop rate at which, over DURATION, the service
# acknowledges what is offered (at least 99.5% of it, p99 under P99_MS) and its
# flush keeps up (the WAL ends less than LEFT_MB behind). Found by bisection
# between LO and HI to within STEP events/s, one docs/bench/m5-rounds.sh run per
# step (a new database each time, prepared as the challenge service leaves it).
#
#   BIN=target/release/challenge-event-handler BIN_A=<build before issue 17> \
#   PGHOST=/tmp PGPORT=5432 PGUSER=postgres LO=10000 HI=20000 STEP=500 DURATION=45s \
#     bash docs/bench/m5-sustain.sh A2 D E
#
# REPEATS runs per step (default 1; 3 on a shared machine, where one run at the
# edge can go either way): a step holds when most of its runs hold.
#
# Configurations as in docs/bench/m5-rounds.sh. Every step's run goes to
# OUT.runs (default m5-sustain.jsonl.runs), one JSON line each; one summary
# line per configuration goes to OUT and to the terminal. LO is taken to hold
# and HI not to; a result at either end says so ("at least LO", "below HI").
set -euo pipefail
cd "$(dirname "$0")/../.."

LO=${LO:-10000}
HI=${HI:-20000}
STEP=${STEP:-500}
DURATION=${DURATION:-45s}
LEFT_MB=${LEFT_MB:-1}
P99_MS=${P99_MS:-1000}
REPEATS=${REPEATS:-1}
OUT=${OUT:-m5-sustain.jsonl}
[ $# -gt 0 ] || set -- A2 D E

# Whether run $1 (a JSON line of m5-rounds.sh) held its offered rate.
holds() {
  python3 - "$1" "$LEFT_MB" "$P99_MS" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
left_mb, p99_ms = float(sys.argv[2]), float(sys.argv[3])
ok = (r.get("errors") == 0
      and (r.get("events_per_sec") or 0) >= 0.995 * r["offered_per_sec"]
      and (r.get("p99_ms") or 1e9) <= p99_ms
      and r["wal_left_bytes"] <= left_mb * 1e6)
sys.exit(0 if ok else 1)
PY
}

for cfg in "$@"; do
  lo=$LO hi=$HI
  while [ $((hi - lo)) -gt "$STEP" ]; do
    mid=$(( (lo + hi) / 2 / STEP * STEP ))
    [ "$mid" -gt "$lo" ] || mid=$((lo + STEP))
    held=0
    for _ in $(seq "$REPEATS"); do
      run=$(mktemp)
      RATE=$mid ROUNDS=1 DURATION=$DURATION OUT=$run bash docs/bench/m5-rounds.sh "$cfg" >/dev/null
      line=$(tail -1 "$run")
      rm -f "$run"
      echo "$line" >>"$OUT.runs"
      if holds "$line"; then held=$((held + 1)); fi
    done
    if [ $((2 * held)) -gt "$REPEATS" ]; then
      echo "$cfg $mid/s: holds ($held of $REPEATS runs)" >&2
      lo=$mid
    else
      echo "$cfg $mid/s: does not hold ($held of $REPEATS runs held)" >&2
      hi=$mid
    fi
  done
  note=""
  [ "$lo" -eq "$LO" ] && note="below LO (or at it)"
  [ "$hi" -eq "$HI" ] && note="at least HI - STEP; raise HI"
  echo "{\"config\": \"$cfg\", \"holds_per_sec\": $lo, \"fails_per_sec\": $hi, \"duration\": \"$DURATION\", \"repeats\": $REPEATS, \"note\": \"$note\"}" |
    tee -a "$OUT"
done
