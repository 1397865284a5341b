#!/usr/bin/env python3
"""adstore benchmark harness: adstore vs DuckDB vs chDB on the same data, in one run.

    benches/run.sh [--events N] [--quick] [--engines adstore,duckdb,chdb] [--threads 2] [--publish]

run.sh builds adstore (release) and the virtualenv, then calls `harness.py run`:

    adstore gen ──► events.ndjson (cached in benches/out/ by size, seed, start, span)
        │
        ├─► adstore serve (fresh data dir, free port, fsync on)
        │     adstore ingest --format ndjson   time, events/s (median of 3 runs), server peak RSS
        │     wait until GET /v1/segments says head rows = 0 (sealed)
        │     query suite over POST /v1/sql    warm-up + median of --runs
        │     du of the data dir
        │   adstore serve (another fresh data dir): adstore ingest --format arrow
        │   adstore gen --format arrow ──► events.arrows (cached); adstore serve (fresh):
        │     adstore ingest events.arrows   (Arrow IPC input: batches sent as read, not decoded, 8 per request)
        │
        ├─► worker process: DuckDB  load (de-duplicated) + the suite, SET threads=N
        ├─► worker process: chDB    load into MergeTree + the suite, max_threads=N
        │
        └─► compare every query's rows across engines (sorted; floats 1e-9 relative;
            approximate distinct counts 2%) ─► report.md + chart; exit 1 on a mismatch

Each engine runs alone (one after the other) so none competes with another
for the CPUs. Engine workers run in their own process, so their peak RSS is
their own.

Only the standard library at the top level: `--self-test` runs with any
python3 and without the engines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENGINES = ("adstore", "duckdb", "chdb")

# The generated dataset: two days from a fixed start, so the suite's literal
# time ranges are known and the file is the same in every run.
GEN_START = "2026-11-01T00:00:00Z"
GEN_SPAN_DAYS = 2
GEN_SEED = 42
# Placeholders of queries.toml (see its header).
HOT_ADVERTISER = "adv-000"
OTHER_ADVERTISER = "adv-003"
HOT_CAMPAIGN = "cmp-000-00"

FLOAT_REL_TOL = 1e-9
APPROX_REL_TOL = 0.02

# Input columns of the NDJSON events (DESIGN.md §1), for the engines' loaders.
STRING_COLUMNS = [
    "event_id", "type", "publisher_id", "advertiser_id", "campaign_id", "ad_group_id", "ad_id",
    "impression_id", "click_id", "user_key", "device", "os", "country", "region", "placement",
    "ip_hash", "ua_hash",
]
REQUIRED = {"event_id", "type", "publisher_id", "advertiser_id", "campaign_id", "ad_id"}
# Low-cardinality dimensions (ClickHouse LowCardinality).
DIMENSIONS = {"type", "publisher_id", "advertiser_id", "campaign_id", "ad_group_id", "ad_id", "device", "os",
              "country", "region", "placement"}
COLUMN_ORDER = [
    "event_id", "type", "ts", "publisher_id", "advertiser_id", "campaign_id", "ad_group_id", "ad_id",
    "impression_id", "click_id", "user_key", "device", "os", "country", "region", "placement",
    "cost_micros", "value_micros", "ip_hash", "ua_hash",
]


class BenchError(Exception):
    """A failure the run reports in one line and exits non-zero for."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Result normalization and comparison (pure, covered by --self-test)
# ---------------------------------------------------------------------------

_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


def canon_ts_ms(ms: int) -> str:
    """Epoch milliseconds as the canonical timestamp string every engine's value is mapped to."""
    t = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def canon_ts_str(s: str) -> str:
    """An RFC 3339 / 'YYYY-MM-DD HH:MM:SS[.fff]' string (UTC unless it says otherwise), canonical."""
    s = s.strip().replace(" ", "T", 1)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    t = dt.datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return canon_ts_dt(t)


