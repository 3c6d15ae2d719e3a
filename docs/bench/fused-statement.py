#!/usr/bin/env python3
"""What the read of D's flush costs PostgreSQL, against one statement with the
M5 rules in SQL (docs/BENCHMARKS.md, "Fourteenth round"). An experiment, not
the service: the service's flush is src/store/flush.rs.

Two ways to flush the same batches of M5 updates (333 players x the three
`kills` goals of config/challenges.m5.json, 999 keys sorted, one transaction
each, like a flush's statement-sized part at DB_BATCH_SIZE 1000):

  rw     what the service does today: the unlocked read of the rows
         (READ_BATCH_SQL, ctid and xmin in binary) and the write of the
         changed ones by ctid and xmin (WRITE_ROWS_SQL); the rules between the
         two are a Python transcription of `apply()` in src/rules/m5.rs
  fused  one UPDATE ... FROM UNNEST that matches by key and computes every
         column with the same rules as SQL expressions; no read

PostgreSQL's own execution time per row comes from pg_stat_statements (reset
at the start), in alternating rounds (rw fused, fused rw, ...). Before
measuring, `--check` keys get random row states and random M5 steps (modes,
schedules, reset and reselection, targets, times around period boundaries),
and the fused statement's rows are compared with the Python rules inside a
transaction that is rolled back; any difference stops the run.

Needs `pip install 'psycopg[binary]'`, pg_stat_statements preloaded, and a
database as docs/bench/lib.sh's prepare_database leaves it:

  source docs/bench/lib.sh; USERS=100000 prepare_database fusedx config/challenges.m5.json
  python3 docs/bench/fused-statement.py --dsn 'host=/tmp port=55477 user=postgres dbname=fusedx'
"""

import argparse
import datetime as dt
import json
import random
import sys
import time

import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.types import TypeInfo

I32_MAX = 2**31 - 1
I32_MIN = -(2**31)

# --- the rules, transcribed from src/rules/m5.rs `apply()` -----------------


def period(schedule, at):
    """(start, next boundary) of the period `at` (naive UTC) falls in."""
    if schedule is None:
        return None
    day = dt.datetime(at.year, at.month, at.day)
    if schedule == "daily":
        return day, day + dt.timedelta(days=1)
    if schedule == "weekly":
        start = day - dt.timedelta(days=day.weekday())
        return start, start + dt.timedelta(days=7)
    start = day.replace(day=1)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, nxt


def progress_column(v):
    return max(0, min(I32_MAX, v))


def int_column(v):
    return max(I32_MIN, min(I32_MAX, v))


def apply(row, step, at):
    """One event on its own: the new row, or None when it does not change."""
    relative, schedule, reset, reselect, target, value, inc = (
        step["relative"], step["schedule"], step["reset"], step["reselect"],
        step["target"], step["value"], step["inc"])
    if schedule is None:
        reset = reselect = False
    claimed = row["status"] == "claimed"
    if not row["is_active"] or (claimed and not reselect):
        return None
    per = period(schedule, at)
    if per is not None and reset and row["updated_at"] >= per[1]:
        return None
    stale = per is not None and row["updated_at"] < per[0]
    new = progress_column(row["progress"] + inc if value is None else value)
    base = None if relative and row["status"] == "not_started" else row["baseline"]
    reaches = base is not None and new - base >= target
    rebase = int_column(new - inc)
    if not relative:
        baseline = row["baseline"]
    elif stale and (claimed or reset):
        baseline = rebase
    elif stale or base is not None:
        baseline = None if base is None else int_column(base)
    else:
        baseline = rebase
    was_completed = row["status"] == "completed"
    if claimed and stale:
        status = "completed" if inc >= target else "in_progress" if inc > 0 else "not_started"
    elif claimed:
        status = "claimed"
    elif ((was_completed and not (relative and stale and reset))
          or (not relative and new >= target)
          or (relative and stale and reset and inc >= target)
          or (relative and not (stale and reset) and reaches)
          or (relative and base is None and inc >= target)):
        status = "completed"
    else:
        status = "in_progress"
    kept = row["completed_at"]
    if claimed and stale:
        completed_at = at if inc >= target else None
    elif claimed or (was_completed and not (relative and stale and reset)):
        completed_at = kept
    elif ((not relative and new >= target and kept is None)
          or (relative and stale and reset and inc >= target)
          or (relative and not stale and kept is None and reaches)
          or (relative and base is None and inc >= target)):
        completed_at = at
    elif relative and stale and reset:
        completed_at = None
    else:
        completed_at = kept
    if status == "completed" and completed_at is None:
        completed_at = at
    expires_at = row["expires_at"]
    if per is not None and (stale or row["expires_at"] is None):
        expires_at = per[1]
    return dict(row, progress=new, baseline=baseline, status=status, completed_at=completed_at,
                claimed_at=None if claimed and stale else row["claimed_at"],
                expires_at=expires_at, updated_at=max(row["updated_at"], at))


