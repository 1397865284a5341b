#!/usr/bin/env python3
"""Dashboard query latency while a bulk load is being sealed, and over a
held head against the same rows sealed.

    python3 benches/latency_during_seal.py --bin target/release/adstore \\
        --file benches/out/events-10000000-s42-2d.ndjson [--seconds 45] [--config FILE]
    python3 benches/latency_during_seal.py --bin target/release/adstore \\
        --file benches/out/events-10000000-s42-2d.ndjson --hold-head 3000000

Starts `adstore serve` on a fresh data directory (2 rayon and 2 tokio
threads, as the benchmark does), loads FILE with `adstore ingest --backfill`,
then runs QUERY every 0.5 s for --seconds while the seals run, and prints
the latency percentiles, when the head was first empty (checked after each
query, and every half second once the queries are done), the server's CPU time
and the wall time of each background task (`adstore_maintenance_seconds_total`).

With --hold-head N: loads the first N events of FILE into a head that does
not seal (no seal is due: `max_head_bytes` 8 GiB, `seal_max_rows` and
`seal_max_age_ms` out of reach), times QUERY over it (the first run, then
the median of 10), restarts the server with the default configuration,
waits until every event is sealed and final, and times QUERY again: fresh
against sealed data with no seal running. Standard library only.
"""
import argparse, http.client, os, shutil, subprocess, tempfile, time, json
from statistics import median

QUERY = ("select campaign_id, count(*) as n, sum(cost_micros) as spend from events "
         "group by campaign_id order by n desc limit 10")

HOLD_CONFIG = """[storage]
max_head_bytes = 8589934592
seal_max_rows = 100000000
seal_max_age_ms = 1000000000
"""


def post_sql(port, sql):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/v1/sql", body=sql, headers={"content-type": "text/plain"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"query failed: HTTP {r.status}: {body[:200]!r}")
    return json.loads(body)


def segments(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/v1/segments")
    seg = json.loads(c.getresponse().read())
    c.close()
    return seg


def head_rows(port):
    return segments(port)["head"]["rows"]


def maintenance_seconds(port):
    """Wall time each background task has run, from /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        if line.startswith('adstore_maintenance_seconds_total{task="'):
            task = line.split('"')[1]
            out[task] = float(line.rsplit(" ", 1)[1])
    return out


def serve(a, data, env, config=None):
    args = [a.bin, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{a.port}", "--pg-listen", "off"]
    if config:
        args += ["--config", config]
    server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    for _ in range(600):
        try:
            head_rows(a.port)
            return server
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise SystemExit("adstore serve did not start")


def timed(port, runs):
    """(first run ms, median ms of `runs` more, the answer's rows)."""
    times, rows = [], None
    for _ in range(runs + 1):
        t = time.perf_counter()
        rows = post_sql(port, QUERY)["rows"]
        times.append((time.perf_counter() - t) * 1000)
    return times[0], median(times[1:]), rows


def hold_head(a, data, env):
    events = os.path.join(data, "..", f"{os.path.basename(data)}-events.ndjson")
    with open(a.file, "rb") as src, open(events, "wb") as dst:
        for n, line in enumerate(src):
            if n >= a.hold_head:
                break
            dst.write(line)
    config = os.path.join(data, "..", f"{os.path.basename(data)}-hold.toml")
    with open(config, "w") as f:
        f.write(HOLD_CONFIG)
    try:
        server = serve(a, data, env, config)
        try:
            subprocess.run([a.bin, "ingest", events, "--url", f"http://127.0.0.1:{a.port}", "--backfill"],
                           check=True, stdout=subprocess.DEVNULL, env=env)
            held = head_rows(a.port)
            first, fresh, fresh_rows = timed(a.port, 10)
            print(f"head holds {held:,} events: first query {first:.1f} ms, then median {fresh:.1f} ms")
        finally:
            server.terminate()
            server.wait()
        server = serve(a, data, env)
        try:
            while True:
                seg = segments(a.port)
                if seg["head"]["rows"] == 0 and seg.get("finalize_pending_buckets", 0) == 0 \
                        and all(s.get("is_final") for s in seg.get("segments", [])):
                    break
                time.sleep(1)
            time.sleep(5)
            first, sealed, sealed_rows = timed(a.port, 10)
            print(f"the same events sealed: first query {first:.1f} ms, then median {sealed:.1f} ms; "
                  f"fresh / sealed = {fresh / sealed:.2f}")
            if fresh_rows != sealed_rows:
                raise SystemExit(f"answers differ: fresh {fresh_rows}, sealed {sealed_rows}")
        finally:
            server.terminate()
            server.wait()
    finally:
        os.unlink(events)
        os.unlink(config)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--seconds", type=float, default=45)
    ap.add_argument("--port", type=int, default=18123)
    ap.add_argument("--config", help="the server's configuration file while the load is sealed (default: none)")
    ap.add_argument("--hold-head", type=int, metavar="N", help="time QUERY over N events held in the head, then sealed")
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="adstore-latency-")
    env = dict(os.environ, RAYON_NUM_THREADS="2", TOKIO_WORKER_THREADS="2", ADSTORE_LOG="warn")
    if a.hold_head:
        try:
            hold_head(a, data, env)
        finally:
            shutil.rmtree(data, ignore_errors=True)
        return
    server = serve(a, data, env, a.config)
    try:
        start = time.time()
        subprocess.run([a.bin, "ingest", a.file, "--url", f"http://127.0.0.1:{a.port}", "--backfill"],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        acked = time.time()
        print(f"loaded in {acked - start:.1f} s")
        lat, sealed = [], None
        end = time.time() + a.seconds
        while time.time() < end:
            t = time.time()
            post_sql(a.port, QUERY)
            lat.append((time.time() - t) * 1000)
            if sealed is None and head_rows(a.port) == 0:
                sealed = time.time()
            time.sleep(0.5)
        while sealed is None:
            if head_rows(a.port) == 0:
                sealed = time.time()
            else:
                time.sleep(0.5)
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        lat.sort()
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        print(f"queries {len(lat)}: p50 {p(0.5):.0f} ms, p90 {p(0.9):.0f} ms, max {lat[-1]:.0f} ms")
        print(f"head empty {sealed - start:.0f} s after the load started, {sealed - acked:.1f} s after its last "
              f"acknowledgement; server CPU {cpu:.1f} s")
        print("background work until then (s): " + ", ".join(
            f"{task} {secs:.1f}" for task, secs in maintenance_seconds(a.port).items() if secs >= 0.05))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
