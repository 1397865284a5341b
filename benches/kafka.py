#!/usr/bin/env python3
"""The Kafka suite (issue 28's targets): one node consuming a 4-partition
topic against HTTP ingest of the same events, and how long the consumer's
lag takes to reach zero after a burst.

    benches/run.sh --suite kafka [--events N]

run.sh builds adstore (release), then calls `kafka.py run`:

    adstore gen --span 12h ──► benches/out/events-N-s42-12h.ndjson (cached)
        │
        ├─► HTTP: adstore serve (fresh data dir), `adstore ingest FILE`:
        │   events acknowledged per second (the ingest command's own clock)
        │
        ├─► tansu broker (--tansu, SQLite storage in a fresh directory); the
        │   file produced to topic `events` (4 partitions, keyed by advertiser)
        │   with kafka-python before the server starts
        │
        ├─► Kafka: adstore serve (fresh data dir) with a [[sources.kafka]]
        │   on the topic: from the first message stored to the last (every
        │   message in a WAL record with its offsets, what "acknowledged"
        │   means for a source), read from /metrics every 100 ms
        │
        └─► burst: with that server caught up, --burst more events produced
            as fast as kafka-python sends them; the time from the producer's
            last acknowledgement until the lag of every partition is 0

Results: benches/out/kafka/results.json. Needs kafka-python
(`pip install kafka-python`) and a tansu binary (`cargo install tansu
--features libsql`; a release build for figures of record).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRODUCE = ROOT / "tests" / "kafka" / "produce.py"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(bin_: str, data: Path, config: str | None) -> tuple[subprocess.Popen, str]:
    args = [bin_, "serve", "--listen", "127.0.0.1:0", "--pg-listen", "off", "--data-dir", str(data)]
    if config is not None:
        path = data.with_suffix(".toml")
        path.write_text(config)
        args += ["--config", str(path)]
    env = dict(os.environ, ADSTORE_LOG="warn")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(data.with_suffix(".log"), "w"), env=env, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("listening on http://"):
            return proc, line.split()[-1]
    raise RuntimeError("adstore serve did not start")


def metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        return r.read().decode()


def series(text: str, name: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)]


def produce(bootstrap: str, file: Path, partitions: int = 4) -> tuple[int, float]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(PRODUCE), bootstrap, "events", str(partitions), str(file), "--per-second", "0"],
        check=True, capture_output=True, text=True,
    )
    return int(out.stdout.strip()), time.monotonic() - started


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Broker:
    """tansu (SQLite storage, produced to with kafka-python) or librdkafka's
    mock cluster (benches/kafka_broker.rs, produced to in-process, in
    steps: it keeps only 5 MiB a partition)."""

    def __init__(self, kind: str, args: argparse.Namespace, work: Path):
        self.kind = kind
        if kind == "tansu":
            port = free_port()
            directory = work / f"broker-{port}"
            directory.mkdir()
            listener = f"tcp://127.0.0.1:{port}"
            self.proc = subprocess.Popen(
                [args.tansu, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                 "--storage-engine", "sqlite://tansu.db"],
                cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
            self.bootstrap = f"127.0.0.1:{port}"
        else:
            self.proc = subprocess.Popen([args.mock_broker, "4"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)
            self.window = args.window
            line = self.proc.stdout.readline().split()
            assert line[0] == "bootstrap", line
            self.bootstrap = line[1]

    def command(self, line: str) -> list[str]:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split()

    def produce(self, file: Path) -> tuple[int, float]:
        """tansu: the whole file, before the server starts."""
        return produce(self.bootstrap, file)

    def paced(self, file: Path, urls: list[str], timeout: float) -> tuple[int, float]:
        """mock: the file sent in steps of STEP messages while the servers
        at `urls` have stored all but WINDOW of them; returns the messages
        and the seconds from the first sent to the last stored."""
        window = self.window
        step = window // 4
        total = int(self.command(f"load {file}")[1])
        sent, started = 0, time.monotonic()
        while True:
            stored = stored_offsets(urls)
            if sent >= total and stored >= total:
                return total, time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{stored} of {total} stored within {timeout} s")
            if sent < total and sent - stored < window:
                sent = int(self.command(f"send {step}")[1])
            else:
                time.sleep(0.002)

    def stop(self) -> None:
        if self.kind == "mock":
            self.proc.stdin.close()
        stop(self.proc)


def stored_offsets(urls: list[str]) -> float:
    """The next offset stored of each partition, the highest any server
    reports, summed: messages stored (the topic starts at offset 0)."""
    best: dict[str, float] = {}
    for u in urls:
        for m in re.finditer(r'^adstore_kafka_stored_offset{[^}]*partition="(\d+)"} (\S+)$', metrics(u), re.M):
            best[m.group(1)] = max(best.get(m.group(1), 0.0), float(m.group(2)))
    return sum(best.values())


def source_config(bootstrap: str, args: argparse.Namespace) -> str:
    return (f'[[sources.kafka]]\nname = "bench"\nbrokers = "{bootstrap}"\ntopic = "events"\n'
            f'max_batch_bytes = {args.batch_bytes}\nmax_batch_wait_ms = {args.batch_wait_ms}\n{args.source_extra}\n')


def settle_group(seconds: float) -> None:
    """Gives the consumer group time to form before messages flow: a
    partition shows in /metrics only from its first message."""
    time.sleep(seconds)


def consume(urls: list[str], sent: int, timeout: float) -> tuple[float, float]:
    """Waits until the servers at `urls` together have stored `sent`
    messages; returns the seconds from the first stored to the last, and
    how many were stored at the first sight."""
    first = last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = [metrics(u) for u in urls]
        handled = sum(sum(series(t, "adstore_kafka_messages_total")) for t in texts)
        stored = sum(sum(series(t, "adstore_kafka_stored_offset")) for t in texts)
        now = time.monotonic()
        if first is None and stored > 0:
            first = (now, stored)
        if stored >= sent and handled >= sent:
            last = now
            break
        time.sleep(0.1)
    if first is None or last is None:
        raise RuntimeError(f"the source did not store {sent} messages within {timeout} s")
    return last - first[0], first[1]


def run(args: argparse.Namespace) -> None:
    out = ROOT / "benches" / "out" / "kafka"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="adstore-kafka-bench-"))
    results: dict = {"events": args.events, "burst": args.burst, "broker": args.broker,
                     "batch_wait_ms": args.batch_wait_ms, "source_extra": args.source_extra}
    try:
        file = ROOT / "benches" / "out" / f"events-{args.events}-s42-12h.ndjson"
        if not file.exists():
            subprocess.run([args.bin, "gen", "--events", str(args.events), "--seed", "42", "--span", "12h",
                            "--out", str(file)], check=True)
        lines = sum(1 for _ in open(file, "rb"))

        # HTTP: the ingest command's own rate.
        proc, url = serve(args.bin, work / "http", None)
        started = time.monotonic()
        done = subprocess.run([args.bin, "ingest", str(file), "--url", url], check=True, capture_output=True, text=True)
        results["http_seconds"] = time.monotonic() - started
        results["http_events_per_s"] = lines / results["http_seconds"]
        results["http_ingest_output"] = (done.stdout + done.stderr).strip().splitlines()[-3:]
        stop(proc)

        # One node. tansu: the broker loaded before the server starts;
        # mock: sent while the server consumes, as fast as it stores.
        broker = Broker(args.broker, args, work)
        if args.broker == "tansu":
            sent, seconds = broker.produce(file)
            results["produced"] = sent
            results["produce_seconds"] = seconds
        proc, url = serve(args.bin, work / "kafka", source_config(broker.bootstrap, args))
        cpu = (cpu_seconds(proc.pid), cpu_seconds(broker.proc.pid))
        if args.broker == "tansu":
            elapsed, at_first = consume([url], sent, args.timeout)
        else:
            settle_group(3)
            sent, elapsed = broker.paced(file, [url], args.timeout)
            at_first = 0
        results["kafka_seconds"] = elapsed
        results["kafka_events_per_s"] = (sent - at_first) / elapsed
        results["kafka_cpu_seconds"] = {"adstore": cpu_seconds(proc.pid) - cpu[0],
                                        "broker": cpu_seconds(broker.proc.pid) - cpu[1]}
        results["kafka_events_per_adstore_cpu_s"] = sent / max(results["kafka_cpu_seconds"]["adstore"], 1e-9)
        text = metrics(url)
        for name in ["adstore_kafka_messages_total", "adstore_kafka_events_accepted_total",
                     "adstore_kafka_events_duplicate_total", "adstore_kafka_dead_letters_total",
                     "adstore_kafka_records_total", "adstore_kafka_pauses_total"]:
            results[name] = sum(series(text, name))
        if results["adstore_kafka_messages_total"] < sent:
            raise RuntimeError(f"{results['adstore_kafka_messages_total']} of {sent} messages read: the broker lost some")

        # A burst into the caught-up consumer (tansu only: the mock keeps
        # 5 MiB a partition, less than a burst).
        burst = work / "burst.ndjson"
        if args.broker == "mock":
            args.burst = 0
        subprocess.run([args.bin, "gen", "--events", str(args.burst), "--seed", "7", "--span", "1h",
                        "--out", str(burst)], check=True, capture_output=True)
        burst_sent, burst_seconds = broker.produce(burst) if args.burst else (0, 0.0)
        produced_at = time.monotonic()
        while args.burst:
            lags = series(metrics(url), "adstore_kafka_lag_messages")
            stored = sum(series(metrics(url), "adstore_kafka_stored_offset"))
            if lags and max(lags) == 0 and stored >= sent + burst_sent:
                break
            if time.monotonic() - produced_at > args.timeout:
                raise RuntimeError("lag did not reach 0")
            time.sleep(0.1)
        if args.burst:
            results["burst_produce_seconds"] = burst_seconds
            results["burst_lag_zero_after_s"] = time.monotonic() - produced_at
        stop(proc)
        broker.stop()

        # Two nodes in one group on a fresh broker with the same topic.
        if args.nodes > 1:
            broker = Broker(args.broker, args, work)
            if args.broker == "tansu":
                sent, _ = broker.produce(file)
            nodes = [serve(args.bin, work / f"node-{n}", source_config(broker.bootstrap, args))
                     for n in range(args.nodes)]
            cpu = [cpu_seconds(p.pid) for p, _ in nodes] + [cpu_seconds(broker.proc.pid)]
            urls = [u for _, u in nodes]
            if args.broker == "tansu":
                elapsed, at_first = consume(urls, sent, args.timeout)
            else:
                settle_group(10)
                sent, elapsed = broker.paced(file, urls, args.timeout)
                at_first = 0
            results["nodes"] = args.nodes
            results["nodes_seconds"] = elapsed
            results["nodes_events_per_s"] = (sent - at_first) / elapsed
            results["nodes_ratio_to_one"] = results["nodes_events_per_s"] / results["kafka_events_per_s"]
            for name, key in [("adstore_kafka_messages_total", "nodes_messages"),
                              ("adstore_kafka_events_accepted_total", "nodes_accepted"),
                              ("adstore_kafka_events_duplicate_total", "nodes_duplicates")]:
                results[key] = [sum(series(metrics(u), name)) for u in urls]
            if sum(results["nodes_messages"]) < sent:
                raise RuntimeError(f"{results['nodes_messages']} of {sent} messages read: the broker lost some")
            results["nodes_cpu_seconds"] = {
                "adstore": [cpu_seconds(p.pid) - c for (p, _), c in zip(nodes, cpu)],
                "broker": cpu_seconds(broker.proc.pid) - cpu[-1],
            }
            for p, _ in nodes:
                stop(p)
            broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / f"results-{args.broker}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--tansu", default=shutil.which("tansu") or str(Path.home() / ".cargo/bin/tansu"))
    r.add_argument("--events", type=int, default=1_000_000)
    r.add_argument("--burst", type=int, default=1_000_000)
    r.add_argument("--batch-bytes", type=int, default=4 << 20)
    r.add_argument("--batch-wait-ms", type=int, default=100, help="the source's max_batch_wait_ms")
    r.add_argument("--source-extra", default="", help="more TOML lines for the [[sources.kafka]] table")
    r.add_argument("--window", type=int, default=30_000,
                   help="mock: messages sent and not yet stored at most (the mock keeps 5 MiB a partition)")
    r.add_argument("--timeout", type=float, default=1800)
    r.add_argument("--broker", choices=["tansu", "mock"], default="tansu")
    r.add_argument("--mock-broker", help="the kafka_broker bench binary (--broker mock)")
    r.add_argument("--nodes", type=int, default=2, help="nodes of the group run (1: none)")
    args = p.parse_args()
    run(args)


if __name__ == "__main__":
    main()