def canon_ts_dt(t: dt.datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return canon_ts_ms((t - epoch) // dt.timedelta(milliseconds=1))


def is_time_type(type_name: str) -> bool:
    t = (type_name or "").lower()
    return "timestamp" in t or "datetime" in t or t == "date" or t.startswith("date(")


def normalize_value(v, type_name: str = ""):
    """One cell as None, int, float, str; timestamps as canonical strings.

    `type_name` is the engine's column type where it has one (adstore's JSON
    columns, ClickHouse's meta); values are converted by it first, by their
    Python type otherwise.
    """
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return canon_ts_dt(v)
    if isinstance(v, dt.date):
        return canon_ts_dt(dt.datetime(v.year, v.month, v.day))
    t = (type_name or "").lower()
    if is_time_type(t):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return canon_ts_ms(int(v))
        if isinstance(v, str):
            return canon_ts_str(v)
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        # ClickHouse quotes 64-bit integers in JSON unless told otherwise.
        if re.search(r"u?int|decimal", t):
            return int(v) if re.search(r"int", t) else float(v)
        if "float" in t or t == "double":
            return float(v)
        return v
    return str(v)


def normalize_rows(rows, types=None):
    types = types or []
    return [[normalize_value(v, types[i] if i < len(types) else "") for i, v in enumerate(r)] for r in rows]


def _sort_key(row, approx_idx):
    key = []
    # Exact, non-float columns first: they identify the group; floats and
    # approximate counts only break ties.
    for pass_ in (0, 1):
        for i, v in enumerate(row):
            is_soft = i in approx_idx or isinstance(v, float)
            if (pass_ == 0) == is_soft:
                continue
            if v is None:
                key.append((0, 0))
            elif isinstance(v, (int, float)):
                key.append((1, float(f"{v:.6g}") if is_soft else v))
            else:
                key.append((2, v))
    return tuple(key)


def _num_close(a, b, rel):
    if a == b:
        return True
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300) or abs(a - b) <= 1e-12


def cells_equal(a, b, approx: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num):
        if approx:
            return _num_close(a, b, APPROX_REL_TOL)
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        return _num_close(float(a), float(b), FLOAT_REL_TOL)
    return a == b


def compare_results(ref_name, ref, other_name, other, approx_cols=(), max_shown=8):
    """Compares two normalized results ({"columns": [...], "rows": [[...]]}).

    Rows are sorted first; columns are matched by position (engines may
    name expressions differently). Returns a list of human-readable
    differences, empty when the results agree.
    """
    diffs = []
    rc, oc = ref["columns"], other["columns"]
    if len(rc) != len(oc):
        return [f"{ref_name} has {len(rc)} columns {rc}, {other_name} has {len(oc)} columns {oc}"]
    approx_idx = {i for i, c in enumerate(rc) if c in approx_cols} | {i for i, c in enumerate(oc) if c in approx_cols}
    a = sorted(ref["rows"], key=lambda r: _sort_key(r, approx_idx))
    b = sorted(other["rows"], key=lambda r: _sort_key(r, approx_idx))
    if len(a) != len(b):
        diffs.append(f"row count: {ref_name} {len(a)}, {other_name} {len(b)}")
        sa = {json.dumps(r, default=str) for r in a}
        sb = {json.dumps(r, default=str) for r in b}
        only_a = [r for r in a if json.dumps(r, default=str) not in sb][:max_shown]
        only_b = [r for r in b if json.dumps(r, default=str) not in sa][:max_shown]
        for r in only_a:
            diffs.append(f"  only in {ref_name}: {r}")
        for r in only_b:
            diffs.append(f"  only in {other_name}: {r}")
        return diffs
    shown = 0
    for n, (ra, rb) in enumerate(zip(a, b)):
        bad = [i for i in range(len(rc)) if not cells_equal(ra[i], rb[i], i in approx_idx)]
        if bad:
            if shown < max_shown:
                cols = ", ".join(f"{rc[i]}: {ra[i]!r} vs {rb[i]!r}" for i in bad)
                diffs.append(f"  sorted row {n}: {cols}\n    {ref_name}: {ra}\n    {other_name}: {rb}")
            shown += 1
    if shown:
        diffs.insert(0, f"{shown} of {len(a)} rows differ ({ref_name} vs {other_name}; columns {rc})")
    return diffs


def median_ms(times_s):
    return statistics.median(times_s) * 1000.0


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------


def time_placeholders(start: str, span_days: int) -> dict:
    s = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    fmt = lambda t: t.strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    end = s + dt.timedelta(days=span_days)
    return {
        "day1": fmt(s),
        "day2": fmt(s + dt.timedelta(days=1)),
        "day3": fmt(s + dt.timedelta(days=2)),
        "end": fmt(end),
        "last_hour": fmt(end - dt.timedelta(hours=1)),
        "adv": HOT_ADVERTISER,
        "adv2": OTHER_ADVERTISER,
        "campaign": HOT_CAMPAIGN,
    }


def id_placeholders(ndjson: Path | None) -> dict:
    """Ids from the generated data for the id-lookup queries: a click, two
    impressions and a user, from the events after the first half million
    lines (or the first half of a smaller file). `?` for each without data."""
    found = {"click_id": "?", "impression_id": "?", "impression_id2": "?", "user_key": "?"}
    if ndjson is None:
        return found
    skip = min(500_000, sum(1 for _ in open(ndjson, "rb")) // 2)
    with open(ndjson, "rb") as f:
        for n, line in enumerate(f):
            if n < skip:
                continue
            e = json.loads(line)
            if found["click_id"] == "?" and e.get("click_id") and e.get("type") == "click":
                found["click_id"] = e["click_id"]
            if e.get("type") == "impression":
                if found["impression_id"] == "?":
                    found["impression_id"] = e["impression_id"]
                    found["user_key"] = e.get("user_key") or "?"
                elif found["impression_id2"] == "?" and n > skip + 100_000:
                    found["impression_id2"] = e["impression_id"]
            if "?" not in found.values():
                break
    return found


def load_suite(path: Path, engines, placeholders: dict):
    """The queries of `path`, each with its rendered SQL per engine."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    suite = []
    for q in doc.get("query", []):
        for key in ("name", "description", "sql"):
            if key not in q:
                raise BenchError(f"{path}: a query lacks `{key}`: {q.get('name', '?')}")
        sql = {}
        for e in engines:
            text = q.get(f"sql_{e}", q["sql"])
            try:
                sql[e] = text.format(**placeholders).strip()
            except KeyError as err:
                raise BenchError(f"{path}: query {q['name']}: unknown placeholder {err}") from None
        suite.append({"name": q["name"], "description": q["description"], "approx": q.get("approx", []),
                      "sql": sql})
    if not suite:
        raise BenchError(f"{path}: no [[query]] entries")
    return suite


def run_timed(fn, runs: int):
    """Warm-up (whose result is returned), then `runs` timed calls."""
    result = fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return result, times


# ---------------------------------------------------------------------------
# Engine workers (DuckDB, chDB): run in their own process
# ---------------------------------------------------------------------------


def peak_rss_bytes_self() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def dir_bytes(path: Path) -> int:
    """Bytes on disk (allocated blocks, as du counts them) under `path`."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def settle_machine(input_file: Path | None = None):
    """Before a load or a suite: flush the page cache's dirty pages (a load
    just wrote gigabytes) and let the writeback finish, so it does not compete
    with the timed load (whose fsyncs wait behind it) or queries of whichever
    engine comes next.

    Before a load, `input_file` is also read once, untimed, so that every
    timed load of every engine starts with its input in the page cache: the
    loads measure the engines, not the disk. Without it, the first of
    adstore's three loads of a format, which follows other work that had
    pushed the file out of the cache, was the slowest in every run of
    record (see docs/ingest.md)."""
    os.sync()
    if input_file is not None:
        with open(input_file, "rb") as f:
            while f.read(16 << 20):
                pass
    time.sleep(2)


def duckdb_worker(args, suite):
    import duckdb

    db_dir = Path(args.dir)
    shutil.rmtree(db_dir, ignore_errors=True)
    db_dir.mkdir(parents=True)
    con = duckdb.connect(str(db_dir / "events.duckdb"))
    con.execute(f"SET threads = {args.threads}")
    con.execute("SET TimeZone = 'UTC'")
    cols = ", ".join(f"'{c}': 'VARCHAR'" for c in STRING_COLUMNS)
    cols += ", 'ts': 'BIGINT', 'cost_micros': 'BIGINT', 'value_micros': 'BIGINT'"
    select = ", ".join(
        "epoch_ms(ts) AS ts" if c == "ts"
        else f"coalesce({c}, 0) AS {c}" if c in ("cost_micros", "value_micros")
        else c
        for c in COLUMN_ORDER
    )
    data = str(Path(args.data).resolve()).replace("'", "''")
    input_file = Path(args.data).resolve()
    load_sql = f"""
        CREATE TABLE events AS
        SELECT * FROM (
            SELECT DISTINCT ON (publisher_id, type, event_id) {select}
            FROM read_json('{data}', format = 'newline_delimited', columns = {{{cols}}})
        ) ORDER BY advertiser_id, campaign_id, ts
    """
    settle_machine(input_file)
    t = time.perf_counter()
    con.execute(load_sql)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    con.execute("CHECKPOINT")
    settle_s = time.perf_counter() - t
    rows = con.execute("SELECT count(*) FROM events").fetchone()[0]
    rss_load = peak_rss_bytes_self()

    def query(sql):
        def fn():
            cur = con.execute(sql)
            return [d[0] for d in cur.description], cur.fetchall()
        return fn

    settle_machine()
    results = {}
    for q in suite:
        (names, raw), times = run_timed(query(q["sql"]["duckdb"]), args.runs)
        results[q["name"]] = {"columns": names, "rows": normalize_rows(raw), "times_s": times}
    con.close()
    return {"engine": "duckdb", "version": duckdb.__version__, "load_s": load_s, "settle_s": settle_s, "rows": rows,
            "bytes_on_disk": dir_bytes(db_dir), "peak_rss_load_bytes": rss_load,
            "peak_rss_bytes": peak_rss_bytes_self(), "queries": results}


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

    def col_type(c):
        if c == "ts":
            return "DateTime64(3, 'UTC')"
        if c in ("cost_micros", "value_micros"):
            return "Int64"
        base = "String" if c in REQUIRED else "Nullable(String)"
        return f"LowCardinality({base})" if c in DIMENSIONS else base

    ddl = ", ".join(f"{c} {col_type(c)}" for c in COLUMN_ORDER)
    sess.query("CREATE DATABASE IF NOT EXISTS bench")
    sess.query("USE bench")
    sess.query(f"CREATE TABLE events ({ddl}) ENGINE = MergeTree ORDER BY (advertiser_id, campaign_id, ts)")
    in_struct = ", ".join(
        f"{c} Int64" if c == "ts" else f"{c} Nullable(Int64)" if c in ("cost_micros", "value_micros")
        else f"{c} {'String' if c in REQUIRED else 'Nullable(String)'}"
        for c in COLUMN_ORDER
    )
    select = ", ".join(
        "fromUnixTimestamp64Milli(ts, 'UTC') AS ts" if c == "ts"
        else f"ifNull({c}, 0) AS {c}" if c in ("cost_micros", "value_micros")
        else c
        for c in COLUMN_ORDER
    )
    data = str(Path(args.data).resolve()).replace("'", "\\'")
    settle_machine(Path(args.data).resolve())
    t = time.perf_counter()
    sess.query(f"INSERT INTO events SELECT {select} FROM file('{data}', 'JSONEachRow', '{in_struct}') "
               f"LIMIT 1 BY publisher_id, type, event_id")
    load_s = time.perf_counter() - t
    # Merge the inserted parts into one, as adstore's seal leaves sealed segments.
    t = time.perf_counter()
    sess.query("OPTIMIZE TABLE events FINAL")
    settle_s = time.perf_counter() - t
    rows = int(sess.query("SELECT count() FROM events", "CSV").data().strip())
    parts = sess.query("SELECT count(), sum(bytes_on_disk) FROM system.parts WHERE active AND table = 'events' "
                       "AND database = 'bench'", "CSV").data().strip().split(",")
    rss_load = peak_rss_bytes_self()

    def query(sql):
        def fn():
            return sess.query(sql, "JSONCompact").data()
        return fn

    settle_machine()
    results = {}
    for q in suite:
        raw, times = run_timed(query(q["sql"]["chdb"]), args.runs)
        doc = json.loads(raw)
        types = [m["type"] for m in doc["meta"]]
        results[q["name"]] = {"columns": [m["name"] for m in doc["meta"]],
                              "rows": normalize_rows(doc["data"], types), "times_s": times}
    version = sess.query("SELECT version()", "CSV").data().strip().strip('"')
    sess.close()
    return {"engine": "chdb", "version": f"chdb {chdb.__version__} (ClickHouse {version})", "load_s": load_s,
            "settle_s": settle_s, "rows": rows, "parts": int(parts[0]), "bytes_table": int(parts[1]),
            "bytes_on_disk": dir_bytes(db_dir), "peak_rss_load_bytes": rss_load,
            "peak_rss_bytes": peak_rss_bytes_self(), "queries": results}


def worker_main(args):
    with open(args.suite) as f:
        suite = json.load(f)
    fn = {"duckdb": duckdb_worker, "chdb": chdb_worker}[args.engine]
    out = fn(args, suite)
    with open(args.result, "w") as f:
        json.dump(out, f)


def run_worker(engine, data: Path, out: Path, suite_file: Path, threads: int, runs: int) -> dict:
    result = out / f"result-{engine}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", "--engine", engine, "--data", str(data),
           "--dir", str(out / f"{engine}-data"), "--suite", str(suite_file), "--threads", str(threads),
           "--runs", str(runs), "--result", str(result)]
    t = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0 or not result.exists():
        raise BenchError(f"the {engine} worker failed (exit {proc.returncode}); see its output above")
    with open(result) as f:
        res = json.load(f)
    log(f"{engine}: loaded {res['rows']} rows in {res['load_s']:.2f} s (+{res['settle_s']:.2f} s settle), "
        f"suite done; {time.perf_counter() - t:.1f} s in all")
    return res


# ---------------------------------------------------------------------------
# adstore: serve, ingest, seal, query over HTTP
# ---------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples VmRSS of a process; VmHWM (the kernel's own peak) is read at the end as well."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak, self._stop_evt = pid, interval_s, 0, threading.Event()

    @staticmethod
    def read(pid: int, field: str) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    def run(self):
        while not self._stop_evt.is_set():
            self.peak = max(self.peak, self.read(self.pid, "VmRSS"))
            self._stop_evt.wait(self.interval_s)

    def stop(self) -> int:
        self.peak = max(self.peak, self.read(self.pid, "VmHWM"), self.read(self.pid, "VmRSS"))
        self._stop_evt.set()
        return self.peak


class AdstoreServer:
    def __init__(self, binary: Path, data_dir: Path, log_path: Path, threads: int, config: Path | None = None,
                 fresh: bool = True):
        """`adstore serve` on a free port: on an emptied `data_dir`, or (`fresh=False`) on what it holds."""
        if fresh:
            shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKIO_WORKER_THREADS=str(threads))
        env.setdefault("ADSTORE_LOG", "warn")
        self.log = open(log_path, "a" if not fresh else "w")
        # fsync is on by default (storage.fsync = true); no config file overrides it.
        cmd = [str(binary), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--pg-listen", "off"]
        if config is not None:
            cmd += ["--config", str(config)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line or "")
        if not m:
            self.stop()
            raise BenchError(f"adstore serve did not start (see {log_path}): {line!r}")
        self.url = m.group(1)
        u = urllib.parse.urlparse(self.url)
        self.host, self.port = u.hostname, u.port
        self.conn = None
        self.sampler = RssSampler(self.proc.pid)
        self.sampler.start()

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str):
        status, body = self.request("GET", path)
        if status != 200:
            raise BenchError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def sql(self, sql: str):
        body = json.dumps({"sql": sql, "format": "json"}).encode()
        return self.request("POST", "/v1/sql", body, {"content-type": "application/json"})

    def wait_sealed(self, timeout_s: float = 600) -> float:
        """Seconds until the head is sealed; `self.final_s`: until every segment is final.

        The generated data is older than the allowed lateness behind the wall
        clock, so once appends stop for `storage.close_idle_ms` (60 s) every
        bucket closes and is re-sealed as final: the settled store the suite
        is timed on. (Waiting only for the buckets closed by event time let
        the rest be finalized while the suite ran.) Final days are then merged
        into hour and day rollup rows and snapshotted for billing: the store
        is settled once `/v1/rollups` has nothing pending and no billing
        snapshot is pending either, so that work does not run under the
        suite."""
        t = time.perf_counter()
        sealed = None
        while True:
            seg = self.get_json("/v1/segments")
            if sealed is None and seg.get("head", {}).get("rows", 0) == 0:
                sealed = time.perf_counter() - t
            all_final = all(s.get("is_final", False) for s in seg.get("segments", []))
            if sealed is not None and seg.get("finalize_pending_buckets", 0) == 0 and all_final \
                    and self.rolled_up():
                self.final_s = time.perf_counter() - t
                return sealed
            if time.perf_counter() - t > timeout_s:
                raise BenchError(f"adstore: head still holds {seg['head']['rows']} rows, "
                                 f"{seg.get('finalize_pending_buckets')} bucket(s) to finalize after {timeout_s} s")
            time.sleep(0.5)

    def rolled_up(self) -> bool:
        """Whether the rollup and billing tasks have caught up."""
        rollups = self.get_json("/v1/rollups").get("rollups", [])
        if not all(r.get("complete", True) for r in rollups):
            return False
        status, body = self.request("GET", "/metrics", None, {})
        text = body.decode() if isinstance(body, bytes) else str(body)
        for line in text.splitlines():
            if line.startswith("adstore_billing_snapshots_pending "):
                return float(line.split()[1]) == 0
        return True

    def stop(self):
        if self.conn is not None:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def parse_ingest_summary(text: str) -> dict:
    out = {}
    for key in ("sent", "accepted", "duplicates", "rejected", "retries"):
        m = re.search(rf"^{key}\s+(\d+)", text, re.M)
        if m:
            out[key] = int(m.group(1))
    return out


