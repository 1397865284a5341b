#!/usr/bin/env python3
"""The long-range suite (issue 23): adstore `metrics` vs adstore `events` vs
ClickHouse (chDB) answering from its own hourly rollup, on 30 days of events.

    benches/run.sh --suite longrange [--events N] [--span 30d] [--engines adstore,chdb] [--threads 2]

run.sh builds adstore (release) and the virtualenv, then calls `longrange.py run`:

    adstore gen --span 30d ──► benches/out/events-N-s42-30d.ndjson (cached, as the default suite's)
        │
        ├─► adstore serve (fresh data dir, free port, fsync on, the default rollups
        │   unless --adstore-config says otherwise)
        │     adstore ingest --backfill        every event accepted: the file spans 30 days, and
        │                                      without ?mode=backfill all but the newest 24 h would
        │                                      be `late`; the run fails on any rejected line
        │     settle: head sealed, every segment final, GET /v1/rollups all `complete`,
        │             /v1/segments counts unchanged for --quiet-s seconds
        │     counts by type from `events` and `metrics`, checked against the ingest summary
        │     per query: `metrics` and `events` (warm-up + median of --runs), EXPLAIN's `reads`
        │
        ├─► worker process: chDB (max_threads = N)
        │     events MergeTree ──materialized view──► events_hourly SummingMergeTree
        │     (the Kafka + ClickHouse pipeline's hourly rollup, filled at insert), loaded from
        │     the same NDJSON de-duplicated as adstore does; OPTIMIZE FINAL both; counts; the
        │     suite on events_hourly (timed) and on events (for reference)
        │
        └─► compare (exit 1 on a mismatch): metrics = events (every column); chDB rollup =
            metrics (the columns both can compute, see longrange.toml); chDB raw = chDB rollup;
            counts equal everywhere ─► benches/out/longrange/report.md, results.json

The report gives per query the two targets of the issue: `events` / `metrics`
at least 20x, chDB rollup / `metrics` at least 2x. A missed target is
reported, not an error (the run measures; exit 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import harness
from harness import (
    BenchError, AdstoreServer, GEN_SEED, GEN_START, HOT_ADVERTISER, HOT_CAMPAIGN, compare_results, dir_bytes,
    log, median_ms, normalize_rows, parse_ingest_summary, peak_rss_bytes_self, run_ingest, run_timed,
    settle_machine,
)

HERE = Path(__file__).resolve().parent
ENGINES = ("adstore", "chdb")
# Sources a query is asked of, and the key of its SQL in longrange.toml.
SOURCES = ("metrics", "events", "chdb", "chdb_events")
TARGET_EVENTS_OVER_METRICS = 20.0
TARGET_CHDB_OVER_METRICS = 2.0
# The 7-day query needs 7 days; the generator's trailing clicks reach 2 h past the span.
MIN_SPAN_DAYS = 7
TYPES = ("click", "conversion", "impression")


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------


def placeholders(start: str, span_days: int) -> dict:
    s = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    fmt = lambda t: t.strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    end = s + dt.timedelta(days=span_days)
    return {"start": fmt(s), "end": fmt(end), "week_start": fmt(end - dt.timedelta(days=7)),
            "campaign": HOT_CAMPAIGN, "adv": HOT_ADVERTISER}


def load_suite(path: Path, ph: dict):
    """The queries of `path`, each with its rendered SQL per source."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    suite = []
    for q in doc.get("query", []):
        name = q.get("name", "?")
        for key in ("name", "description") + tuple(f"sql_{s}" for s in SOURCES):
            if key not in q:
                raise BenchError(f"{path}: query {name} lacks `{key}`")
        sql = {}
        for s in SOURCES:
            try:
                sql[s] = q[f"sql_{s}"].format(**ph).strip()
            except KeyError as err:
                raise BenchError(f"{path}: query {name}: unknown placeholder {err}") from None
        suite.append({"name": name, "description": q["description"], "sql": sql,
                      "chdb_columns": q.get("chdb_columns")})
    if not suite:
        raise BenchError(f"{path}: no [[query]] entries")
    return suite


def project(result: dict, columns) -> dict:
    """`result` with only `columns` (by name, in that order); all of it when `columns` is None."""
    if columns is None:
        return result
    missing = [c for c in columns if c not in result["columns"]]
    if missing:
        raise BenchError(f"result columns {result['columns']} lack {missing}")
    idx = [result["columns"].index(c) for c in columns]
    return {"columns": list(columns), "rows": [[r[i] for i in idx] for r in result["rows"]]}


# ---------------------------------------------------------------------------
# chDB: events MergeTree + hourly SummingMergeTree filled by a materialized view
# ---------------------------------------------------------------------------

