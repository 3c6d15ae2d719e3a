# Shared by docs/bench/m5-rounds.sh and docs/bench/m5-drain.sh (sourced): the
# configurations, a database as the challenge service leaves it, and the service.

# Sets bin, conf and stat for configuration $1 (BIN: this build; BIN_A: the
# build before issue 17; BIN_PREV: an earlier build of this work).
#   A2  BIN_A, config/challenges.json (type rules), --stat-code enemy-kills
#   B2  BIN,   config/challenges.json (type rules), --stat-code enemy-kills
#   D   BIN,   config/challenges.m5.json (the M5 example), --stat-code kills
#   E   BIN,   docs/bench/challenges.m5-same-goals.json (A's goals in M5 form), enemy-kills
#   DP  BIN_PREV (an earlier build of this work, to measure a change), as D
configuration() {
  case $1 in
    A2) bin=${BIN_A:?BIN_A: the build to compare with}; conf=config/challenges.json; stat=enemy-kills ;;
    B2) bin=$BIN; conf=config/challenges.json; stat=enemy-kills ;;
    D) bin=$BIN; conf=config/challenges.m5.json; stat=kills ;;
    E) bin=$BIN; conf=docs/bench/challenges.m5-same-goals.json; stat=enemy-kills ;;
    DP) bin=${BIN_PREV:?BIN_PREV: the earlier build}; conf=config/challenges.m5.json; stat=kills ;;
    *) echo "unknown configuration $1 (A2, B2, D, E, DP)" >&2; exit 2 ;;
  esac
}

# The goals a player is given by default, as SQL VALUES rows (goal_id, challenge_id).
default_goals() {
  python3 - "$1" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
rows = [f"('{g['goalId']}', '{c['challengeId']}')"
        for c in doc["challenges"] for g in c["goals"] if g.get("defaultAssigned", True)]
print(", ".join(rows))
PY
}

# A new database $1 migrated by the challenge service's migration 001 and
# pre-initialized the way its Initialize does it: USERS players × the default
# goals of config $2; then VACUUM ANALYZE and CHECKPOINT.
prepare_database() {
  local db=$1 conf=$2
  psql -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  psql -q -d "$db" -f tests/fixtures/challenge-service/001_create_user_goal_progress.up.sql
  psql -q -d "$db" -c "INSERT INTO user_goal_progress
      (user_id, goal_id, challenge_id, namespace, progress, status, is_active)
    SELECT 'bench-' || u, g.goal_id, g.challenge_id, 'mygame', 0, 'not_started', true
    FROM generate_series(0, $((USERS - 1))) AS u
    CROSS JOIN (VALUES $(default_goals "$conf")) AS g(goal_id, challenge_id)"
  psql -q -d "$db" -c "VACUUM ANALYZE" -c "CHECKPOINT"
}

# Starts $bin on database $1 with DATA_DIR $2 and config $conf (more settings
# may come as VAR=value in the environment of the call); sets pid and waits
# for /healthz.
start_service() {
  local db=$1 data=$2 host=${PGHOST:-/var/run/postgresql}
  AB_NAMESPACE=mygame LOG_LEVEL=warn DATA_DIR="$data" CONFIG_PATH="$conf" \
    DATABASE_URL="postgres://${PGUSER:-postgres}@localhost:${PGPORT:-5432}/$db?host=$host" \
    GRPC_PORT=$GRPC_PORT METRICS_PORT=$METRICS_PORT "$bin" >"$data.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$METRICS_PORT/healthz" >/dev/null && break
    sleep 0.2
  done
}

# The bench client against the service: `bench_load STAT DURATION WARMUP [--rate N]`;
# its CPU seconds ("user system") go to $CLIENT_TIME when set.
bench_load() {
  local stat=$1 duration=$2 warmup=$3
  shift 3
  /usr/bin/time -f '%U %S' -o "${CLIENT_TIME:-/dev/null}" \
    "$BIN" bench --addr "http://127.0.0.1:$GRPC_PORT" --mix mixed --users "$USERS" \
    --stat-code "$stat" --concurrency 256 --connections 4 --warmup "$warmup" \
    --duration "$duration" "$@" --json
}

# CPU seconds so far (utime + stime, /proc) of process $1 and of every
# PostgreSQL process on the machine (the postmaster's reaped children
# included), as "service postgres".
cpu_seconds() {
  python3 - "$1" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
def stat(pid):
    text = open(f"/proc/{pid}/stat").read()
    comm = text[text.index("(") + 1:text.rindex(")")]
    return comm, text[text.rindex(")") + 2:].split()
service, pg = 0, 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        comm, f = stat(pid)
    except OSError:
        continue
    # fields after the comm: state=0, ppid=1, utime=11, stime=12, cutime=13, cstime=14
    if pid == sys.argv[1]:
        service = int(f[11]) + int(f[12])
    elif comm == "postgres":
        pg += int(f[11]) + int(f[12])
        try:
            if stat(f[1])[0] != "postgres":
                pg += int(f[13]) + int(f[14])
        except OSError:
            pass
print(service / hz, pg / hz)
PY
}