# --- the statements -------------------------------------------------------

READ = """
SELECT p.progress, p.status, p.completed_at, p.claimed_at, p.is_active,
       p.updated_at, p.expires_at, p.baseline_value, p.created_at,
       NULL::timestamp, NULL::date, k.ord::int4, p.ctid, p.xmin
FROM UNNEST(%s::varchar[], %s::varchar[]) WITH ORDINALITY AS k(user_id, goal_id, ord)
JOIN user_goal_progress p ON p.user_id = k.user_id AND p.goal_id = k.goal_id"""

WRITE = """
UPDATE user_goal_progress AS p SET
    progress = u.progress, status = u.status, completed_at = u.completed_at,
    claimed_at = u.claimed_at, updated_at = u.updated_at, expires_at = u.expires_at,
    baseline_value = u.baseline_value
FROM UNNEST(%b::tid[], %b::xid[], %s::varchar[], %s::varchar[], %s::int4[], %s::varchar[],
            %s::timestamp[], %s::timestamp[], %s::timestamp[], %s::timestamp[], %s::int4[])
     WITH ORDINALITY
     AS u(tid, xmin, user_id, goal_id, progress, status, completed_at, claimed_at, updated_at,
          expires_at, baseline_value, ord)
WHERE p.ctid = u.tid AND p.xmin = u.xmin
  AND p.user_id = u.user_id AND p.goal_id = u.goal_id
RETURNING u.ord::int4"""