HOURLY_DDL = """
CREATE TABLE events_hourly (
    hour DateTime('UTC'),
    advertiser_id LowCardinality(String),
    campaign_id LowCardinality(String),
    events UInt64,
    impressions UInt64,
    clicks UInt64,
    conversions UInt64,
    cost_micros Int64
) ENGINE = SummingMergeTree ORDER BY (advertiser_id, campaign_id, hour)
"""
# Runs on every block inserted into `events`, as a Kafka engine table's view
# would on every batch it consumes.
HOURLY_VIEW = """
CREATE MATERIALIZED VIEW events_hourly_mv TO events_hourly AS
SELECT toStartOfHour(ts) AS hour, advertiser_id, campaign_id,
       count() AS events,
       countIf(type = 'impression') AS impressions,
       countIf(type = 'click') AS clicks,
       countIf(type = 'conversion') AS conversions,
       sum(cost_micros) AS cost_micros
FROM events
GROUP BY hour, advertiser_id, campaign_id
"""


def chdb_worker(args, suite):
    import chdb
    from chdb import session

    db_dir = Path(args.dir)
    shutil.rmtree(db_dir, ignore_errors=True)
    db_dir.mkdir(parents=True)
    sess = session.Session(str(db_dir))
    for setting in (f"max_threads = {args.threads}", f"max_insert_threads = {args.threads}",
                    "session_timezone = 'UTC'", "output_format_json_quote_64bit_integers = 0",
                    "output_format_json_quote_decimals = 0"):
        sess.query(f"SET {setting}")

    # The same table and de-duplicated load as the default suite's chDB worker.
    def col_type(c):
        if c == "ts":
            return "DateTime64(3, 'UTC')"
        if c in ("cost_micros", "value_micros"):
            return "Int64"
        base = "String" if c in harness.REQUIRED else "Nullable(String)"
        return f"LowCardinality({base})" if c in harness.DIMENSIONS else base

    cols = harness.COLUMN_ORDER
    ddl = ", ".join(f"{c} {col_type(c)}" for c in cols)
    sess.query("CREATE DATABASE IF NOT EXISTS bench")
    sess.query("USE bench")
    sess.query(f"CREATE TABLE events ({ddl}) ENGINE = MergeTree ORDER BY (advertiser_id, campaign_id, ts)")
    sess.query(HOURLY_DDL)
    sess.query(HOURLY_VIEW)
    in_struct = ", ".join(
        f"{c} Int64" if c == "ts" else f"{c} Nullable(Int64)" if c in ("cost_micros", "value_micros")
        else f"{c} {'String' if c in harness.REQUIRED else 'Nullable(String)'}"
        for c in cols
    )
    select = ", ".join(
        "fromUnixTimestamp64Milli(ts, 'UTC') AS ts" if c == "ts"
        else f"ifNull({c}, 0) AS {c}" if c in ("cost_micros", "value_micros")
        else c
        for c in cols
    )
    data = str(Path(args.data).resolve()).replace("'", "\\'")
    settle_machine(Path(args.data).resolve())
    t = time.perf_counter()
    sess.query(f"INSERT INTO events SELECT {select} FROM file('{data}', 'JSONEachRow', '{in_struct}') "
               f"LIMIT 1 BY publisher_id, type, event_id")
    load_s = time.perf_counter() - t
    # Merge the parts: the raw table into one, the rollup's rows of one key into one.
    t = time.perf_counter()
    sess.query("OPTIMIZE TABLE events FINAL")
    sess.query("OPTIMIZE TABLE events_hourly FINAL")
    settle_s = time.perf_counter() - t

    def csv(sql):
        return sess.query(sql, "CSV").data().strip()

    rows = int(csv("SELECT count() FROM events"))
    by_type = {}
    for line in csv("SELECT type, count() FROM events GROUP BY type ORDER BY type").splitlines():
        k, v = line.split(",")
        by_type[k.strip('"')] = int(v)
    r = csv("SELECT sum(impressions), sum(clicks), sum(conversions), sum(events), count() FROM events_hourly")
    imp, clk, conv, ev, hourly_rows = (int(x) for x in r.split(","))
    rollup_by_type = {"impression": imp, "click": clk, "conversion": conv}
    tables = {}
    for line in csv("SELECT table, count(), sum(rows), sum(bytes_on_disk) FROM system.parts "
                    "WHERE active AND database = 'bench' GROUP BY table").splitlines():
        name, parts, prow, pbytes = line.split(",")
        tables[name.strip('"')] = {"parts": int(parts), "rows": int(prow), "bytes": int(pbytes)}
    rss_load = peak_rss_bytes_self()

    def query(sql):
        def fn():
            return sess.query(sql, "JSONCompact").data()
        return fn

    settle_machine()
    busy = OtherCpu(os.getpid())
    results = {}
    for q in suite:
        for source in ("chdb", "chdb_events"):
            raw, times = run_timed(query(q["sql"][source]), args.runs)
            doc = json.loads(raw)
            types = [m["type"] for m in doc["meta"]]
            results.setdefault(q["name"], {})[source] = {
                "columns": [m["name"] for m in doc["meta"]], "rows": normalize_rows(doc["data"], types),
                "times_s": times}
    version = csv("SELECT version()").strip('"')
    sess.close()
    return {"engine": "chdb", "version": f"chdb {chdb.__version__} (ClickHouse {version})", "load_s": load_s,
            "settle_s": settle_s, "rows": rows, "by_type": by_type, "rollup_by_type": rollup_by_type,
            "rollup_events": ev, "hourly_rows": hourly_rows, "tables": tables,
            "bytes_on_disk": dir_bytes(db_dir), "peak_rss_load_bytes": rss_load,
            "peak_rss_bytes": peak_rss_bytes_self(), "queries": results, "other_cpu": busy.stop()}