# Ingest runs per wire format: the rate reported is their median (run-to-run
# spread on a shared VM is 10-20%). Only the last run is sealed and queried.
INGEST_RUNS = 3


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the command name, which may hold spaces: utime and
            # stime are the 14th and 15th fields of the whole line.
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return float("nan")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ingest(binary: Path, data: Path, server: "AdstoreServer", fmt: str, wire: str):
    """`adstore ingest` of `data` into `server`, timed: (seconds, the finished
    process, the CPU seconds the client and the server used for it)."""
    server_cpu = cpu_seconds(server.proc.pid)
    client_cpu = children_cpu_seconds()
    t = time.perf_counter()
    proc = subprocess.run([str(binary), "ingest", str(data), "--url", server.url, "--backfill",
                           "--format", wire], capture_output=True, text=True)
    ingest_s = time.perf_counter() - t
    cpu = {"client_cpu_s": children_cpu_seconds() - client_cpu,
           "server_cpu_s": cpu_seconds(server.proc.pid) - server_cpu}
    if proc.returncode != 0:
        raise BenchError(f"adstore ingest --format {wire} ({fmt}) failed (exit {proc.returncode}):\n"
                         f"{proc.stdout}\n{proc.stderr}")
    return ingest_s, proc, cpu


def ingest_only(binary: Path, server_bin: Path, data: Path, out: Path, fmt: str, threads: int,
                wire: str) -> tuple[float, int, dict]:
    """One timed bulk load into a fresh server, stopped afterwards: (seconds,
    server VmHWM, CPU seconds of client and server)."""
    data_dir = out / f"adstore-data-{fmt}-rate"
    settle_machine(data)
    server = AdstoreServer(server_bin, data_dir, out / f"adstore-serve-{fmt}-rate.log", threads)
    try:
        ingest_s, _, cpu = run_ingest(binary, data, server, fmt, wire)
        hwm = RssSampler.read(server.proc.pid, "VmHWM")
        log(f"adstore: {fmt}: timed run, {ingest_s:.2f} s, CPU: server {cpu['server_cpu_s']:.1f} s, "
            f"client {cpu['client_cpu_s']:.1f} s")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return ingest_s, hwm, cpu