def fused_sql(returning):
    """The M5 rules as SQL over the row's old columns (p.*) and the step (u.*)."""
    m = {}
    m["stale"] = "(u.ps IS NOT NULL AND p.updated_at < u.ps)"
    m["claimed"] = "(p.status = 'claimed')"
    m["new"] = "LEAST(GREATEST(COALESCE(u.value::int8, p.progress::int8 + u.inc), 0), 2147483647)"
    m["base"] = "(CASE WHEN u.relative AND p.status = 'not_started' THEN NULL ELSE p.baseline_value::int8 END)"
    m["reaches"] = "COALESCE({new} - {base} >= u.target, false)".format(**m)
    m["rebase"] = "LEAST(GREATEST({new} - u.inc, -2147483648), 2147483647)".format(**m)
    m["sr"] = "({stale} AND u.reset)".format(**m)
    m["completes"] = """(
        (p.status = 'completed' AND NOT (u.relative AND {sr}))
        OR (NOT u.relative AND {new} >= u.target)
        OR (u.relative AND {sr} AND u.inc >= u.target)
        OR (u.relative AND NOT {sr} AND {reaches})
        OR (u.relative AND {base} IS NULL AND u.inc >= u.target))""".format(**m)
    m["status"] = """(CASE
        WHEN {claimed} AND {stale} THEN CASE WHEN u.inc >= u.target THEN 'completed'
                                             WHEN u.inc > 0 THEN 'in_progress'
                                             ELSE 'not_started' END
        WHEN {claimed} THEN 'claimed'
        WHEN {completes} THEN 'completed'
        ELSE 'in_progress' END)""".format(**m)
    m["completed_at"] = """(CASE
        WHEN {claimed} AND {stale} THEN CASE WHEN u.inc >= u.target THEN u.at END
        WHEN {claimed} OR (p.status = 'completed' AND NOT (u.relative AND {sr})) THEN p.completed_at
        WHEN (NOT u.relative AND {new} >= u.target AND p.completed_at IS NULL)
          OR (u.relative AND {sr} AND u.inc >= u.target)
          OR (u.relative AND NOT {stale} AND p.completed_at IS NULL AND {reaches})
          OR (u.relative AND {base} IS NULL AND u.inc >= u.target) THEN u.at
        WHEN u.relative AND {sr} THEN NULL
        ELSE p.completed_at END)""".format(**m)
    m["baseline"] = """(CASE
        WHEN NOT u.relative THEN p.baseline_value
        WHEN {stale} AND ({claimed} OR u.reset) THEN {rebase}
        WHEN {stale} OR {base} IS NOT NULL THEN {base}
        ELSE {rebase} END)::int4""".format(**m)
    returned = ", p.progress, p.status, p.completed_at, p.claimed_at, p.is_active, p.updated_at, " \
        "p.expires_at, p.baseline_value" if returning else ""
    return """
UPDATE user_goal_progress AS p SET
    progress = {new}, baseline_value = {baseline}, status = {status},
    completed_at = CASE WHEN {status} = 'completed' THEN COALESCE({completed_at}, u.at)
                        ELSE {completed_at} END,
    claimed_at = CASE WHEN {claimed} AND {stale} THEN NULL ELSE p.claimed_at END,
    expires_at = CASE WHEN u.pn IS NOT NULL AND ({stale} OR p.expires_at IS NULL) THEN u.pn
                      ELSE p.expires_at END,
    updated_at = GREATEST(p.updated_at, u.at)
FROM UNNEST(%s::varchar[], %s::varchar[], %s::int4[], %s::int4[], %s::timestamp[], %s::int4[],
            %s::bool[], %s::bool[], %s::bool[], %s::timestamp[], %s::timestamp[])
     WITH ORDINALITY
     AS u(user_id, goal_id, value, inc, at, target, relative, reset, reselect, ps, pn, ord)
WHERE p.user_id = u.user_id AND p.goal_id = u.goal_id AND p.is_active
  AND NOT (p.status = 'claimed' AND NOT u.reselect)
  AND NOT (u.reset AND u.pn IS NOT NULL AND p.updated_at >= u.pn)
RETURNING u.ord::int4{returned}""".format(returned=returned, **m)


FUSED = fused_sql(False)
FUSED_CHECK = fused_sql(True)

# --- ctid and xmin in binary, as the service sends them --------------------


class Tid(bytes):
    pass


class Xid(bytes):
    pass


def binary_system_types(conn):
    for name, cls in (("tid", Tid), ("xid", Xid)):
        info = TypeInfo.fetch(conn, name)
        info.register(conn)

        class D(Dumper):
            format = Format.BINARY
            oid = info.oid

            def dump(self, obj):
                return bytes(obj)

        class L(Loader):
            format = Format.BINARY

            def load(self, data, _cls=cls):
                return _cls(bytes(data))

        conn.adapters.register_dumper(cls, D)
        conn.adapters.register_loader(info.oid, L)


COLS = ("progress", "status", "completed_at", "claimed_at", "is_active", "updated_at",
        "expires_at", "baseline")


def step_arrays(keys, steps):
    cols = [[k[0] for k in keys], [k[1] for k in keys]]
    for f in ("value", "inc", "at", "target", "relative", "reset", "reselect"):
        cols.append([s[f] for s in steps])
    pers = [period(s["schedule"], s["at"]) for s in steps]
    cols.append([p and p[0] for p in pers])
    cols.append([p and p[1] for p in pers])
    return cols


def flush_rw(cur, keys, steps):
    cur.execute(READ, [[k[0] for k in keys], [k[1] for k in keys]], binary=True)
    out = {f: [] for f in ("tid", "xmin", "u", "g", "progress", "status", "completed_at",
                           "claimed_at", "updated_at", "expires_at", "baseline")}
    for r in cur.fetchall():
        i = r[11] - 1
        row = dict(zip(COLS, r[:8]))
        new = apply(row, steps[i], steps[i]["at"])
        if new is None:
            continue
        for f, v in (("tid", r[12]), ("xmin", r[13]), ("u", keys[i][0]), ("g", keys[i][1])):
            out[f].append(v)
        for f in ("progress", "status", "completed_at", "claimed_at", "updated_at", "expires_at",
                  "baseline"):
            out[f].append(new[f])
    cur.execute(WRITE, list(out.values()), binary=True)
    return len(cur.fetchall())