def run_chdb(data: Path, out: Path, suite_file: Path, threads: int, runs: int) -> dict:
    result = out / "result-chdb.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", "--data", str(data),
           "--dir", str(out / "chdb-data"), "--suite", str(suite_file), "--threads", str(threads),
           "--runs", str(runs), "--result", str(result)]
    t = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0 or not result.exists():
        raise BenchError(f"the chDB worker failed (exit {proc.returncode}); see its output above")
    with open(result) as f:
        res = json.load(f)
    log(f"chdb: loaded {res['rows']:,} rows ({res['hourly_rows']:,} hourly rollup rows) in {res['load_s']:.2f} s "
        f"(+{res['settle_s']:.2f} s OPTIMIZE FINAL), suite done; {time.perf_counter() - t:.1f} s in all")
    return res


# ---------------------------------------------------------------------------
# adstore
# ---------------------------------------------------------------------------


class OtherCpu:
    """CPU seconds the whole machine spends, less the engine's process and
    this one, from now until `stop()`: what other work (a build, someone
    else's tests) took from the cores while queries were timed."""

    def __init__(self, engine_pid: int):
        self.engine_pid = engine_pid
        self.start = (time.perf_counter(), self.machine_busy_s(), self.own_s())

    def own_s(self) -> float:
        own = harness.cpu_seconds(self.engine_pid)
        if self.engine_pid != os.getpid():
            own += harness.cpu_seconds(os.getpid())
        return own

    @staticmethod
    def machine_busy_s() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict:
        t0, busy0, own0 = self.start
        other = (self.machine_busy_s() - busy0) - (self.own_s() - own0)
        return {"wall_s": time.perf_counter() - t0, "other_s": max(other, 0.0)}


def settle_state(server: AdstoreServer):
    """(settled, what was seen): head empty, nothing to finalize, every
    segment final, every rollup of GET /v1/rollups complete, no billing
    snapshot pending."""
    seg = server.get_json("/v1/segments")
    roll = server.get_json("/v1/rollups").get("rollups", [])
    raw, rollup_segs = seg.get("segments", []), seg.get("rollups", [])
    state = {
        "head_rows": seg.get("head", {}).get("rows", 0),
        "finalize_pending_buckets": seg.get("finalize_pending_buckets", 0),
        "raw_segments": len(raw),
        "raw_not_final": sum(1 for s in raw if not s.get("is_final", False)),
        "rollup_segments": len(rollup_segs),
        "rollups": {r["name"]: {k: r.get(k) for k in ("granularity", "segments", "raw_segments", "without",
                                                      "rows", "bytes", "complete")} for r in roll},
    }
    settled = (state["head_rows"] == 0 and state["finalize_pending_buckets"] == 0 and state["raw_not_final"] == 0
               and all(r.get("complete") is True for r in roll) and server.rolled_up())
    return settled, state


def wait_settled(server: AdstoreServer, quiet_s: float, timeout_s: float):
    """Waits until the store is settled and its segment counts have not
    moved for `quiet_s` (a rollup task or a re-seal may still be adding
    segments when the flags first read true): (seconds until the counts
    stopped moving, the last state seen)."""
    t = time.perf_counter()
    since, last = None, None
    while True:
        settled, state = settle_state(server)
        counts = (state["raw_segments"], state["rollup_segments"],
                  tuple((n, r["segments"]) for n, r in sorted(state["rollups"].items())))
        now = time.perf_counter()
        if not settled or counts != last:
            since, last = now, counts
        elif now - since >= quiet_s:
            return since - t, state
        if now - t > timeout_s:
            raise BenchError(f"adstore: not settled after {timeout_s:.0f} s: {json.dumps(state)}")
        time.sleep(0.5)