def adstore_ingest(binary: Path, server_bin: Path, data: Path, out: Path, fmt: str, threads: int, events: int,
                   keep=False, wire: str | None = None):
    """One bulk load into a fresh server; returns (figures, the server if kept).

    `fmt` names the run; `wire` is `adstore ingest --format` (default `fmt`)."""
    wire = wire or fmt
    data_dir = out / f"adstore-data-{fmt}"
    rates = [ingest_only(binary, server_bin, data, out, fmt, threads, wire) for _ in range(INGEST_RUNS - 1)]
    settle_machine(data)
    server = AdstoreServer(server_bin, data_dir, out / f"adstore-serve-{fmt}.log", threads)
    try:
        log(f"adstore: ingest --format {fmt} into {data_dir} ({server.url})")
        ingest_s, proc, cpu = run_ingest(binary, data, server, fmt, wire)
        summary = parse_ingest_summary(proc.stdout)
        rss_ingest = RssSampler.read(server.proc.pid, "VmHWM")
        seal_s = server.wait_sealed()
        segs = server.get_json("/v1/segments")
        runs_s = [r for r, _, _ in rates] + [ingest_s]
        cpu_runs = [c for _, _, c in rates] + [cpu]
        fig = {
            "format": fmt, "ingest_s": statistics.median(runs_s), "events": events,
            "events_per_s": events / statistics.median(runs_s), "ingest_runs_s": runs_s,
            "server_cpu_runs_s": [c["server_cpu_s"] for c in cpu_runs],
            "client_cpu_runs_s": [c["client_cpu_s"] for c in cpu_runs],
            "peak_rss_ingest_runs_bytes": [m for _, m, _ in rates],
            "summary": summary, "seal_wait_s": seal_s, "final_wait_s": server.final_s,
            "peak_rss_ingest_bytes": rss_ingest,
            "peak_rss_bytes": server.sampler.stop() if not keep else RssSampler.read(server.proc.pid, "VmHWM"),
            "segments": len(segs.get("segments", [])),
            "segment_bytes": sum(s.get("size_bytes", 0) for s in segs.get("segments", [])),
            "segment_rows": sum(s.get("rows", 0) for s in segs.get("segments", [])),
            "bytes_on_disk": dir_bytes(data_dir),
        }
        log(f"adstore: {fmt}: {events} events in {ingest_s:.2f} s = {events / ingest_s:,.0f} events/s "
            f"(median of {len(runs_s)} runs: {fig['events_per_s']:,.0f}); "
            f"accepted {summary.get('accepted')}, duplicates {summary.get('duplicates')}, "
            f"rejected {summary.get('rejected')}; sealed after {seal_s:.1f} s more, final after {server.final_s:.1f} s; "
            f"peak RSS {fig['peak_rss_bytes'] / 2**20:.0f} MiB")
        if summary.get("rejected"):
            raise BenchError(f"adstore ingest rejected {summary['rejected']} events:\n{proc.stdout}\n{proc.stderr}")
    except BaseException:
        server.stop()
        raise
    if keep:
        return fig, server
    server.stop()
    return fig, None