def flush_fused(cur, keys, steps):
    cur.execute(FUSED, step_arrays(keys, steps), binary=True)
    return len(cur.fetchall())


# --- the check --------------------------------------------------------------


def check(conn, n, rng):
    """Random rows and steps: the fused statement against `apply()`."""
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        cur.execute("SELECT user_id, goal_id FROM user_goal_progress TABLESAMPLE SYSTEM (5) LIMIT %s",
                    [n])
        keys = sorted(cur.fetchall())
        t0 = dt.datetime(2026, 11, 30, 12)  # a Monday, the day before a month's first
        times = [t0 + dt.timedelta(hours=h) for h in (-40, -13, -1, 0, 11, 12, 13, 35, 36, 200)]
        times += [t + dt.timedelta(microseconds=1) for t in times[:3]]
        rows = []
        for _ in keys:
            status = rng.choice(["not_started", "in_progress", "completed", "claimed"])
            # The table's CHECK: a claimed_at needs a completed_at.
            claimed_at = rng.choice([None, rng.choice(times)]) if status == "claimed" else None
            rows.append(dict(
                progress=rng.choice([0, 1, 2, 5, 9, 10, 50, I32_MAX]),
                status=status,
                completed_at=rng.choice(times) if claimed_at else rng.choice([None, rng.choice(times)]),
                claimed_at=claimed_at,
                is_active=rng.random() < 0.9,
                updated_at=rng.choice(times),
                expires_at=rng.choice([None, rng.choice(times)]),
                baseline=rng.choice([None, 0, 3, -5, 8, I32_MIN])))
        cur.execute("""
UPDATE user_goal_progress p SET progress = r.progress, status = r.status,
    completed_at = r.completed_at, claimed_at = r.claimed_at, is_active = r.is_active,
    updated_at = r.updated_at, expires_at = r.expires_at, baseline_value = r.baseline
FROM UNNEST(%s::varchar[], %s::varchar[], %s::int4[], %s::varchar[], %s::timestamp[],
            %s::timestamp[], %s::bool[], %s::timestamp[], %s::timestamp[], %s::int4[])
     AS r(user_id, goal_id, progress, status, completed_at, claimed_at, is_active, updated_at,
          expires_at, baseline)
WHERE p.user_id = r.user_id AND p.goal_id = r.goal_id""",
                    [[k[0] for k in keys], [k[1] for k in keys]]
                    + [[r[c] for r in rows] for c in ("progress", "status", "completed_at",
                                                      "claimed_at", "is_active", "updated_at",
                                                      "expires_at", "baseline")])
        steps = []
        for _ in keys:
            login = rng.random() < 0.3
            steps.append(dict(
                relative=rng.random() < 0.6,
                schedule=rng.choice([None, "daily", "weekly", "monthly"]),
                reset=rng.random() < 0.6, reselect=rng.random() < 0.5,
                target=rng.choice([1, 3, 5, 10, 100]),
                value=None if login else rng.choice([0, 1, 4, 9, 10, 20, 60, I32_MAX]),
                inc=1 if login else rng.choice([0, 1, 2, 5, 10, -1]),
                at=rng.choice(times)))
        for s in steps:
            if s["schedule"] is None:
                s["reset"] = s["reselect"] = False
        cur.execute(FUSED_CHECK, step_arrays(keys, steps))
        got = {r[0] - 1: dict(zip(COLS, r[1:])) for r in cur.fetchall()}
        bad = 0
        changed = 0
        for i, (row, step) in enumerate(zip(rows, steps)):
            want = apply(row, step, step["at"])
            if want is not None:
                changed += 1
            if (want is None) != (i not in got) or (want is not None and any(
                    want[c] != got[i][c] for c in COLS)):
                bad += 1
                if bad <= 5:
                    print(f"  differs: row {row}\n    step {step}\n    rules {want}\n    sql   {got.get(i)}",
                          file=sys.stderr)
        print(f"check: {len(keys)} random rows and steps, {changed} changed, {bad} differ")
        return bad == 0