def adstore_json(server: AdstoreServer, sql: str) -> dict:
    status, body = server.sql(sql)
    if status != 200:
        raise BenchError(f"adstore: HTTP {status}: {body[:500].decode(errors='replace')}\n{sql}")
    return json.loads(body)


def adstore_time(server: AdstoreServer, sql: str, runs: int) -> dict:
    """Warm-up + `runs` timed calls (client wall time); rows of the warm-up,
    stats and the median engine-reported elapsed_ms of the timed calls."""
    bodies = []

    def fn():
        status, body = server.sql(sql)
        if status != 200:
            raise BenchError(f"adstore: HTTP {status}: {body[:500].decode(errors='replace')}\n{sql}")
        bodies.append(body)

    _, times = run_timed(fn, runs)
    docs = [json.loads(b) for b in bodies]
    first = docs[0]
    types = [c.get("type", "") for c in first["columns"]]
    elapsed = [float(d["stats"]["elapsed_ms"]) for d in docs[1:] if "elapsed_ms" in d.get("stats", {})]
    return {"columns": [c["name"] for c in first["columns"]], "rows": normalize_rows(first["rows"], types),
            "times_s": times, "engine_elapsed_ms": statistics.median(elapsed) if elapsed else None,
            "stats": first.get("stats")}


def adstore_explain(server: AdstoreServer, sql: str) -> list:
    doc = adstore_json(server, "EXPLAIN " + sql)
    return [[str(c) for c in r] for r in doc["rows"]]


def explain_value(rows, prop: str):
    return next((r[1] for r in rows if r and r[0] == prop), None)


def adstore_side(args, data: Path, out: Path, suite) -> dict:
    binary = Path(args.bin).resolve()
    server_bin = Path(args.server_bin).resolve() if args.server_bin else binary
    config = Path(args.adstore_config).resolve() if args.adstore_config else None
    data_dir = out / "adstore-data"
    settle_machine(data)
    server = AdstoreServer(server_bin, data_dir, out / "adstore-serve.log", args.threads, config)
    try:
        log(f"adstore: ingest --backfill {data.name} into {data_dir} ({server.url})")
        ingest_s, proc, cpu = run_ingest(binary, data, server, "ndjson", "ndjson")
        summary = parse_ingest_summary(proc.stdout)
        log(f"adstore: {args.events:,} events in {ingest_s:.1f} s; accepted {summary.get('accepted')}, "
            f"duplicates {summary.get('duplicates')}, rejected {summary.get('rejected')}")
        if summary.get("rejected") or summary.get("accepted", 0) + summary.get("duplicates", 0) != args.events:
            raise BenchError(f"adstore ingest did not take every event:\n{proc.stdout}\n{proc.stderr}")
        t_ingested = time.perf_counter()
        seal_s = server.wait_sealed(timeout_s=args.settle_timeout_s)
        log(f"adstore: sealed after {seal_s:.1f} s, every segment final after {server.final_s:.1f} s")
        _, state = wait_settled(server, args.quiet_s, args.settle_timeout_s)
        settled_s = time.perf_counter() - t_ingested
        log(f"adstore: settled (rollups complete, segment counts still for {args.quiet_s:.0f} s) "
            f"{settled_s:.1f} s after the ingest ended: {state['raw_segments']} raw segments, "
            f"{state['rollup_segments']} rollup segments; rollups: "
            + ", ".join(f"{n} ({r['granularity']}, {r['segments']} segments, {r['rows']:,} rows)"
                        for n, r in state["rollups"].items()))

        # Every accepted event, in both tables.
        ev = adstore_json(server, "SELECT type, count(*) FROM events GROUP BY type ORDER BY type")
        by_type = {r[0]: int(r[1]) for r in ev["rows"]}
        m = adstore_json(server, "SELECT sum(impressions), sum(clicks), sum(conversions) FROM metrics")
        metrics_by_type = dict(zip(("impression", "click", "conversion"), (int(x or 0) for x in m["rows"][0])))
        metrics_source = m.get("stats", {}).get("source")

        settle_machine()
        busy = OtherCpu(server.proc.pid)
        results, explains = {}, {}
        for q in suite:
            for source in ("metrics", "events"):
                r = adstore_time(server, q["sql"][source], args.runs)
                results.setdefault(q["name"], {})[source] = r
            rows = adstore_explain(server, q["sql"]["metrics"])
            explains[q["name"]] = rows
            for source, plan in (("metrics", rows), ("events", adstore_explain(server, q["sql"]["events"]))):
                (out / f"explain-{q['name']}-{source}.txt").write_text(
                    "\n".join(f"{p}\t{v}" for p, v in plan) + "\n")
            mr = results[q["name"]]["metrics"]
            log(f"adstore: {q['name']}: metrics {median_ms(mr['times_s']):.1f} ms, events "
                f"{median_ms(results[q['name']]['events']['times_s']):.1f} ms; metrics reads: "
                f"{explain_value(rows, 'reads')}")
        segs = server.get_json("/v1/segments")
        fig = {
            "ingest_s": ingest_s, "summary": summary, "server_cpu_s": cpu["server_cpu_s"],
            "seal_wait_s": seal_s, "final_wait_s": server.final_s, "settled_wait_s": settled_s,
            "state": state, "by_type": by_type, "metrics_by_type": metrics_by_type,
            "metrics_count_source": metrics_source,
            "segment_rows": sum(s.get("rows", 0) for s in segs.get("segments", [])),
            "bytes_on_disk": dir_bytes(data_dir), "peak_rss_bytes": server.sampler.stop(),
            "queries": results, "explain": explains, "other_cpu": busy.stop(),
        }
    finally:
        server.stop()
    ver = subprocess.run([str(server_bin), "--version"], capture_output=True, text=True).stdout.strip()
    fig["version"] = ver or "adstore"
    return fig


