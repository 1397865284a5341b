#!/usr/bin/env python3
"""The PostgreSQL protocol against HTTP, with the ready Grafana dashboard.

    python3 benches/pgwire.py --bin target/release/adstore [--events 2000000]
        [--rounds 30] [--connections 100] [--seconds 60] [--config FILE]
        [--write docs/bench/pgwire.md]

1. Starts `adstore serve --demo` (a day of generated events ending now) on
   free ports, waits until everything is sealed (a settled store).
2. Latency: each panel of docs/grafana/dashboards/adstore.json, its macros
   expanded as Grafana expands them (last 24 h, 5-minute interval), run
   --rounds times over HTTP (`POST /v1/sql`, JSON, keep-alive) and over the
   PostgreSQL protocol (psycopg 3, simple query protocol as Grafana's pgx
   sends it, text results), alternating; medians and their ratio. Then the
   same while another --events events are loaded and sealed.
3. Concurrency: --connections psycopg connections, each running random
   panels for --seconds: queries, errors, latency percentiles, and the
   server's resident memory (peak, sampled every 0.5 s).

Needs psycopg 3 (`pip install 'psycopg[binary]'`).
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def expand(sql, start, end, interval_s):
    """Grafana's macro expansion (macros.go), after the browser replaced $__interval."""
    sql = sql.replace("$__interval", f"{interval_s}s")

    def secs(text):
        text = text.strip("'")
        n, unit = re.fullmatch(r"(\d+)([smhd])", text).groups()
        return int(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]

    def one(m):
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if name == "__timeGroupAlias":
            s = secs(args[1])
            return f'floor(extract(epoch from {args[0]})/{s})*{s} AS "time"'
        if name == "__timeGroup":
            s = secs(args[1])
            return f"floor(extract(epoch from {args[0]})/{s})*{s}"
        if name == "__timeFilter":
            f = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}".rstrip("0") + "Z"
            return f"{args[0]} BETWEEN '{f(start).replace('.Z', 'Z')}' AND '{f(end).replace('.Z', 'Z')}'"
        raise SystemExit(f"macro {name} not expanded here")

    return re.sub(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)", one, sql)


def panels():
    dash = json.loads((ROOT / "docs/grafana/dashboards/adstore.json").read_text())
    now = datetime.now(timezone.utc)
    out = []
    for p in dash["panels"]:
        for t in p["targets"]:
            out.append((p["title"], expand(t["rawSql"], now - timedelta(days=1), now, 300)))
    return out


