#!/usr/bin/env python3
"""Dashboard query latency while a bulk load is being sealed.

    python3 benches/latency_during_seal.py --bin target/release/adstore \\
        --file benches/out/events-10000000-s42-2d.ndjson [--seconds 45]

Starts `adstore serve` on a fresh data directory (2 rayon and 2 tokio
threads, as the benchmark does), loads FILE with `adstore ingest --backfill`,
then runs QUERY every 0.5 s for --seconds while the seals run, and prints
the latency percentiles, when the head was empty and the server's CPU time.
Standard library only.
"""
import argparse, http.client, os, shutil, subprocess, tempfile, time, json

QUERY = ("select campaign_id, count(*) as n, sum(cost_micros) as spend from events "
         "group by campaign_id order by n desc limit 10")


def post_sql(port, sql):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/v1/sql", body=sql, headers={"content-type": "text/plain"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"query failed: HTTP {r.status}: {body[:200]!r}")


def head_rows(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/v1/segments")
    rows = json.loads(c.getresponse().read())["head"]["rows"]
    c.close()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--seconds", type=float, default=45)
    ap.add_argument("--port", type=int, default=18123)
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="adstore-latency-")
    env = dict(os.environ, RAYON_NUM_THREADS="2", TOKIO_WORKER_THREADS="2", ADSTORE_LOG="warn")
    server = subprocess.Popen([a.bin, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{a.port}", "--pg-listen", "off"],
                              env=env, stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                head_rows(a.port)
                break
            except OSError:
                time.sleep(0.1)
        start = time.time()
        subprocess.run([a.bin, "ingest", a.file, "--url", f"http://127.0.0.1:{a.port}", "--backfill"],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        print(f"loaded in {time.time() - start:.1f} s")
        lat = []
        end = time.time() + a.seconds
        while time.time() < end:
            t = time.time()
            post_sql(a.port, QUERY)
            lat.append((time.time() - t) * 1000)
            time.sleep(0.5)
        while head_rows(a.port) > 0:
            time.sleep(1)
        sealed = time.time() - start
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        lat.sort()
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        print(f"queries {len(lat)}: p50 {p(0.5):.0f} ms, p90 {p(0.9):.0f} ms, max {lat[-1]:.0f} ms")
        print(f"head empty {sealed:.0f} s after the load started; server CPU {cpu:.1f} s")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