# ---------------------------------------------------------------------------
# Comparison and report
# ---------------------------------------------------------------------------


def check_counts(ctx) -> list:
    """Every loaded event in every table: by type, and in total against the ingest summary."""
    seen = {}
    ad, ch = ctx.get("adstore"), ctx.get("chdb")
    if ad:
        seen["adstore events"] = ad["by_type"]
        seen["adstore metrics"] = ad["metrics_by_type"]
        accepted = ad["summary"].get("accepted")
        if sum(ad["by_type"].values()) != accepted or ad["segment_rows"] != accepted:
            return [f"adstore: ingest accepted {accepted}, `events` holds {sum(ad['by_type'].values())}, "
                    f"segments {ad['segment_rows']} rows"]
    if ch:
        seen["chdb events"] = ch["by_type"]
        seen["chdb events_hourly"] = ch["rollup_by_type"]
        if ch["rollup_events"] != ch["rows"]:
            return [f"chdb: events holds {ch['rows']} rows, events_hourly counts {ch['rollup_events']}"]
    norm = {k: {t: v.get(t, 0) for t in TYPES} for k, v in seen.items()}
    if len({json.dumps(v, sort_keys=True) for v in norm.values()}) > 1:
        return ["event counts by type differ:\n" + "\n".join(f"  {k}: {v}" for k, v in norm.items())]
    return []


def compare_all(ctx) -> list:
    mismatches = []
    for q in ctx["suite"]:
        name = q["name"]
        res = {}
        if ctx.get("adstore"):
            res.update(ctx["adstore"]["queries"][name])
        if ctx.get("chdb"):
            res.update(ctx["chdb"]["queries"][name])
        pairs = []
        if "metrics" in res and "events" in res:
            pairs.append(("adstore metrics", res["metrics"], "adstore events", res["events"]))
        if "metrics" in res and "chdb" in res:
            cols = q["chdb_columns"]
            pairs.append(("adstore metrics", project(res["metrics"], cols), "chdb rollup", project(res["chdb"], cols)))
        if "chdb" in res and "chdb_events" in res:
            pairs.append(("chdb rollup", res["chdb"], "chdb events", res["chdb_events"]))
        for a_name, a, b_name, b in pairs:
            diffs = compare_results(a_name, a, b_name, b)
            if diffs:
                mismatches.append(f"query {name}:\n" + "\n".join(diffs))
        if not any(r["rows"] for r in res.values()):
            mismatches.append(f"query {name}: no source returned a row (a placeholder or the data is off)")
    return mismatches


def query_table(ctx):
    """Per query: {source: median ms}, ratios and whether each target is met."""
    rows = []
    for q in ctx["suite"]:
        med = {}
        for side in ("adstore", "chdb"):
            if ctx.get(side):
                for source, r in ctx[side]["queries"][q["name"]].items():
                    med[source] = median_ms(r["times_s"])
        ev = med["events"] / med["metrics"] if "events" in med and "metrics" in med else None
        ch = med["chdb"] / med["metrics"] if "chdb" in med and "metrics" in med else None
        rows.append({"name": q["name"], "ms": med, "events_over_metrics": ev, "chdb_over_metrics": ch,
                     "events_target_met": None if ev is None else ev >= TARGET_EVENTS_OVER_METRICS,
                     "chdb_target_met": None if ch is None else ch >= TARGET_CHDB_OVER_METRICS})
    return rows