def adstore_queries(server: AdstoreServer, suite, runs: int) -> dict:
    status, body = server.sql("SELECT count(*) FROM events")
    if status in (404, 405):
        raise BenchError("adstore has no POST /v1/sql yet (HTTP %d): the query engine is not merged. "
                         "Run with --engines duckdb,chdb, or merge the query engine." % status)
    settle_machine()
    results = {}
    for q in suite:
        elapsed = []

        def fn(sql=q["sql"]["adstore"]):
            st, b = server.sql(sql)
            if st != 200:
                raise BenchError(f"adstore: query {q['name']}: HTTP {st}: {b[:500].decode(errors='replace')}\n{sql}")
            return b

        first, times = run_timed(fn, runs)
        # Engine-reported time of the timed runs: parse outside the timed calls.
        for _ in range(min(runs, 3)):
            doc = json.loads(fn())
            if isinstance(doc.get("stats"), dict) and "elapsed_ms" in doc["stats"]:
                elapsed.append(float(doc["stats"]["elapsed_ms"]))
        doc = json.loads(first)
        types = [c.get("type", "") for c in doc["columns"]]
        results[q["name"]] = {"columns": [c["name"] for c in doc["columns"]],
                              "rows": normalize_rows(doc["rows"], types), "times_s": times,
                              "engine_elapsed_ms": statistics.median(elapsed) if elapsed else None,
                              "stats": doc.get("stats")}
    return results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def machine_description() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    os_name = platform.platform()
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = f"{line.split('=', 1)[1].strip().strip(chr(34))} (kernel {platform.release()})"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "os": os_name,
            "python": platform.python_version()}


def fmt_ms(v):
    return "n/a" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def fmt_bytes(n):
    if n is None:
        return "n/a"
    return f"{n / 2**20:,.1f} MiB"


def baseline_engine(engines, timings):
    for e in engines:
        if e in timings and timings[e]:
            return e
    return None