# --- the measurement ---------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--config", default="config/challenges.m5.json")
    ap.add_argument("--stat-code", default="kills")
    ap.add_argument("--users", type=int, default=100000)
    ap.add_argument("--players", type=int, default=333, help="players per batch")
    ap.add_argument("--batches", type=int, default=150, help="batches per way per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--check", type=int, default=20000, help="random rows checked first (0: none)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    doc = json.load(open(a.config))
    goals = []
    for c in doc["challenges"]:
        for g in c["goals"]:
            req, rot = g["requirement"], g.get("rotation") or {}
            if req["statCode"] != a.stat_code:
                continue
            on = rot.get("onExpiry", {})
            enabled = rot.get("enabled", False)
            goals.append(dict(goal=g["goalId"], target=int(req["targetValue"]),
                              relative=req.get("progressMode") == "relative",
                              schedule=rot.get("schedule") if enabled else None,
                              reset=enabled and on.get("resetProgress", False),
                              reselect=enabled and on.get("allowReselection", False)))
    rng = random.Random(a.seed)
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        binary_system_types(conn)
        if a.check and not check(conn, a.check, rng):
            sys.exit("the fused statement and the rules differ: not measured")
        cur = conn.cursor()
        cur.execute("SELECT pg_stat_statements_reset()")
        values = {}
        wall = {"rw": 0.0, "fused": 0.0}
        rows = {"rw": 0, "fused": 0}
        ways = {"rw": flush_rw, "fused": flush_fused}
        for r in range(a.rounds):
            order = ("rw", "fused") if r % 4 in (0, 3) else ("fused", "rw")
            for way in order:
                for _ in range(a.batches):
                    users = sorted(rng.sample(range(a.users), a.players), key=lambda u: f"bench-{u}")
                    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
                    keys, steps = [], []
                    for u in users:
                        v = values[u] = values.get(u, 0) + 1
                        for g in sorted(goals, key=lambda g: g["goal"]):
                            keys.append((f"bench-{u}", g["goal"]))
                            steps.append(dict(g, value=v, inc=1, at=now))
                    t = time.perf_counter()
                    with conn.transaction():
                        rows[way] += ways[way](cur, keys, steps)
                    wall[way] += time.perf_counter() - t
            print(f"round {r + 1}: {' then '.join(order)}", flush=True)
        cur.execute("""SELECT query, calls, total_exec_time, rows FROM pg_stat_statements
                       WHERE query LIKE '%%user_goal_progress%%' AND calls > 0""")
        by = {"read": [0, 0.0, 0], "write": [0, 0.0, 0], "fused": [0, 0.0, 0]}
        for q, calls, ms, n in cur.fetchall():
            name = ("read" if q.lstrip().startswith("SELECT p.progress") else
                    "write" if "p.ctid = u.tid" in q else
                    "fused" if "u.reselect" in q else None)
            if name:
                by[name] = [by[name][0] + calls, by[name][1] + ms, by[name][2] + n]
        print("statement  calls  exec ms  rows  us/row")
        for name, (calls, ms, n) in by.items():
            print(f"{name:9} {calls:6} {ms:9.0f} {n:8} {1000 * ms / max(n, 1):7.2f}")
        rw_us = 1000 * (by["read"][1] + by["write"][1]) / max(by["write"][2], 1)
        fused_us = 1000 * by["fused"][1] / max(by["fused"][2], 1)
        print(f"PostgreSQL per row written: rw {rw_us:.2f} us, fused {fused_us:.2f} us "
              f"(fused / rw {fused_us / rw_us:.3f})")
        print(f"client wall per row: rw {1e6 * wall['rw'] / max(rows['rw'], 1):.1f} us, "
              f"fused {1e6 * wall['fused'] / max(rows['fused'], 1):.1f} us")


if __name__ == "__main__":
    main()