def fmt_ratio(r, target):
    if r is None:
        return "n/a"
    num = f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"
    return f"{num} {'(met)' if r >= target else '(MISSED)'}"


def write_report(out: Path, ctx: dict) -> Path:
    fm = harness.fmt_ms
    ad, ch = ctx.get("adstore"), ctx.get("chdb")
    machine = ctx["machine"]
    lines = [
        "# adstore long-range benchmark (issue 23)", "",
        f"Generated by `{ctx['command']}` on {ctx['when']} (UTC).", "",
        f"- Dataset: {ctx['events']:,} generated events (`adstore gen --seed {GEN_SEED} --start {GEN_START} "
        f"--span {ctx['span_days']}d`), {harness.fmt_bytes(ctx['data_bytes'])} of NDJSON"
        + (f"; {sum(ad['by_type'].values()):,} events after de-duplication" if ad else "") + ".",
        f"- Each engine limited to {ctx['threads']} threads and run alone. Query times: client-side wall "
        f"time, median of {ctx['runs']} runs after one warm-up.",
        "- CPU time that other processes (not the engine, not the harness) used while each engine's queries "
        "ran, to show whether the machine was shared: "
        + "; ".join(f"{name} {side['other_cpu']['other_s']:.1f} s in {side['other_cpu']['wall_s']:.1f} s"
                    for name, side in (("adstore", ad), ("chDB", ch)) if side and "other_cpu" in side) + ".",
        f"- Machine: {machine['nproc']} x {machine['cpu']}, {machine['memory']}; "
        + "; ".join(f"{k}: {v}" for k, v in ctx["versions"].items()) + ".",
        "",
        "## Queries (median ms)", "",
        f"| query | adstore metrics | adstore events | events / metrics (target >= {TARGET_EVENTS_OVER_METRICS:g}x) "
        f"| chDB hourly rollup | chDB rollup / metrics (target >= {TARGET_CHDB_OVER_METRICS:g}x) "
        "| chDB raw events | rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in query_table(ctx):
        ms = row["ms"]
        n = next((len(s["rows"]) for side in (ad, ch) if side for s in side["queries"][row["name"]].values()), 0)
        lines.append(f"| {row['name']} | {fm(ms.get('metrics'))} | {fm(ms.get('events'))} "
                     f"| {fmt_ratio(row['events_over_metrics'], TARGET_EVENTS_OVER_METRICS)} "
                     f"| {fm(ms.get('chdb'))} | {fmt_ratio(row['chdb_over_metrics'], TARGET_CHDB_OVER_METRICS)} "
                     f"| {fm(ms.get('chdb_events'))} | {n:,} |")
    if ad:
        lines += ["", "What each adstore `metrics` query read (EXPLAIN's `reads`; the full plans are in "
                  "`explain-<query>-<table>.txt` beside this report), and adstore's own `stats.elapsed_ms` (median):", ""]
        for q in ctx["suite"]:
            r = ad["queries"][q["name"]]
            lines.append(f"- **{q['name']}**: reads `{explain_value(ad['explain'][q['name']], 'reads')}`; "
                         f"elapsed_ms metrics {fm(r['metrics']['engine_elapsed_ms'])}, "
                         f"events {fm(r['events']['engine_elapsed_ms'])}")
    lines += ["", "## The suite", ""]
    for q in ctx["suite"]:
        cmp = ", ".join(q["chdb_columns"]) if q["chdb_columns"] else "every column"
        lines.append(f"- **{q['name']}**: {q['description']}. Compared with chDB on: {cmp}.")
    lines += ["", "SQL per source in `benches/longrange.toml` (its header says why spend is compared only "
              "between adstore's two tables). Results: adstore `metrics` = `events` on every column, chDB's rollup "
              "= `metrics` on the columns above, chDB raw = chDB rollup; "
              + ("all agreed." if not ctx["mismatches"] else "SOME DIFFERED (see the run log)."), ""]
    if ad:
        st = ad["state"]
        lines += ["## Loads", "",
                  f"- adstore: `adstore ingest --backfill` {ad['ingest_s']:.1f} s (accepted "
                  f"{ad['summary'].get('accepted', 0):,}, duplicates {ad['summary'].get('duplicates', 0):,}, rejected "
                  f"{ad['summary'].get('rejected', 0)}); sealed {ad['seal_wait_s']:.1f} s later, every segment final "
                  f"after {ad['final_wait_s']:.1f} s, settled {ad['settled_wait_s']:.1f} s after the ingest "
                  f"(rollups complete, segment counts still for {ctx['quiet_s']:g} s); "
                  f"{st['raw_segments']:,} raw segments, {st['rollup_segments']:,} rollup segments; "
                  f"data dir {harness.fmt_bytes(ad['bytes_on_disk'])}; peak RSS {harness.fmt_bytes(ad['peak_rss_bytes'])}.",
                  "- adstore rollups: " + "; ".join(
                      f"{n} ({r['granularity']}): {r['segments']:,} segments, {r['rows']:,} rows, "
                      f"{harness.fmt_bytes(r['bytes'])}" for n, r in st["rollups"].items()) + "."]
    if ch:
        t = ch["tables"]
        lines += [f"- chDB: `INSERT ... SELECT FROM file(JSONEachRow) LIMIT 1 BY publisher_id, type, event_id` into "
                  f"`events` (MergeTree ORDER BY advertiser_id, campaign_id, ts), whose materialized view fills "
                  f"`events_hourly` (SummingMergeTree ORDER BY advertiser_id, campaign_id, hour): {ch['load_s']:.1f} s, "
                  f"`OPTIMIZE FINAL` of both {ch['settle_s']:.1f} s; events {ch['rows']:,} rows in "
                  f"{t.get('events', {}).get('parts', '?')} part(s), events_hourly {ch['hourly_rows']:,} rows "
                  f"({harness.fmt_bytes(t.get('events_hourly', {}).get('bytes'))}); peak RSS "
                  f"{harness.fmt_bytes(ch['peak_rss_bytes'])}."]
    if not ctx["mismatches"]:
        tables = (["adstore `events`", "adstore `metrics`"] if ad else []) + (
            ["chDB `events`", "chDB `events_hourly`"] if ch else [])
        lines += ["", f"Event counts by type agree across {', '.join(tables)}"
                  + (", and with adstore's ingest summary." if ad else "."), ""]
    if ctx.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in ctx["notes"]] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------


