#!/usr/bin/env python3
"""fsdb vs DuckDB: the same point-in-time training set, side by side, same machine, same run.

Usage: benches/training_set_vs_duckdb.sh [S|M]   (the .sh installs duckdb and builds fsdb)

1. `fsdb generate` writes the reference workload (DESIGN §5) at the scale: transactions.csv,
   clicks.csv, spine.csv, definitions.toml; fsdb ingests the CSVs.
2. fsdb computes the 12-feature training set of the spine (`fsdb training-set`).
3. DuckDB loads the same CSVs into memory (not timed), drops duplicate transaction ids
   (keeping the first, as fsdb does), and computes the same training set with two SQL
   variants; only the query is timed.
4. Every value is compared: integers and strings exactly, floats within 1e-9 relative.
   The runs are interleaved (fsdb, duckdb, fsdb, duckdb) and the best of each is reported.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import duckdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDB = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "fsdb")
DAY = 86_400_000

# The realtime features as window aggregates over events ∪ spine rows (kind 1), ordered by
# time; RANGE frames are exact: (t - w, t] is "w - 1 PRECEDING AND CURRENT ROW" in ms, and
# CURRENT ROW includes the events at exactly t. last_value orders ties by file order (seq),
# which is fsdb's ingestion order.
WINDOW_SQL = """
with tx_u as (
    select card_id as e, ts, 0 as kind, seq, amount, approved, city, merchant, null::bigint as rid from txd
    union all
    select entity, ts, 1, 0, null, null, null, null, rid from sp
), tx_f as (
    select rid, kind,
        sum(1 - kind) over (partition by e order by ts range between 59999 preceding and current row) as card_txn_count_1m,
        sum(1 - kind) over (partition by e order by ts range between 3599999 preceding and current row) as card_txn_count_1h,
        coalesce(sum(amount) filter (where approved) over w1d, 0.0) as card_amount_sum_1d,
        avg(amount) over w7d as card_amount_avg_7d,
        max(amount) over w1d as card_amount_max_1d,
        min(amount) filter (where approved) over w7d as card_amount_min_7d,
        last_value(city ignore nulls) over (partition by e order by ts, kind, seq rows between unbounded preceding and current row) as card_last_city,
        count(distinct merchant) over w7d as card_merchants_7d,
        stddev_pop(amount) over w7d as card_amount_stddev_7d
    from tx_u
    window w1d as (partition by e order by ts range between 86399999 preceding and current row),
           w7d as (partition by e order by ts range between 604799999 preceding and current row)
    qualify kind = 1
), life_u as (
    -- batch feature (freshness 1d): lifetime count as of the start of the row's day
    select card_id as e, ts, 0 as kind, null::bigint as rid from txd
    union all
    select entity, (ts // 86400000) * 86400000, 1, rid from sp
), life_f as (
    select rid, kind, sum(1 - kind) over (partition by e order by ts range between unbounded preceding and current row) as card_txn_count_lifetime
    from life_u qualify kind = 1
), cl_u as (
    select user_id as e, ts, 0 as kind, page, null::bigint as rid from cl
    union all
    select entity, ts, 1, null, rid from sp
), cl_f as (
    select rid, kind, sum(1 - kind) over (partition by e order by ts range between 3599999 preceding and current row) as user_clicks_1h
    from cl_u qualify kind = 1
), pages_u as (
    -- batch feature (freshness 1d): distinct pages in the day before the row's day start
    select user_id as e, ts, 0 as kind, page, null::bigint as rid from cl
    union all
    select entity, (ts // 86400000) * 86400000, 1, null, rid from sp
), pages_f as (
    select rid, kind, count(distinct page) over (partition by e order by ts range between 86399999 preceding and current row) as user_pages_1d
    from pages_u qualify kind = 1
)
select sp.rid, card_txn_count_1m, card_txn_count_1h, card_amount_sum_1d, card_amount_avg_7d, card_amount_max_1d,
       card_amount_min_7d, card_last_city, card_merchants_7d, card_amount_stddev_7d, card_txn_count_lifetime,
       user_clicks_1h, user_pages_1d
from sp join tx_f using (rid) join life_f using (rid) join cl_f using (rid) join pages_f using (rid)
"""

# Hybrid: counts, sums, averages and standard deviations from exact (DECIMAL) prefix sums
# looked up with ASOF JOINs at t and t - w; min, max, distinct counts and last city with
# window functions as above (no prefix form exists for them).
ASOF_SQL = """
with pre as (
    select card_id as e, ts,
        count(*) over p as c,
        sum(amount::decimal(18, 2)) over p as s,
        sum(amount::decimal(18, 2) * amount::decimal(18, 2)) over p as s2,
        sum(case when approved then amount::decimal(18, 2) else 0 end) over p as sa
    from txd window p as (partition by card_id order by ts range between unbounded preceding and current row)
    qualify row_number() over (partition by card_id, ts order by seq desc) = 1
), zero as (select distinct e, -9223372036854775000::bigint as ts, 0::bigint as c, 0::decimal(38,2) as s, 0::decimal(38,4) as s2, 0::decimal(38,2) as sa from pre),
pre0 as (select * from pre union all select * from zero),
q as (
    select sp.rid, sp.entity as e, sp.ts as t,
        a.c as c_t, a.s as s_t, a.s2 as s2_t, a.sa as sa_t
    from sp asof left join pre0 a on a.e = sp.entity and a.ts <= sp.ts
),
at_w as (
    select q.*,
        m.c as c_1m, h.c as c_1h, d.sa as sa_1d, w.c as c_7d, w.s as s_7d, w.s2 as s2_7d
    from q
    asof left join pre0 m on m.e = q.e and m.ts <= q.t - 60000
    asof left join pre0 h on h.e = q.e and h.ts <= q.t - 3600000
    asof left join pre0 d on d.e = q.e and d.ts <= q.t - 86400000
    asof left join pre0 w on w.e = q.e and w.ts <= q.t - 604800000
), sums as (
    select rid,
        coalesce(c_t, 0) - coalesce(c_1m, 0) as card_txn_count_1m,
        coalesce(c_t, 0) - coalesce(c_1h, 0) as card_txn_count_1h,
        (coalesce(sa_t, 0) - coalesce(sa_1d, 0))::double as card_amount_sum_1d,
        case when coalesce(c_t, 0) - coalesce(c_7d, 0) = 0 then null
             else ((coalesce(s_t, 0) - coalesce(s_7d, 0)) / (coalesce(c_t, 0) - coalesce(c_7d, 0)))::double end as card_amount_avg_7d,
        case when coalesce(c_t, 0) - coalesce(c_7d, 0) = 0 then null else
             sqrt(greatest(0, ((coalesce(s2_t, 0) - coalesce(s2_7d, 0)) * (coalesce(c_t, 0) - coalesce(c_7d, 0))
                   - (coalesce(s_t, 0) - coalesce(s_7d, 0)) * (coalesce(s_t, 0) - coalesce(s_7d, 0)))::double))
                  / (coalesce(c_t, 0) - coalesce(c_7d, 0)) end as card_amount_stddev_7d
    from at_w
), rest_u as (
    select card_id as e, ts, 0 as kind, seq, amount, approved, city, merchant, null::bigint as rid from txd
    union all
    select entity, ts, 1, 0, null, null, null, null, rid from sp
), rest as (
    select rid, kind,
        max(amount) over (partition by e order by ts range between 86399999 preceding and current row) as card_amount_max_1d,
        min(amount) filter (where approved) over w7d as card_amount_min_7d,
        last_value(city ignore nulls) over (partition by e order by ts, kind, seq rows between unbounded preceding and current row) as card_last_city,
        count(distinct merchant) over w7d as card_merchants_7d
    from rest_u
    window w7d as (partition by e order by ts range between 604799999 preceding and current row)
    qualify kind = 1
), clp as (
    select user_id as e, ts, count(*) over (partition by user_id order by ts range between unbounded preceding and current row) as c
    from cl qualify row_number() over (partition by user_id, ts order by seq desc) = 1
), clk as (
    select sp.rid, coalesce(a.c, 0) - coalesce(b.c, 0) as user_clicks_1h
    from sp asof left join clp a on a.e = sp.entity and a.ts <= sp.ts
            asof left join clp b on b.e = sp.entity and b.ts <= sp.ts - 3600000
), life as (
    select sp.rid, coalesce(a.c, 0) as card_txn_count_lifetime
    from sp asof left join pre a on a.e = sp.entity and a.ts <= (sp.ts // 86400000) * 86400000
), pages_u as (
    select user_id as e, ts, 0 as kind, page, null::bigint as rid from cl
    union all
    select entity, (ts // 86400000) * 86400000, 1, null, rid from sp
), pages as (
    select rid, kind, count(distinct page) over (partition by e order by ts range between 86399999 preceding and current row) as user_pages_1d
    from pages_u qualify kind = 1
)
select sp.rid, card_txn_count_1m, card_txn_count_1h, card_amount_sum_1d, card_amount_avg_7d, card_amount_max_1d,
       card_amount_min_7d, card_last_city, card_merchants_7d, card_amount_stddev_7d, card_txn_count_lifetime,
       user_clicks_1h, user_pages_1d
from sp join sums using (rid) join rest using (rid) join clk using (rid) join life using (rid) join pages using (rid)
"""

FEATURES = [
    "card_txn_count_1m", "card_txn_count_1h", "card_amount_sum_1d", "card_amount_avg_7d", "card_amount_max_1d",
    "card_amount_min_7d", "card_last_city", "card_merchants_7d", "card_amount_stddev_7d", "card_txn_count_lifetime",
    "user_clicks_1h", "user_pages_1d",
]
FLOATS = {"card_amount_sum_1d", "card_amount_avg_7d", "card_amount_max_1d", "card_amount_min_7d", "card_amount_stddev_7d"}


def run(args):
    result = subprocess.run([FSDB, *args], check=True, capture_output=True, text=True)
    return result.stdout


def fsdb_training_set(data, gen, out):
    """(seconds computing, seconds for the whole process, the process's peak RSS in MiB).

    The peak RSS is fsdb's own report (VmHWM): getrusage's ru_maxrss of a child forked from
    this process would include this process's RSS (DuckDB's tables) at the fork."""
    start = time.perf_counter()
    report = json.loads(run(["--data", data, "training-set", "--spine", os.path.join(gen, "spine.csv"), "--out", out]))
    return report["seconds_computing"], time.perf_counter() - start, report["peak_rss_bytes"] / (1 << 20)


def duckdb_query(con, sql):
    start = time.perf_counter()
    con.execute(f"create or replace table result as {sql}")
    return time.perf_counter() - start


def compare(con, fsdb_out, name):
    con.execute(f"create or replace table f as select row_number() over () - 1 as rid, * from read_parquet('{fsdb_out}')")
    mismatches = {}
    for feature in FEATURES:
        if feature in FLOATS:
            differ = f"not ((f.{feature} is null and r.{feature} is null) or abs(f.{feature} - r.{feature}) <= 1e-9 * greatest(abs(f.{feature}), abs(r.{feature}), 1e-300))"
        else:
            differ = f"f.{feature} is distinct from r.{feature}"
        count = con.execute(f"select count(*) from f join result r using (rid) where {differ}").fetchone()[0]
        mismatches[feature] = count
        if count:
            example = con.execute(f"select rid, f.entity, f.ts, f.{feature}, r.{feature} from f join result r using (rid) where {differ} limit 3").fetchall()
            print(f"  {name}: {feature}: {count} differences, e.g. {example}")
    rows = con.execute("select count(*) from f join result r using (rid)").fetchone()[0]
    return rows, mismatches


def main():
    scale = sys.argv[1] if len(sys.argv) > 1 else "M"
    work = os.path.join(ROOT, "target", f"bench-duckdb-{scale}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    gen, data, out = os.path.join(work, "gen"), os.path.join(work, "db"), os.path.join(work, "fsdb.parquet")
    print(f"generating scale {scale} in {work} ...")
    print(run(["generate", "--scale", scale, "--out", gen]).strip().replace("\n", " "))
    run(["--data", data, "apply", os.path.join(gen, "definitions.toml")])
    start = time.perf_counter()
    run(["--data", data, "ingest", "--stream", "transactions", os.path.join(gen, "transactions.csv")])
    run(["--data", data, "ingest", "--stream", "clicks", os.path.join(gen, "clicks.csv")])
    print(f"fsdb ingested the CSVs in {time.perf_counter() - start:.1f}s (not part of the comparison)")

    con = duckdb.connect()
    con.execute("set threads = 2")
    start = time.perf_counter()
    con.execute(f"create table tx as select *, row_number() over () as seq from read_csv('{gen}/transactions.csv')")
    con.execute("create table txd as select * from tx qualify row_number() over (partition by txn_id order by seq) = 1")
    con.execute(f"create table cl as select *, row_number() over () as seq from read_csv('{gen}/clicks.csv')")
    con.execute(f"create table sp as select row_number() over () - 1 as rid, entity, ts, label from read_csv('{gen}/spine.csv')")
    rows = con.execute("select count(*) from sp").fetchone()[0]
    print(f"duckdb {duckdb.__version__} loaded the same CSVs in {time.perf_counter() - start:.1f}s (not part of the comparison); spine: {rows} rows")

    timings = {"fsdb (compute)": [], "fsdb (process: open, read spine, compute, write parquet)": [], "duckdb window SQL": [], "duckdb asof+prefix SQL": []}
    peak_rss_mib = 0.0
    verdicts = {}
    for round_ in range(2):
        compute, total, rss = fsdb_training_set(data, gen, out)
        peak_rss_mib = max(peak_rss_mib, rss)
        timings["fsdb (compute)"].append(compute)
        timings["fsdb (process: open, read spine, compute, write parquet)"].append(total)
        for name, sql in [("duckdb window SQL", WINDOW_SQL), ("duckdb asof+prefix SQL", ASOF_SQL)]:
            timings[name].append(duckdb_query(con, sql))
            if round_ == 0:
                joined, mismatches = compare(con, out, name)
                verdicts[name] = (joined, sum(mismatches.values()))
    print()
    for name, values in timings.items():
        print(f"{name:60s} best {min(values):7.2f}s  ({rows / min(values):,.0f} spine rows/s)")
    print(f"fsdb training-set peak RSS: {peak_rss_mib:,.0f} MiB")
    for name, (joined, bad) in verdicts.items():
        print(f"{name}: {joined} rows compared with fsdb, {bad} values differ")
    best_duckdb = min(min(timings["duckdb window SQL"]), min(timings["duckdb asof+prefix SQL"]))
    fsdb_compute = min(timings["fsdb (compute)"])
    fsdb_total = min(timings["fsdb (process: open, read spine, compute, write parquet)"])
    print(f"ratio: duckdb best / fsdb compute = {best_duckdb / fsdb_compute:.2f}x; / fsdb whole process = {best_duckdb / fsdb_total:.2f}x")
    if any(bad for _, bad in verdicts.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