class Server:
    def __init__(self, binary, events, config=None):
        self.dir = tempfile.mkdtemp(prefix="adstore-pgbench-")
        env = dict(os.environ, ADSTORE_LOG="warn")
        args = [binary, "serve", "--data-dir", f"{self.dir}/data", "--listen", "127.0.0.1:0",
                "--pg-listen", "127.0.0.1:0", "--demo", "--demo-events", str(events)]
        self.proc = subprocess.Popen(args + (["--config", config] if config else []),
                                     env=env, stdout=subprocess.PIPE, text=True)
        lines = [self.proc.stdout.readline().strip() for _ in range(2)]
        self.http_port = int(lines[0].rsplit(":", 1)[1])
        self.pg_url = lines[1].removeprefix("listening on ")
        threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True).start()

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=300)
        c.request("GET", path)
        body = c.getresponse().read()
        c.close()
        return body

    def metric(self, name):
        """The sum of the series `name` (any labels) in /metrics."""
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_bytes(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def wait_settled(self, timeout_s=1800):
        end = time.time() + timeout_s
        while time.time() < end:
            if json.loads(self.get("/v1/segments"))["head"]["rows"] == 0:
                return
            time.sleep(0.5)
        raise SystemExit("the store did not settle")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(300)
        shutil.rmtree(self.dir, ignore_errors=True)


def http_query(conn, sql):
    started = time.perf_counter()
    conn.request("POST", "/v1/sql", body=json.dumps({"sql": sql, "format": "json"}),
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {body[:300]!r}")
    json.loads(body)
    return time.perf_counter() - started


def pg_query(cur, sql):
    started = time.perf_counter()
    cur.execute(sql)
    cur.fetchall()
    return time.perf_counter() - started


def latency(server, queries, rounds):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=300)
    pg = psycopg.connect(server.pg_url, autocommit=True, cursor_factory=psycopg.ClientCursor)
    rows = []
    with pg.cursor() as cur:
        for title, sql in queries:
            h, p = [], []
            http_query(conn, sql)
            pg_query(cur, sql)
            for _ in range(rounds):
                h.append(http_query(conn, sql))
                p.append(pg_query(cur, sql))
            rows.append((title, statistics.median(h) * 1000, statistics.median(p) * 1000))
    pg.close()
    conn.close()
    return rows


def concurrency(server, queries, connections, seconds):
    waited = [server.metric("adstore_query_queue_wait_seconds_sum"),
              server.metric("adstore_query_queue_wait_seconds_count")]
    stop = time.time() + seconds
    lock = threading.Lock()
    times, errors = [], []
    peak = [server.rss_bytes()]

    def worker(seed):
        rnd = random.Random(seed)
        try:
            conn = psycopg.connect(server.pg_url, autocommit=True, cursor_factory=psycopg.ClientCursor)
        except psycopg.Error as e:
            with lock:
                errors.append(f"connect: {e}")
            return
        with conn, conn.cursor() as cur:
            while time.time() < stop:
                _, sql = rnd.choice(queries)
                try:
                    t = pg_query(cur, sql)
                    with lock:
                        times.append(t)
                except psycopg.Error as e:
                    with lock:
                        errors.append(str(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(server.rss_bytes())
        time.sleep(0.5)
    times.sort()
    wait_s = server.metric("adstore_query_queue_wait_seconds_sum") - waited[0]
    admitted = server.metric("adstore_query_queue_wait_seconds_count") - waited[1]
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000 if times else float("nan")
    return {"queries": len(times), "errors": len(errors), "first_errors": errors[:3],
            "qps": len(times) / seconds, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "mean_queue_wait_ms": wait_s / admitted * 1000 if admitted else float("nan"),
            "rejected": int(server.metric("adstore_query_rejected_total")),
            "peak_rss_mib": max(peak) / 2**20, "rss_after_mib": server.rss_bytes() / 2**20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--config", help="the server's configuration file (default: none)")
    ap.add_argument("--write")
    a = ap.parse_args()
    server = Server(a.bin, a.events, a.config)
    try:
        started = time.time()
        server.wait_settled()
        print(f"demo load of {a.events} events settled in {time.time() - started:.0f} s", flush=True)
        queries = panels()
        settled = latency(server, queries, a.rounds)
        for r in settled:
            print(f"settled  {r[0]:45s} http {r[1]:8.2f} ms  pg {r[2]:8.2f} ms  ratio {r[2] / r[1]:.3f}", flush=True)
        # The same while another load is sealed.
        loader = subprocess.Popen(
            f"{a.bin} gen --events {a.events} --seed 7 | {a.bin} ingest - --backfill "
            f"--url http://127.0.0.1:{server.http_port}",
            shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)
        loading = latency(server, queries, a.rounds)
        loader.wait()
        for r in loading:
            print(f"loading  {r[0]:45s} http {r[1]:8.2f} ms  pg {r[2]:8.2f} ms  ratio {r[2] / r[1]:.3f}", flush=True)
        server.wait_settled()
        conc = concurrency(server, queries, a.connections, a.seconds)
        print(json.dumps(conc, indent=1), flush=True)
    finally:
        server.stop()
    if a.write:
        lines = ["# PostgreSQL protocol against HTTP: the Grafana dashboard", "",
                 f"`python3 benches/pgwire.py --bin target/release/adstore --events {a.events} --rounds {a.rounds} "
                 f"--connections {a.connections} --seconds {a.seconds:g}"
                 + (f" --config {a.config}" if a.config else "") + f"` on {datetime.now(timezone.utc):%Y-%m-%d}, "
                 f"this machine ({os.cpu_count()} cores). Each panel of docs/grafana/dashboards/adstore.json, "
                 "macros expanded as Grafana expands them (last 24 h, 5-minute buckets); median of "
                 f"{a.rounds} runs each, alternated: HTTP `POST /v1/sql` (JSON, keep-alive) and psycopg 3 over the "
                 "PostgreSQL protocol (simple query protocol, text results, as Grafana's pgx).", ""]
        for name, rows in (("Settled store", settled), ("While a second load is sealed", loading)):
            lines += [f"## {name}", "", "| panel | HTTP ms | pg ms | pg / HTTP |", "|---|---:|---:|---:|"]
            lines += [f"| {t} | {h:.2f} | {p:.2f} | {p / h:.3f} |" for t, h, p in rows]
            lines.append("")
        lines += [f"## {a.connections} connections for {a.seconds:g} s", "",
                  f"{conc['queries']} queries ({conc['qps']:.1f}/s), {conc['errors']} errors, "
                  f"p50 {conc['p50_ms']:.1f} ms, p99 {conc['p99_ms']:.1f} ms (of which a turn to run waited "
                  f"{conc['mean_queue_wait_ms']:.1f} ms on average; {conc['rejected']} refused as overloaded); "
                  "server resident memory peak "
                  f"{conc['peak_rss_mib']:.0f} MiB, {conc['rss_after_mib']:.0f} MiB after.", ""]
        Path(a.write).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