def run_main(args) -> int:
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            raise BenchError(f"the long-range suite runs {', '.join(ENGINES)}; not {e!r}")
    if not engines:
        raise BenchError("--engines is empty")
    span_days = args.span_days
    if span_days < MIN_SPAN_DAYS:
        raise BenchError(f"--span {span_days}d: the suite's 7-day query needs at least {MIN_SPAN_DAYS}d")
    start = dt.datetime.fromisoformat(GEN_START.replace("Z", "+00:00"))
    trail = dt.timedelta(hours=2)
    if start + dt.timedelta(days=span_days) + trail > dt.datetime.now(dt.timezone.utc):
        raise BenchError(f"--span {span_days}d from {GEN_START} reaches past now: events would be rejected "
                         "as `future`")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    gen_dir = Path(args.gen_dir).resolve()
    gen_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ph = placeholders(GEN_START, span_days)
    suite = load_suite(Path(args.queries), ph)
    suite_file = out / "suite.json"
    suite_file.write_text(json.dumps(suite, indent=1))
    data = harness.generate(Path(args.bin).resolve(), gen_dir, args.events, span_days=span_days)
    ctx = {"engines": engines, "suite": suite, "events": args.events, "span_days": span_days,
           "threads": args.threads, "runs": args.runs, "quiet_s": args.quiet_s, "data_bytes": data.stat().st_size,
           "versions": {}, "mismatches": [], "notes": [], "machine": harness.machine_description(),
           "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "command": args.command_line}
    if args.adstore_config:
        ctx["notes"].append(f"adstore ran with --config {args.adstore_config} (not the default rollups).")
    if "adstore" in engines:
        ctx["adstore"] = adstore_side(args, data, out, suite)
        ctx["versions"]["adstore"] = ctx["adstore"]["version"]
        shutil.rmtree(out / "adstore-data", ignore_errors=True)
    if "chdb" in engines:
        ctx["chdb"] = run_chdb(data, out, suite_file, args.threads, args.runs)
        ctx["versions"]["chdb"] = ctx["chdb"]["version"]
        shutil.rmtree(out / "chdb-data", ignore_errors=True)

    ctx["mismatches"] = check_counts(ctx) + compare_all(ctx)
    ctx["harness_s"] = time.perf_counter() - started
    for row in query_table(ctx):
        log(f"{row['name']}: " + ", ".join(f"{s} {v:.2f} ms" for s, v in row["ms"].items())
            + (f"; events/metrics {row['events_over_metrics']:.1f}x" if row["events_over_metrics"] else "")
            + (f"; chdb/metrics {row['chdb_over_metrics']:.1f}x" if row["chdb_over_metrics"] else ""))
    with open(out / "results.json", "w") as f:
        json.dump(ctx, f, indent=1, default=str)
    report = write_report(out, ctx)
    log(f"report: {report} ({ctx['harness_s']:.0f} s in the harness)")
    if ctx["mismatches"]:
        print("\nRESULT MISMATCH: the sources disagree:\n", file=sys.stderr)
        for m in ctx["mismatches"]:
            print(m + "\n", file=sys.stderr)
        return 1
    print(report.read_text())
    missed = [f"{r['name']} ({k})" for r in query_table(ctx)
              for k, met in (("events/metrics", r["events_target_met"]), ("chdb/metrics", r["chdb_target_met"]))
              if met is False]
    if missed:
        log("targets missed: " + ", ".join(missed))
    return 0


def self_test() -> int:
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    ph = placeholders(GEN_START, 30)
    check(ph["end"] == "2026-12-01 00:00:00" and ph["week_start"] == "2026-11-24 00:00:00", f"placeholders {ph}")
    suite = load_suite(HERE / "longrange.toml", ph)
    check(len(suite) == 2, "two queries")
    check(all("{" not in s for q in suite for s in q["sql"].values()), "every placeholder is filled")
    check(all("FROM metrics" in q["sql"]["metrics"] and "FROM events" in q["sql"]["events"]
              and "FROM events_hourly" in q["sql"]["chdb"] for q in suite), "each source reads its table")
    r = {"columns": ["day", "campaign_id", "impressions", "clicks", "spend_micros"], "rows": [["d", "c", 3, 1, 9]]}
    c = {"columns": ["day", "campaign_id", "impressions", "clicks", "cost_micros"], "rows": [["d", "c", 3, 1, 12]]}
    cols = suite[0]["chdb_columns"]
    check(compare_results("a", project(r, cols), "b", project(c, cols)) == [], "projection drops spend")
    check(compare_results("a", r, "b", c) != [], "without it the cost differs")
    ok = {"adstore": {"by_type": {"impression": 5, "click": 2}, "metrics_by_type": {"impression": 5, "click": 2,
                                                                                    "conversion": 0},
                      "summary": {"accepted": 7}, "segment_rows": 7},
          "chdb": {"by_type": {"impression": 5, "click": 2}, "rollup_by_type": {"impression": 5, "click": 2},
                   "rows": 7, "rollup_events": 7}}
    check(check_counts(ok) == [], "equal counts")
    bad = json.loads(json.dumps(ok))
    bad["chdb"]["rollup_by_type"]["click"] = 3
    check(check_counts(bad) != [], "a differing count")
    check(fmt_ratio(0.047, 2) == "0.05x (MISSED)" and fmt_ratio(24.04, 20) == "24.0x (met)", "ratios")
    for msg in failures:
        print(f"FAIL: {msg}")
    print(f"longrange self-test: {'FAILED' if failures else 'ok'} ({len(failures)} failure(s))")
    return 1 if failures else 0


def parse_span_days(s: str) -> int:
    m = re.fullmatch(r"(\d+)d", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"--span {s!r}: whole days, like 30d")
    return int(m.group(1))


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--self-test"]:
        return self_test()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the long-range suite (normally through benches/run.sh --suite longrange)")
    r.add_argument("--bin", required=True, help="the release adstore binary")
    r.add_argument("--server-bin", help="a different adstore binary for `serve`")
    r.add_argument("--adstore-config", help="a TOML file for `adstore serve --config` (default: none, the "
                   "default rollups)")
    r.add_argument("--events", type=int, default=10_000_000)
    r.add_argument("--span", dest="span_days", type=parse_span_days, default=30, help="whole days, default 30d")
    r.add_argument("--engines", default="adstore,chdb")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--runs", type=int, default=5, help="timed runs per query (after one warm-up)")
    r.add_argument("--quiet-s", type=float, default=5.0, help="segment counts must stay still this long to settle")
    r.add_argument("--settle-timeout-s", type=float, default=3600.0)
    r.add_argument("--out", default=str(HERE / "out" / "longrange"))
    r.add_argument("--gen-dir", default=str(HERE / "out"), help="where generated data is cached")
    r.add_argument("--queries", default=str(HERE / "longrange.toml"))
    r.add_argument("--command-line", default="benches/run.sh --suite longrange")
    w = sub.add_parser("_worker", help="internal: chDB's load and suite")
    w.add_argument("--data", required=True)
    w.add_argument("--dir", required=True)
    w.add_argument("--suite", required=True)
    w.add_argument("--threads", type=int, required=True)
    w.add_argument("--runs", type=int, required=True)
    w.add_argument("--result", required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "_worker":
            with open(args.suite) as f:
                suite = json.load(f)
            with open(args.result, "w") as f:
                json.dump(chdb_worker(args, suite), f)
            return 0
        if args.runs < 5:
            log(f"note: --runs {args.runs} (< 5) is for development only")
        return run_main(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