def write_report(out: Path, ctx: dict) -> Path:
    engines, suite = ctx["engines"], ctx["suite"]
    # per engine: {query name: median ms}
    med = {e: {n: median_ms(r["times_s"]) for n, r in ctx["results"][e].items()} for e in ctx["results"]}
    base = "adstore" if med.get("adstore") else baseline_engine(engines, med)
    lines = [
        "# adstore benchmark report",
        "",
        f"Generated by `{ctx['command']}` on {ctx['when']} (UTC).",
        "",
        f"- Dataset: {ctx['events']:,} generated events (`adstore gen --seed {GEN_SEED} --start {GEN_START} "
        f"--span {GEN_SPAN_DAYS}d`), {fmt_bytes(ctx['data_bytes'])} of NDJSON; "
        f"{ctx['distinct_rows']:,} events after de-duplication by (publisher_id, type, event_id).",
        f"- Engines: {', '.join(engines)}; each limited to {ctx['threads']} threads and run alone, one after the other.",
        f"- Query times: client-side wall time, median of {ctx['runs']} runs after one warm-up run; each engine's "
        "suite starts after `sync` and 2 s of quiet (a load leaves gigabytes of dirty pages to write back).",
        f"- The harness took {ctx['harness_s'] / 60:.1f} min (generation, loads, suites; not the release build)."
        if ctx.get("harness_s") else "",
        f"- Ratios are engine time / {base} time (above 1: {base} is faster)." if base else "",
        "",
        "## Machine",
        "",
        f"- CPUs: {ctx['machine']['nproc']} x {ctx['machine']['cpu']}",
        f"- Memory: {ctx['machine']['memory']}",
        f"- OS: {ctx['machine']['os']}",
        f"- Versions: " + "; ".join(f"{e}: {v}" for e, v in ctx["versions"].items()),
        "",
    ]
    if "adstore" in engines and ctx.get("ingest"):
        lines += ["## adstore ingest (`adstore ingest` to `adstore serve`, fsync on)", "",
                  "| wire format | events | time (s) | events/s | each run (events/s) "
                  "| server CPU, each run (s) | client CPU, each run (s) | server peak RSS "
                  "| sealed after (s) | final after (s) | segments | segment bytes | data dir bytes (with WAL) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for fig in ctx["ingest"]:
            each = ", ".join(f"{fig['events'] / r:,.0f}" for r in fig.get("ingest_runs_s", [fig["ingest_s"]]))
            server_cpu = ", ".join(f"{c:.1f}" for c in fig.get("server_cpu_runs_s", []))
            client_cpu = ", ".join(f"{c:.1f}" for c in fig.get("client_cpu_runs_s", []))
            lines.append(f"| {fig['format']} | {fig['events']:,} | {fig['ingest_s']:.2f} | {fig['events_per_s']:,.0f} "
                         f"| {each} | {server_cpu} | {client_cpu} | {fmt_bytes(fig['peak_rss_bytes'])} "
                         f"| {fig['seal_wait_s']:.1f} "
                         f"| {fig.get('final_wait_s', float('nan')):.1f} | {fig['segments']} "
                         f"| {fmt_bytes(fig['segment_bytes'])} | {fmt_bytes(fig['bytes_on_disk'])} |")
        lines += ["", f"Time and events/s: the median of {INGEST_RUNS} runs, each into a fresh server after the "
                  "page cache's dirty pages are flushed and the input file is read once, untimed (every engine's "
                  "load starts with its input in the page cache); the last run is the one sealed, measured on "
                  "disk and queried. Server peak RSS covers that run's ingest and seal.", "",
                  "CPU: user + system seconds that the server and the `adstore ingest` process each used during "
                  "a load. Both share the machine's cores, so their sum over the cores bounds the load's time "
                  "from below; it moves less than the time when the machine is busy elsewhere, but first-touch "
                  "memory on a VM still varies from run to run (see docs/ingest.md).", "",
                  "ndjson: the NDJSON file as it is. arrow: the same file parsed by `adstore ingest` into Arrow "
                  "IPC before sending (the client's parsing is in the time). arrow-file: an Arrow IPC file of the "
                  "same events (`adstore gen --format arrow`, record batches of 8,192 rows), sent by `adstore ingest` "
                  "as read, without decoding, eight batches per request (its default `--batch-size` of 65,536 rows "
                  "for an Arrow input), as a producer that holds Arrow already would send it.", ""]
    lines += ["## Load", "",
              "| engine | load (s) | events/s | settle (s) | rows | bytes on disk | peak RSS |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for e in engines:
        ld = ctx["loads"].get(e)
        if not ld:
            continue
        lines.append(f"| {e} | {ld['load_s']:.2f} | {ctx['events'] / ld['load_s']:,.0f} | {ld['settle_s']:.2f} "
                     f"| {ld['rows']:,} | {fmt_bytes(ld['bytes_on_disk'])} | {fmt_bytes(ld['peak_rss_bytes'])} |")
    lines += ["",
              ("adstore: load = `adstore ingest --format ndjson` (acknowledged after fsync, deduplicated at ingest; the median of the runs above), "
               "settle = waiting until the head is sealed into segments (the queries start once closed buckets are also re-sealed as final, and final days merged into rollup rows and snapshotted for billing: \"final after\" above). " if "adstore" in ctx["loads"] else "") +
              "DuckDB: load = `CREATE TABLE AS` from "
              "`read_json` with `DISTINCT ON (publisher_id, type, event_id)` ordered by (advertiser_id, campaign_id, ts), "
              "settle = `CHECKPOINT`. chDB: load = `INSERT ... SELECT FROM file(JSONEachRow) LIMIT 1 BY "
              "publisher_id, type, event_id` into a MergeTree ordered by (advertiser_id, campaign_id, ts), "
              "settle = `OPTIMIZE TABLE FINAL`.", ""]
    header = "| query | " + " | ".join(f"{e} ms" for e in engines if e in med)
    if base:
        header += " | " + " | ".join(f"{e} / {base}" for e in engines if e in med and e != base)
    present = [e for e in engines if e in med]
    ncols = len(present) + (len(present) - 1 if base else 0)
    lines += ["## Queries (median ms)", "", header + " |", "|---|" + "---:|" * ncols]
    for q in suite:
        row = f"| {q['name']} | " + " | ".join(fmt_ms(med[e].get(q["name"])) for e in engines if e in med)
        if base:
            row += " | " + " | ".join(
                f"{med[e][q['name']] / med[base][q['name']]:.2f}x" for e in engines if e in med and e != base)
        lines.append(row + " |")
    if "adstore" in med:
        lines += ["", "adstore's own `stats.elapsed_ms` (median): " + ", ".join(
            f"{q['name']} {fmt_ms(ctx['results']['adstore'][q['name']].get('engine_elapsed_ms'))}" for q in suite)]
    lines += ["", "## The suite", ""]
    for q in suite:
        lines.append(f"- **{q['name']}**: {q['description']}")
    lines += ["", "The SQL of every engine is in `benches/queries.toml`; every query's rows were compared "
              "across the engines (sorted; floats to a relative 1e-9; approximate distinct counts within 2%) "
              f"and {'all agreed' if not ctx['mismatches'] else 'SOME DIFFERED (see the run log)'}.", ""]
    notes = list(ctx.get("notes", []))
    if "adstore" not in engines:
        notes.append(f"adstore was not part of this run (`--engines {','.join(engines)}`): ratios are relative to "
                     f"{base}. Run `benches/run.sh` with adstore once its SQL engine (`POST /v1/sql`) is merged.")
    ctx = dict(ctx, notes=notes)
    if ctx.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in ctx["notes"]] + [""]
    if ctx.get("chart"):
        lines += [f"![per-query time ratios]({ctx['chart']})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_chart(path: Path, engines, suite, results) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no chart")
        return False
    med = {e: {n: median_ms(r["times_s"]) for n, r in results[e].items()} for e in results}
    base = "adstore" if med.get("adstore") else baseline_engine(engines, med)
    others = [e for e in engines if e in med and e != base]
    if not base or not others:
        return False
    names = [q["name"] for q in suite]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(others)
    for k, e in enumerate(others):
        xs = [i + (k - (len(others) - 1) / 2) * width for i in range(len(names))]
        ratios = [med[e][n] / med[base][n] for n in names]
        bars = ax.bar(xs, ratios, width, label=e)
        ax.bar_label(bars, labels=[f"{r:.2g}x" for r in ratios], fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:g}x")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"median time / {base} median time (log)")
    ax.set_title(f"Query time relative to {base} (above 1: {base} is faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------


def render(out: Path, ctx: dict, publish: bool):
    """Writes report.md and ratios.png under `out` from a run's figures."""
    chart = out / "ratios.png"
    ctx = dict(ctx)
    if write_chart(chart, ctx["engines"], ctx["suite"], ctx["results"]):
        ctx["chart"] = "latest.png" if publish else "ratios.png"
    return write_report(out, ctx), chart


def publish_report(report: Path, chart: Path) -> None:
    dest = REPO / "docs" / "bench"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report, dest / "latest.md")
    if chart.exists():
        shutil.copyfile(chart, dest / "latest.png")
    log(f"published {dest / 'latest.md'}")


def render_main(args) -> int:
    """Re-renders the report of the last run from its results.json (no engine runs, no new numbers)."""
    out = Path(args.out).resolve()
    try:
        with open(out / "results.json") as f:
            ctx = json.load(f)
    except FileNotFoundError:
        raise BenchError(f"no {out / 'results.json'}: run benches/run.sh first") from None
    if args.publish and (ctx.get("mismatches") or ctx.get("failure")):
        raise BenchError("that run failed (result mismatch or an engine error); it cannot be published")
    if "suite" not in ctx:
        ctx["suite"] = load_suite(Path(args.queries), ctx["engines"],
                                  {**time_placeholders(GEN_START, GEN_SPAN_DAYS), **id_placeholders(None)})
    report, chart = render(out, ctx, args.publish)
    if args.publish:
        publish_report(report, chart)
    print(report.read_text())
    return 0


# Written next to a generated file; a file with another stamp is generated
# again (bump it when `adstore gen` changes its output).
GEN_STAMP = "adstore gen output v2 (Arrow record batches of 8192 rows)"


def generate(binary: Path, out: Path, events: int, fmt: str = "ndjson", span_days: int = GEN_SPAN_DAYS) -> Path:
    """The generated events as `fmt` (ndjson, or arrow: an Arrow IPC stream of the same events),
    `span_days` days from GEN_START."""
    suffix = "ndjson" if fmt == "ndjson" else "arrows"
    data = out / f"events-{events}-s{GEN_SEED}-{span_days}d.{suffix}"
    stamp = data.with_suffix(f".{suffix}.done")
    if data.exists() and stamp.exists() and stamp.read_text().strip() == GEN_STAMP:
        log(f"reusing {data}")
        return data
    log(f"generating {events:,} events into {data}")
    subprocess.run([str(binary), "gen", "--events", str(events), "--seed", str(GEN_SEED), "--start", GEN_START,
                    "--span", f"{span_days}d", "--format", fmt, "--out", str(data)], check=True)
    stamp.write_text(GEN_STAMP + "\n")
    return data


def run_main(args) -> int:
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            raise BenchError(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    if not engines:
        raise BenchError("--engines is empty")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    binary = Path(args.bin).resolve()
    server_bin = Path(args.server_bin).resolve() if args.server_bin else binary
    started = time.perf_counter()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    data = generate(binary, out, args.events)
    placeholders = {**time_placeholders(GEN_START, GEN_SPAN_DAYS), **id_placeholders(data)}
    suite = load_suite(Path(args.queries), engines, placeholders)
    suite_file = out / "suite.json"
    suite_file.write_text(json.dumps(suite, indent=1))
    ctx = {"engines": engines, "suite": suite, "events": args.events, "threads": args.threads, "runs": args.runs,
           "data_bytes": data.stat().st_size, "results": {}, "loads": {}, "ingest": [], "versions": {},
           "mismatches": [], "notes": [], "machine": machine_description(),
           "when": when, "command": args.command_line}
    failure = None

    if "adstore" in engines:
        ver = subprocess.run([str(server_bin), "--version"], capture_output=True, text=True).stdout.strip()
        ctx["versions"]["adstore"] = ver or "adstore"
        fig, server = adstore_ingest(binary, server_bin, data, out, "ndjson", args.threads, args.events,
                                     keep=True)
        try:
            ctx["ingest"].append(fig)
            try:
                ctx["results"]["adstore"] = adstore_queries(server, suite, args.runs)
                log("adstore: suite done")
            except BenchError as e:
                failure = str(e)
                log(f"adstore: {e}")
                ctx["notes"].append(f"adstore queries not measured: {e}")
            fig["peak_rss_bytes"] = server.sampler.stop()
        finally:
            server.stop()
        ctx["loads"]["adstore"] = {"load_s": fig["ingest_s"], "settle_s": fig["seal_wait_s"],
                                   "rows": fig["segment_rows"], "bytes_on_disk": fig["bytes_on_disk"],
                                   "peak_rss_bytes": fig["peak_rss_bytes"]}
        # Arrow IPC twice: parsed from the NDJSON by the client, and read
        # from an Arrow IPC file of the same events (what a producer holding
        # Arrow already sends; the client only slices it).
        arrow_file = generate(binary, out, args.events, "arrow")
        for name, source in (("arrow", data), ("arrow-file", arrow_file)):
            try:
                arrow, _ = adstore_ingest(binary, server_bin, source, out, name, args.threads, args.events,
                                          wire="arrow")
                ctx["ingest"].append(arrow)
            except BenchError as e:
                # The queries are still worth comparing; the run fails at the end.
                failure = failure or str(e).splitlines()[0]
                log(f"adstore: {e}")
                ctx["notes"].append(f"adstore Arrow IPC ingest ({name}) failed: {str(e).splitlines()[0]}")
            shutil.rmtree(out / f"adstore-data-{name}", ignore_errors=True)

    for e in engines:
        if e == "adstore":
            continue
        res = run_worker(e, data, out, suite_file, args.threads, args.runs)
        ctx["versions"][e] = res["version"]
        ctx["loads"][e] = res
        ctx["results"][e] = res["queries"]

    # Row counts after de-duplication must agree before any query is compared.
    counts = {e: ctx["loads"][e]["rows"] for e in ctx["loads"]}
    ctx["distinct_rows"] = next(iter(counts.values()), 0)
    if len(set(counts.values())) > 1:
        ctx["mismatches"].append(f"loaded row counts differ: {counts}")

    ran = [e for e in engines if e in ctx["results"]]
    # DuckDB's answers are exact for every query of the suite (see queries.toml): the reference.
    ref = "duckdb" if "duckdb" in ran else (ran[0] if ran else None)
    for q in suite:
        for other in [e for e in ran if e != ref]:
            diffs = compare_results(ref, ctx["results"][ref][q["name"]], other, ctx["results"][other][q["name"]],
                                    q["approx"])
            if diffs:
                ctx["mismatches"].append(f"query {q['name']}:\n" + "\n".join(diffs))
        if ref:
            log(f"{q['name']}: {len(ctx['results'][ref][q['name']]['rows'])} rows; " + ", ".join(
                f"{e} {median_ms(ctx['results'][e][q['name']]['times_s']):.2f} ms" for e in ran))

    ctx["failure"] = failure
    ctx["harness_s"] = time.perf_counter() - started
    with open(out / "results.json", "w") as f:
        json.dump(ctx, f, indent=1, default=str)
    report, chart = render(out, ctx, args.publish)
    log(f"report: {report} ({time.perf_counter() - started:.0f} s in the harness)")

    if ctx["mismatches"]:
        print("\nRESULT MISMATCH: the engines disagree:\n", file=sys.stderr)
        for m in ctx["mismatches"]:
            print(m + "\n", file=sys.stderr)
        return 1
    if failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 2
    if args.publish:
        publish_report(report, chart)
    print(report.read_text())
    return 0


# ---------------------------------------------------------------------------
# self-test
# ---------------------------------------------------------------------------


def self_test() -> int:
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    # Timestamps from every engine's representation map to one string.
    want = "2026-11-01T10:00:00.000Z"
    check(normalize_value("2026-11-01T10:00:00Z", "timestamp") == want, "adstore RFC 3339")
    check(normalize_value("2026-11-01 10:00:00", "DateTime64(0, 'UTC')") == want, "ClickHouse DateTime64")
    check(normalize_value("2026-11-01 10:00:00.000", "DateTime('UTC')") == want, "ClickHouse DateTime")
    check(normalize_value(dt.datetime(2026, 11, 1, 10), "") == want, "DuckDB datetime")
    check(normalize_value(1793527200000, "timestamp") == want, "epoch ms")
    check(normalize_value("2026-11-01T12:00:00+02:00", "timestamp") == want, "offset")
    # Numbers: quoted 64-bit ints, decimals, booleans.
    check(normalize_value("123", "UInt64") == 123, "quoted UInt64")
    check(normalize_value("-5", "Nullable(Int64)") == -5, "quoted Nullable(Int64)")
    check(normalize_value(Decimal("0.25")) == 0.25, "Decimal")
    check(normalize_value(True) == 1, "bool")
    check(normalize_value("mobile", "LowCardinality(String)") == "mobile", "string")
    check(normalize_value(None, "Nullable(String)") is None, "null")

    cols = ["campaign_id", "clicks", "ctr"]
    a = {"columns": cols, "rows": [["c1", 10, 0.1], ["c2", 20, 1 / 3], ["c3", 0, None]]}
    b = {"columns": ["campaign_id", "clicks", "x"], "rows": [["c3", 0, None], ["c2", 20, 1 / 3 * (1 + 1e-12)],
                                                              ["c1", 10, 0.1]]}
    check(compare_results("a", a, "b", b) == [], "order and tiny float error are ignored")
    c = {"columns": cols, "rows": [["c1", 10, 0.1], ["c2", 21, 1 / 3], ["c3", 0, None]]}
    d = compare_results("a", a, "c", c)
    check(len(d) == 2 and "clicks: 20 vs 21" in d[1], f"an int difference is reported: {d}")
    e = {"columns": cols, "rows": [["c1", 10, 0.1], ["c2", 20, 0.3334], ["c3", 0, None]]}
    check(compare_results("a", a, "e", e) != [], "a float beyond 1e-9 relative is a mismatch")
    f = {"columns": cols, "rows": [["c1", 10, 0.1], ["c2", 20, 1 / 3]]}
    d = compare_results("a", a, "f", f)
    check(d and "row count" in d[0] and any("only in a" in x for x in d), f"a missing row is reported: {d}")
    check(compare_results("a", a, "g", {"columns": ["x"], "rows": []}) != [], "column count mismatch")
    n = {"columns": cols, "rows": [["c1", 10, 0.1], ["c2", 20, 1 / 3], ["c3", 0, 0.0]]}
    check(compare_results("a", a, "n", n) != [], "NULL vs 0 is a mismatch")
    # Integers vs floats of the same value (DuckDB HUGEINT vs a double sum) agree.
    check(compare_results("i", {"columns": ["s"], "rows": [[5]]}, "f", {"columns": ["s"], "rows": [[5.0]]}) == [],
          "5 == 5.0")
    # Approximate distinct counts: within 2% agree, beyond do not.
    u1 = {"columns": ["campaign_id", "users"], "rows": [["c1", 1000], ["c2", 50000]]}
    u2 = {"columns": ["campaign_id", "users"], "rows": [["c2", 50900], ["c1", 1015]]}
    u3 = {"columns": ["campaign_id", "users"], "rows": [["c2", 52000], ["c1", 1000]]}
    check(compare_results("x", u1, "y", u2, ["users"]) == [], "approx within 2%")
    check(compare_results("x", u1, "y", u3, ["users"]) != [], "approx beyond 2%")
    check(compare_results("x", u1, "y", u2) != [], "exact columns stay exact")
    # Sorting keys on group columns first, so approximate values do not reorder groups.
    v1 = {"columns": ["k", "users"], "rows": [["a", 100], ["b", 101]]}
    v2 = {"columns": ["k", "users"], "rows": [["b", 100], ["a", 101]]}
    check(compare_results("x", v1, "y", v2, ["users"]) == [], "sort by group keys first")
    # Timestamps normalized from different engines compare equal.
    t1 = {"columns": ["hour", "n"], "rows": normalize_rows([["2026-11-01T10:00:00Z", 3]], ["timestamp", "bigint"])}
    t2 = {"columns": ["hour", "n"], "rows": normalize_rows([["2026-11-01 10:00:00", "3"]],
                                                           ["DateTime('UTC')", "UInt64"])}
    t3 = {"columns": ["hour", "n"], "rows": normalize_rows([[dt.datetime(2026, 11, 1, 10), 3]])}
    check(compare_results("a", t1, "c", t2) == [] and compare_results("a", t1, "d", t3) == [], "timestamps")
    # The suite file renders for every engine, with every placeholder known.
    ph = time_placeholders(GEN_START, GEN_SPAN_DAYS)
    check(ph["day3"] == "2026-11-03 00:00:00" and ph["last_hour"] == "2026-11-02 23:00:00", "placeholders")
    suite = load_suite(HERE / "queries.toml", ENGINES, {**ph, **id_placeholders(None)})
    check(len(suite) >= 9, "the suite has the eight dashboard queries and the sanity check")
    check(all("{" not in s for q in suite for s in q["sql"].values()), "every placeholder is filled")
    check(any("uniq(" in q["sql"]["chdb"] for q in suite), "the chDB variant of approx_count_distinct")
    check(any("approx_count_distinct(" in q["sql"]["adstore"] and "count(DISTINCT" in q["sql"]["duckdb"]
              for q in suite), "DuckDB answers the distinct-users query exactly, adstore approximately")
    check(parse_ingest_summary("sent        10\naccepted    9\nduplicates  1\nrejected    0\n")
          == {"sent": 10, "accepted": 9, "duplicates": 1, "rejected": 0}, "ingest summary")
    for msg in failures:
        print(f"FAIL: {msg}")
    print(f"self-test: {'FAILED' if failures else 'ok'} ({len(failures)} failure(s))")
    return 1 if failures else 0


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--self-test"]:
        return self_test()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the whole benchmark (normally through benches/run.sh)")
    r.add_argument("--bin", required=True, help="the release adstore binary")
    r.add_argument("--server-bin", help="a different adstore binary for `serve` (e.g. a branch's build); "
                   "gen and ingest still come from --bin")
    r.add_argument("--events", type=int, default=10_000_000)
    r.add_argument("--engines", default="adstore,duckdb,chdb")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--runs", type=int, default=5, help="timed runs per query (after one warm-up)")
    r.add_argument("--out", default=str(HERE / "out"))
    r.add_argument("--queries", default=str(HERE / "queries.toml"))
    r.add_argument("--publish", action="store_true", help="copy the report and chart to docs/bench/latest.*")
    r.add_argument("--command-line", default="benches/run.sh", help="how the run was started, for the report")
    rr = sub.add_parser("render", help="re-render report.md and the chart of the last run from its results.json")
    rr.add_argument("--out", default=str(HERE / "out"))
    rr.add_argument("--publish", action="store_true", help="copy them to docs/bench/latest.*")
    rr.add_argument("--queries", default=str(HERE / "queries.toml"))
    w = sub.add_parser("_worker", help="internal: one engine's load and suite")
    w.add_argument("--engine", required=True, choices=["duckdb", "chdb"])
    w.add_argument("--data", required=True)
    w.add_argument("--dir", required=True)
    w.add_argument("--suite", required=True)
    w.add_argument("--threads", type=int, required=True)
    w.add_argument("--runs", type=int, required=True)
    w.add_argument("--result", required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "_worker":
            worker_main(args)
            return 0
        if args.cmd == "render":
            return render_main(args)
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
