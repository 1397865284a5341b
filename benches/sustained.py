#!/usr/bin/env python3
"""The sustained-load suite: days of event time pushed through one server at
full speed, with the head bounded, until the dedupe window and the allowed
lateness have filled and slid; what it costs in memory, time and disk.

    benches/run.sh --suite sustained [--events N] [--span 3d] [--label L]
                   [--config-extra ingest.dedupe_spill_keys=0] [--busy-file /tmp/bench-running]

run.sh builds adstore (release), then calls `sustained.py run`:

    adstore gen --span 3d ──► benches/out/events-N-s42-3d.ndjson (cached, as the other suites')
        │
        ├─► adstore serve (fresh data dir, free port, fsync on, ADSTORE_LOG=info)
        │     config: [storage] max_head_bytes = 1 GiB, plus every --config-extra
        │
        ├─► load: the file in its own order (event time, with the generator's late
        │   arrivals), cut at line ends into bodies of --body-bytes, POSTed to
        │   /v1/events by --connections threads (live mode: no ?mode=backfill, so the
        │   lateness bound applies); a 503 (head full) is retried after --backoff-ms
        │   and counted
        │     every 1 s:  VmRSS of the server, tagged with the phase (the event day
        │                 being sent: day1, day2, ...; then settle, idle)
        │     every --scrape-s: GET /metrics (dedupe, attribution and head gauges)
        │
        ├─► after the last acknowledgement: head empty (GET /v1/segments), then
        │   settled: every segment final, nothing to finalize, every rollup
        │   complete (final days merged), no billing snapshot pending, and the
        │   segment counts still for --quiet-s
        │
        ├─► --idle-s more of RSS sampling (does the memory drop once idle?), VmHWM,
        │   bytes on disk by category (raw and rollup segments by the catalog,
        │   billing/, wal/, dedupe/, the rest), SIGTERM, warnings and errors of
        │   the server's log
        │
        └─► benches/out/sustained/<label>/results.json and report.md

`sustained.py report LABEL...` renders the runs of several labels side by
side (the run of record: docs/bench/sustained.md).

Only the standard library: the suite needs no virtualenv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import harness
from harness import GEN_SEED, GEN_START, BenchError, cpu_seconds, generate, log, machine_description

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out" / "sustained"
DAY_MS = 86_400_000
GIB = 1 << 30

# The head bound of the suite: small against the 24 GiB machine, so the
# load meets backpressure and the sealer seals every partition at each pass.
MAX_HEAD_BYTES = 1 << 30

# /metrics gauges recorded per phase (the first word of each line).
GAUGES = (
    "adstore_dedupe_keys", "adstore_dedupe_table_bytes", "adstore_dedupe_memory_bytes",
    "adstore_dedupe_disk_bytes", "adstore_dedupe_runs", "adstore_dedupe_spilled_keys",
    "adstore_attribution_index_entries", "adstore_attribution_parts", "adstore_attribution_memory_bytes",
    "adstore_attribution_disk_bytes", "adstore_head_bytes", "adstore_head_rows",
    "adstore_block_cache_bytes", "adstore_segment_metadata_bytes", "adstore_process_resident_memory_bytes",
    "adstore_segments",
    "adstore_rollup_segments", "adstore_rollup_bytes", "adstore_billing_snapshots",
    'adstore_memory_used_bytes{part="head"}', 'adstore_memory_used_bytes{part="block_cache"}',
    'adstore_memory_used_bytes{part="dedupe"}', 'adstore_memory_used_bytes{part="attribution"}',
)
COUNTERS = (
    "adstore_ingest_head_full_total", "adstore_events_accepted_total", "adstore_events_duplicate_total",
    "adstore_events_rejected_total", "adstore_seal_duplicates_dropped_total", "adstore_seal_errors_total",
    "adstore_io_errors_total", "adstore_maintenance_failures_total", "adstore_dedupe_spilled_keys_total",
    "adstore_attribution_spilled_entries_total",
)

TS_RE = re.compile(rb'"ts":\s*(\d+)')


# ---------------------------------------------------------------------------
# Pure helpers (covered by --self-test)
# ---------------------------------------------------------------------------


def parse_metrics(text: str) -> dict:
    """Prometheus text: {series: value}, a labelled series under its whole name (`name{labels}`);
    a labelled family is also summed under its bare name when that has no series of its own."""
    out, sums = {}, {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            series, value = line.rsplit(None, 1)
            v = float(value)
        except ValueError:
            continue
        out[series] = v
        if "{" in series:
            name = series.split("{", 1)[0]
            sums[name] = sums.get(name, 0.0) + v
    for name, v in sums.items():
        out.setdefault(name, v)
    return out


def parse_config_extra(items) -> dict:
    """`section.key=value` settings (value as TOML writes it) as {section: {key: value}}."""
    conf: dict = {}
    for item in items:
        m = re.fullmatch(r"\s*([A-Za-z_][\w-]*)\.([A-Za-z_][\w-]*)\s*=\s*(.+?)\s*", item)
        if not m:
            raise BenchError(f"--config-extra {item!r}: expected section.key=value, e.g. ingest.dedupe_spill_keys=0")
        conf.setdefault(m.group(1), {})[m.group(2)] = m.group(3)
    return conf


def render_config(extra: dict) -> str:
    """The suite's TOML: the head bound, then every extra setting (which may override it)."""
    conf = {"storage": {"max_head_bytes": str(MAX_HEAD_BYTES)}}
    for section, kv in extra.items():
        conf.setdefault(section, {}).update(kv)
    lines = []
    for section, kv in conf.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in kv.items()]
        lines.append("")
    return "\n".join(lines)


def cut_bodies(f, body_bytes: int):
    """Bodies of about `body_bytes` from a binary file, each ending at a line end: (body, lines)."""
    rest = b""
    while True:
        chunk = f.read(body_bytes)
        if not chunk:
            break
        buf = rest + chunk
        cut = buf.rfind(b"\n")
        if cut < 0:
            rest = buf
            continue
        body, rest = buf[:cut + 1], buf[cut + 1:]
        yield body, body.count(b"\n")
    if rest.strip():
        body = rest if rest.endswith(b"\n") else rest + b"\n"
        yield body, body.count(b"\n")


def event_day(body: bytes, start_ms: int, span_days: int) -> int:
    """Day of event time (1-based) of a body's first event, clamped to the span (the
    generator's trailing clicks reach past its last day)."""
    m = TS_RE.search(body, 0, 4096)
    if not m:
        return 1
    return min(max((int(m.group(1)) - start_ms) // DAY_MS + 1, 1), span_days)


def phase_summary(samples, key: str):
    """{phase: {"max": v, "last": v}} of `key` over samples ({"phase": p, key: v})."""
    out: dict = {}
    for s in samples:
        v = s.get(key)
        if v is None:
            continue
        p = out.setdefault(s["phase"], {"max": v, "last": v})
        p["max"] = max(p["max"], v)
        p["last"] = v
    return out


def classify_disk(data_dir: Path, raw_ids, rollup_ids) -> dict:
    """Bytes on disk under `data_dir` (allocated, as du counts them) by category:
    raw and rollup segments (by the catalog's ids), segment files the catalog does not
    list, billing snapshots, WAL, dedupe runs, attribution parts, and the rest (catalog, lock,
    other state)."""
    raw_ids, rollup_ids = set(raw_ids), set(rollup_ids)
    cats = {k: 0 for k in ("raw", "rollup", "unlisted_segments", "billing", "wal", "dedupe",
                                  "attribution", "state")}
    files = {k: 0 for k in cats}
    state_paths: dict = {}
    for root, _dirs, names in os.walk(data_dir):
        rel_root = Path(root).relative_to(data_dir)
        top = rel_root.parts[0] if rel_root.parts else ""
        for name in names:
            try:
                n = os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
            if top == "segments":
                stem = name[:-4] if name.endswith(".seg") else None
                cat = "raw" if stem in raw_ids else "rollup" if stem in rollup_ids else "unlisted_segments"
            elif top in ("billing", "wal", "dedupe", "attribution"):
                cat = top
            else:
                cat = "state"
                key = str(rel_root / name) if not top else top + "/"
                state_paths[key] = state_paths.get(key, 0) + n
            cats[cat] += n
            files[cat] += 1
    return {"bytes": cats, "files": files, "state_paths": state_paths}


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class Server:
    """`adstore serve` on a fresh data directory and a free port; its log in a file."""

    def __init__(self, binary: Path, data_dir: Path, config: Path, log_path: Path, log_filter: str):
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        self.data_dir, self.log_path = data_dir, log_path
        env = dict(os.environ, ADSTORE_LOG=log_filter)
        self.stdout_path = log_path.with_suffix(".stdout")
        self._stdout = open(self.stdout_path, "w")
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([str(binary), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--pg-listen", "off",
                                      "--config", str(config)], stdout=self._stdout, stderr=self._log, env=env)
        deadline = time.monotonic() + 120
        while True:
            m = re.search(r"listening on http://([\d.]+):(\d+)", self.stdout_path.read_text())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"adstore serve did not start (see {log_path})")
            time.sleep(0.1)
        self.exit_code = None

    def connect(self, timeout_s: float = 600) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)

    def status_value(self, field: str) -> int:
        """A field of /proc/PID/status in bytes (VmRSS, VmHWM), 0 once the process is gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                log("adstore serve did not exit 300 s after SIGTERM: killed")
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self._stdout.close()
        self._log.close()
        return self.exit_code


class Client:
    """One keep-alive connection for GETs, reconnected on failure."""

    def __init__(self, server: Server, timeout_s: float = 60):
        self.server, self.timeout_s, self.conn = server, timeout_s, None

    def get(self, path: str) -> bytes:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = self.server.connect(self.timeout_s)
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise BenchError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
                return body
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, path: str):
        return json.loads(self.get(path))

    def metrics(self) -> dict:
        return parse_metrics(self.get("/metrics").decode())

    def close(self):
        if self.conn is not None:
            self.conn.close()


# ---------------------------------------------------------------------------
# Load and sampling
# ---------------------------------------------------------------------------


class Phase:
    """What the run is doing, for tagging samples: day1..dayN while that day of event
    time is being sent (the latest day any sender has started), then settle, idle."""

    def __init__(self):
        self.lock = threading.Lock()
        self.name = "start"
        self.day = 0
        self.started: dict = {}
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def enter_day(self, day: int):
        with self.lock:
            if day > self.day:
                self.day = day
                self.name = f"day{day}"
                self.started[self.name] = self.now()

    def set(self, name: str):
        with self.lock:
            self.name = name
            self.started[name] = self.now()

    def get(self) -> str:
        with self.lock:
            return self.name


class RssSampler(threading.Thread):
    def __init__(self, server: Server, phase: Phase, interval_s: float = 1.0):
        super().__init__(daemon=True)
        self.server, self.phase, self.interval_s = server, phase, interval_s
        self.samples: list = []
        self.stop_evt = threading.Event()

    def sample(self):
        rss = self.server.status_value("VmRSS")
        if rss:
            # RssAnon is the heap (and anonymous maps); RssFile the mapped segment, run and part pages.
            self.samples.append({"t": round(self.phase.now(), 2), "phase": self.phase.get(), "rss": rss,
                                 "anon": self.server.status_value("RssAnon"),
                                 "file": self.server.status_value("RssFile")})

    def run(self):
        while not self.stop_evt.is_set():
            self.sample()
            self.stop_evt.wait(self.interval_s)

    def stop(self):
        self.stop_evt.set()
        self.join()
        self.sample()


class MetricsScraper(threading.Thread):
    def __init__(self, server: Server, phase: Phase, interval_s: float):
        super().__init__(daemon=True)
        self.client = Client(server, timeout_s=60)
        self.phase, self.interval_s = phase, interval_s
        self.samples: list = []
        self.errors = 0
        self.stop_evt = threading.Event()

    def sample(self):
        try:
            t = self.phase.now()
            m = self.client.metrics()
        except (BenchError, OSError, http.client.HTTPException):
            self.errors += 1
            return
        s = {"t": round(t, 2), "phase": self.phase.get(), "scrape_s": round(self.phase.now() - t, 3)}
        s.update({k: m[k] for k in GAUGES + COUNTERS if k in m})
        self.samples.append(s)

    def run(self):
        while not self.stop_evt.is_set():
            self.sample()
            self.stop_evt.wait(self.interval_s)

    def stop(self):
        self.stop_evt.set()
        self.join()
        self.sample()
        self.client.close()


class Loader:
    """Sends the file's bodies in order over `connections` connections; a 503 is retried
    after `backoff_s` and counted."""

    def __init__(self, server: Server, data: Path, args, phase: Phase, start_ms: int, span_days: int):
        self.server, self.data, self.phase = server, data, phase
        self.body_bytes, self.connections = args.body_bytes, args.connections
        self.backoff_s = args.backoff_ms / 1000
        self.path = "/v1/events" + ("?mode=backfill" if args.backfill else "")
        self.start_ms, self.span_days = start_ms, span_days
        self.lock = threading.Lock()
        self.totals = {"sent": 0, "accepted": 0, "duplicates": 0, "rejected": 0, "requests": 0,
                       "retries_503": 0, "retries_other": 0}
        self.other_statuses: dict = {}
        self.reject_examples: list = []
        self.latencies: list = []
        self.first_send = None
        self.last_ack = None
        self.failure = None
        self.queue: queue.Queue = queue.Queue(maxsize=2 * self.connections)

    def run(self):
        senders = [threading.Thread(target=self.sender, daemon=True) for _ in range(self.connections)]
        for t in senders:
            t.start()
        with open(self.data, "rb") as f:
            for body, lines in cut_bodies(f, self.body_bytes):
                if self.failure:
                    break
                self.queue.put((body, lines, event_day(body, self.start_ms, self.span_days)))
        for _ in senders:
            self.queue.put(None)
        for t in senders:
            t.join()
        if self.failure:
            raise BenchError(self.failure)

    def sender(self):
        conn = None
        while True:
            item = self.queue.get()
            if item is None or self.failure:
                if conn is not None:
                    conn.close()
                return
            body, lines, day = item
            self.phase.enter_day(day)
            t0 = time.perf_counter()
            with self.lock:
                if self.first_send is None:
                    self.first_send = t0
            attempt = 0
            while True:
                attempt += 1
                if conn is None:
                    conn = self.server.connect()
                try:
                    conn.request("POST", self.path, body=body, headers={"content-type": "application/x-ndjson"})
                    resp = conn.getresponse()
                    answer = resp.read()
                    status = resp.status
                except (http.client.HTTPException, OSError) as e:
                    conn.close()
                    conn = None
                    status, answer = None, str(e).encode()
                if status in (200, 422):
                    break
                with self.lock:
                    if status == 503:
                        self.totals["retries_503"] += 1
                    else:
                        self.totals["retries_other"] += 1
                        self.other_statuses[str(status)] = self.other_statuses.get(str(status), 0) + 1
                if status not in (503, None, 429, 507) or attempt >= 1000:
                    self.failure = f"POST {self.path}: HTTP {status} after {attempt} attempt(s): {answer[:300]!r}"
                    return
                time.sleep(self.backoff_s)
            now = time.perf_counter()
            doc = json.loads(answer)
            with self.lock:
                self.last_ack = max(self.last_ack or now, now)
                self.latencies.append(now - t0)
                tot = self.totals
                tot["sent"] += lines
                tot["requests"] += 1
                for k in ("accepted", "duplicates", "rejected"):
                    tot[k] += int(doc.get(k, 0))
                if doc.get("errors") and len(self.reject_examples) < 5:
                    self.reject_examples.append(doc["errors"][:3])


# ---------------------------------------------------------------------------
# Settle
# ---------------------------------------------------------------------------


def settle_state(client: Client) -> tuple[bool, dict]:
    """(settled, what was seen): head empty, nothing to finalize, every segment final,
    every rollup complete (final days merged), no billing snapshot pending."""
    seg = client.json("/v1/segments")
    roll = client.json("/v1/rollups").get("rollups", [])
    m = client.metrics()
    raw = seg.get("segments", [])
    state = {
        "head_rows": seg.get("head", {}).get("rows", 0),
        "head_bytes": seg.get("head", {}).get("bytes", 0),
        "finalize_pending_buckets": seg.get("finalize_pending_buckets", 0),
        "raw_segments": len(raw),
        "raw_not_final": sum(1 for s in raw if not s.get("is_final", False)),
        "rollup_segments": len(seg.get("rollups", [])),
        "rollups_incomplete": [r.get("name") for r in roll if r.get("complete") is not True],
        "billing_snapshots_pending": m.get("adstore_billing_snapshots_pending", 0),
    }
    settled = (state["head_rows"] == 0 and state["finalize_pending_buckets"] == 0 and state["raw_not_final"] == 0
               and not state["rollups_incomplete"] and state["billing_snapshots_pending"] == 0)
    return settled, state


def wait_settled(client: Client, phase: Phase, t_last_ack: float, quiet_s: float, timeout_s: float) -> dict:
    """Polls every 0.5 s: seconds from the last ack until the head was empty, and until the
    store settled (the moment after which nothing moved for `quiet_s`)."""
    head_empty = None
    since, last = None, None
    while True:
        now = time.perf_counter()
        settled, state = settle_state(client)
        if head_empty is None and state["head_rows"] == 0:
            head_empty = now - t_last_ack
            log(f"head empty {head_empty:.1f} s after the last ack")
        counts = (state["raw_segments"], state["rollup_segments"], state["raw_not_final"])
        if not settled or counts != last:
            since, last = now, counts
        elif now - since >= quiet_s:
            return {"head_empty_s": head_empty, "settled_s": since - t_last_ack, "state": state}
        if now - t_last_ack > timeout_s:
            raise BenchError(f"not settled {timeout_s:.0f} s after the last ack: {json.dumps(state)}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log_findings(path: Path, limit: int = 20) -> dict:
    """WARN and ERROR lines of the server's log: counts and the first few distinct messages."""
    counts = {"WARN": 0, "ERROR": 0}
    examples: dict = {}
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {"counts": counts, "examples": []}
    for line in text.splitlines():
        line = ansi.sub("", line)
        for level in counts:
            if re.search(rf"\b{level}\b", line):
                counts[level] += 1
                # The message without its timestamp, and numbers folded, to group repeats.
                key = re.sub(r"\d+", "N", line.split(level, 1)[1].strip())[:160]
                e = examples.setdefault(key, {"level": level, "count": 0, "first": line.strip()[:400]})
                e["count"] += 1
    top = sorted(examples.values(), key=lambda e: (e["level"] != "ERROR", -e["count"]))[:limit]
    return {"counts": counts, "examples": top}


def run_main(args) -> int:
    span_days = int(args.span.rstrip("d"))
    if not args.span.endswith("d") or span_days < 1:
        raise BenchError(f"--span {args.span}: whole days, e.g. 3d")
    binary = Path(args.bin).resolve()
    extra = parse_config_extra(args.config_extra)
    label = args.label or ("default" if not extra else "-".join(
        f"{k}{v}" for kv in extra.values() for k, v in kv.items()).replace("_", "-"))
    out = Path(args.out).resolve() / label
    out.mkdir(parents=True, exist_ok=True)
    gen_dir = Path(args.gen_dir).resolve()
    gen_dir.mkdir(parents=True, exist_ok=True)
    data = generate(binary, gen_dir, args.events, "ndjson", span_days)
    config_path = out / "adstore.toml"
    config_path.write_text(render_config(extra))
    start_ms = int(dt.datetime.fromisoformat(GEN_START.replace("Z", "+00:00")).timestamp() * 1000)
    ctx = {
        "label": label, "command": args.command_line, "events": args.events, "span_days": span_days,
        "data_file": str(data), "data_bytes": data.stat().st_size,
        "gen": f"adstore gen --events {args.events} --seed {GEN_SEED} --start {GEN_START} --span {span_days}d",
        "config": config_path.read_text(), "connections": args.connections, "body_bytes": args.body_bytes,
        "backoff_ms": args.backoff_ms, "backfill": args.backfill, "scrape_s": args.scrape_s,
        "commit": git_commit(),
        "version": subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip(),
        "machine": machine_description(), "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    log(f"{label}: {args.events:,} events over {span_days} days, config:\n{ctx['config']}")
    os.sync()
    time.sleep(2)

    busy = Path(args.busy_file) if args.busy_file else None
    if busy:
        busy.touch()
    data_dir = out / "data"
    server = Server(binary, data_dir, config_path, out / "server.log", args.log)
    phase = Phase()
    rss = RssSampler(server, phase)
    scraper = MetricsScraper(server, phase, args.scrape_s)
    try:
        rss.start()
        scraper.start()
        loader = Loader(server, data, args, phase, start_ms, span_days)
        server_cpu0 = cpu_seconds(server.proc.pid)
        client_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        log(f"{label}: loading {data.name} over {args.connections} connections into {server.host}:{server.port}")
        loader.run()
        t_last = loader.last_ack
        load_s = t_last - loader.first_send
        cpu_load = cpu_seconds(server.proc.pid) - server_cpu0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        client_cpu = ru.ru_utime + ru.ru_stime - client_cpu0.ru_utime - client_cpu0.ru_stime
        phase.set("settle")
        tot = loader.totals
        log(f"{label}: last ack after {load_s:.1f} s: {tot['sent']:,} events = {tot['sent'] / load_s:,.0f} ev/s; "
            f"accepted {tot['accepted']:,}, duplicates {tot['duplicates']:,}, rejected {tot['rejected']:,}; "
            f"503 retries {tot['retries_503']}")
        client = Client(server)
        settle = wait_settled(client, phase, t_last, args.quiet_s, args.settle_timeout_s)
        cpu_total = cpu_seconds(server.proc.pid) - server_cpu0
        rss_settled = server.status_value("VmRSS")
        log(f"{label}: settled {settle['settled_s']:.1f} s after the last ack; RSS {rss_settled / GIB:.2f} GiB; "
            f"idle {args.idle_s:.0f} s more")
        phase.set("idle")
        time.sleep(args.idle_s)
        rss_idle = server.status_value("VmRSS")
        hwm = server.status_value("VmHWM")
        rss.stop()
        scraper.stop()
        seg = client.json("/v1/segments")
        final_metrics = client.metrics()
        client.close()
        raw_ids = [s["id"] for s in seg.get("segments", [])]
        rollup_ids = [s["id"] for s in seg.get("rollups", [])]
        disk = classify_disk(data_dir, raw_ids, rollup_ids)
        stored = sum(s.get("rows", 0) for s in seg.get("segments", []))
    finally:
        rss.stop_evt.set()
        scraper.stop_evt.set()
        exit_code = server.stop()
        if busy:
            busy.unlink(missing_ok=True)

    lat = sorted(loader.latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None  # noqa: E731
    ctx.update({
        "totals": tot, "other_statuses": loader.other_statuses, "reject_examples": loader.reject_examples,
        "load_s": load_s, "ack_rate": tot["sent"] / load_s,
        "end_to_end_s": load_s + settle["settled_s"], "end_to_end_rate": tot["sent"] / (load_s + settle["settled_s"]),
        "head_empty_after_ack_s": settle["head_empty_s"], "settled_after_ack_s": settle["settled_s"],
        "settle_state": settle["state"], "phase_started": phase.started,
        "request_latency_s": {"p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] if lat else None},
        "server_cpu_load_s": cpu_load, "server_cpu_total_s": cpu_total, "client_cpu_load_s": client_cpu,
        "rss_samples": rss.samples, "metrics_samples": scraper.samples, "scrape_errors": scraper.errors,
        "vm_hwm": hwm, "rss_settled": rss_settled, "rss_idle": rss_idle, "idle_s": args.idle_s,
        "stored_events": stored, "raw_segments": len(raw_ids), "rollup_segments": len(rollup_ids),
        "disk": disk, "final_metrics": {k: final_metrics[k] for k in GAUGES + COUNTERS if k in final_metrics},
        "server_exit": exit_code, "log": log_findings(out / "server.log"),
    })
    ctx["summary"] = summarize(ctx)
    if not args.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    with open(out / "results.json", "w") as f:
        json.dump(ctx, f, indent=1)
    report = out / "report.md"
    report.write_text(render([ctx]))
    log(f"{label}: results in {out / 'results.json'}, report {report}")
    print(report.read_text())
    problems = []
    if tot["rejected"]:
        problems.append(f"{tot['rejected']} events rejected")
    if tot["accepted"] + tot["duplicates"] + tot["rejected"] != tot["sent"]:
        problems.append("accepted + duplicates + rejected != sent")
    if stored != tot["accepted"]:
        problems.append(f"stored {stored:,} events, accepted {tot['accepted']:,}")
    if exit_code != 0:
        problems.append(f"adstore serve exited {exit_code} on SIGTERM")
    for p in problems:
        log(f"{label}: NOTE: {p}")
    return 0


def summarize(ctx: dict) -> dict:
    """The figures of the report, from the raw samples."""
    rss = ctx["rss_samples"]
    ms = ctx["metrics_samples"]
    phases = [p for p in ctx["phase_started"] if p.startswith("day")] + ["settle", "idle"]
    rss_by = phase_summary(rss, "rss")
    anon_by, file_by = phase_summary(rss, "anon"), phase_summary(rss, "file")
    gauges = {g: phase_summary(ms, g) for g in GAUGES}
    # RAM per dedupe key at the scrape with the most keys in the window (in memory + spilled).
    best = max(ms, key=lambda s: s.get("adstore_dedupe_keys", 0) + s.get("adstore_dedupe_spilled_keys", 0),
               default={})
    keys_mem = best.get("adstore_dedupe_keys", 0)
    keys_all = keys_mem + best.get("adstore_dedupe_spilled_keys", 0)
    mem = best.get("adstore_dedupe_memory_bytes", 0)
    table = best.get("adstore_dedupe_table_bytes", 0)
    stored = ctx["stored_events"] or 1
    disk = ctx["disk"]["bytes"]
    return {
        "phases": phases,
        "peak_rss": max([s["rss"] for s in rss] + [ctx["vm_hwm"]]),
        "peak_rss_by_phase": {p: rss_by.get(p, {}).get("max") for p in phases},
        # Heap and mapped files apart (runs before this split have neither).
        "peak_anon_by_phase": {p: anon_by.get(p, {}).get("max") for p in phases},
        "peak_file_by_phase": {p: file_by.get(p, {}).get("max") for p in phases},
        "gauges_by_phase": {g: {p: v.get(p) for p in phases} for g, v in gauges.items()},
        "dedupe_at_peak": {"t": best.get("t"), "phase": best.get("phase"), "keys_in_memory": keys_mem,
                           "keys_in_window": keys_all, "table_bytes": table, "memory_bytes": mem,
                           "disk_bytes": best.get("adstore_dedupe_disk_bytes", 0),
                           "table_bytes_per_memory_key": table / keys_mem if keys_mem else None,
                           "memory_bytes_per_window_key": mem / keys_all if keys_all else None},
        "disk_per_event": {k: v / stored for k, v in disk.items()},
        "disk_total_per_event": sum(disk.values()) / stored,
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def gib(n):
    return "n/a" if n is None else f"{n / GIB:.2f} GiB"


def num(v, digits=0):
    return "n/a" if v is None else f"{v:,.{digits}f}"


def render(runs: list) -> str:
    """Markdown: one column per run."""
    labels = [r["label"] for r in runs]
    head = "| | " + " | ".join(f"`{x}`" for x in labels) + " |\n|---|" + "---:|" * len(runs)

    def row(name, fn):
        cells = []
        for r in runs:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("n/a")
        return f"| {name} | " + " | ".join(cells) + " |"

    r0 = runs[0]
    lines = ["# adstore sustained-load benchmark", ""]
    lines += [f"- `{r['label']}`: `{r['command']}` on {r['when']} UTC, commit {r['commit']}, {r['version']}"
              for r in runs]
    m = r0["machine"]
    lines += [
        f"- Machine: {m['nproc']} x {m['cpu']}, {m['memory']} RAM, {m['os']}",
        f"- Input: `{r0['gen']}`, {r0['data_bytes'] / 1e9:.1f} GB of NDJSON, sent in file order (event time, "
        f"with the generator's late arrivals) in bodies of about {r0['body_bytes'] / 2**20:.0f} MiB over "
        f"{r0['connections']} connections, {'`?mode=backfill`' if r0['backfill'] else 'live mode (no backfill)'}; "
        f"a 503 retried after {r0['backoff_ms']} ms.",
        "- Config of each run: " + "; ".join(
            f"`{r['label']}`: `" + " ".join(x for x in r["config"].splitlines() if x.strip()) + "`" for r in runs),
        "",
        "## Rates and times", "", head,
        row("events sent", lambda r: num(r["totals"]["sent"])),
        row("accepted / duplicates / rejected", lambda r: f"{num(r['totals']['accepted'])} / "
            f"{num(r['totals']['duplicates'])} / {num(r['totals']['rejected'])}"),
        row("events stored (raw segment rows)", lambda r: num(r["stored_events"])),
        row("load: first send to last ack (s)", lambda r: num(r["load_s"], 1)),
        row("ack rate (events/s)", lambda r: num(r["ack_rate"])),
        row("end-to-end rate (events / time until settled)", lambda r: num(r["end_to_end_rate"])),
        row("head empty after last ack (s)", lambda r: num(r["head_empty_after_ack_s"], 1)),
        row("settled after last ack (s)", lambda r: num(r["settled_after_ack_s"], 1)),
        row("503 (head full) retries", lambda r: num(r["totals"]["retries_503"])),
        row("other retries", lambda r: num(r["totals"]["retries_other"])),
        row("request latency p50 / p99 / max (s)", lambda r: " / ".join(
            f"{r['request_latency_s'][k]:.2f}" for k in ("p50", "p99", "max"))),
        row("server CPU during load / until settled (s)", lambda r: f"{r['server_cpu_load_s']:.0f} / "
            f"{r['server_cpu_total_s']:.0f}"),
        row("client CPU during load (s)", lambda r: f"{r['client_cpu_load_s']:.0f}"),
        "",
        "## Server memory (RSS)", "", head,
        row("peak RSS overall (max of samples and VmHWM)", lambda r: gib(r["summary"]["peak_rss"])),
    ]
    phases = []
    for r in runs:
        phases += [p for p in r["summary"]["phases"] if p not in phases]
    for p in phases:
        what = f"peak RSS, {p}" + (" (event day being sent)" if p.startswith("day") else
                                   " (last ack until settled)" if p == "settle" else
                                   " (after settled)" if p == "idle" else "")
        lines.append(row(what, lambda r, p=p: gib(r["summary"]["peak_rss_by_phase"].get(p))))
    for p in phases:
        lines.append(row(f"peak RssAnon / RssFile, {p}", lambda r, p=p: " / ".join(
            gib(r["summary"].get(k, {}).get(p)) for k in ("peak_anon_by_phase", "peak_file_by_phase"))))
    lines += [
        row("RSS when settled", lambda r: gib(r["rss_settled"])),
        row("RSS after idle", lambda r: f"{gib(r['rss_idle'])} ({r['idle_s']:.0f} s)"),
        row("VmHWM", lambda r: gib(r["vm_hwm"])),
        "",
        "## Dedupe memory", "",
        "At the scrape with the most keys in the dedupe window (keys in memory + keys spilled to runs).", "",
        head,
        row("scrape (phase, s since start)", lambda r: f"{r['summary']['dedupe_at_peak']['phase']}, "
            f"{r['summary']['dedupe_at_peak']['t']:.0f}"),
        row("keys in memory (adstore_dedupe_keys)", lambda r: num(r["summary"]["dedupe_at_peak"]["keys_in_memory"])),
        row("keys in the window (+ adstore_dedupe_spilled_keys)",
            lambda r: num(r["summary"]["dedupe_at_peak"]["keys_in_window"])),
        row("table bytes (adstore_dedupe_table_bytes)",
            lambda r: f"{r['summary']['dedupe_at_peak']['table_bytes'] / 1e6:,.0f} MB"),
        row("memory bytes (adstore_dedupe_memory_bytes)",
            lambda r: f"{r['summary']['dedupe_at_peak']['memory_bytes'] / 1e6:,.0f} MB"),
        row("disk bytes (adstore_dedupe_disk_bytes)",
            lambda r: f"{r['summary']['dedupe_at_peak']['disk_bytes'] / 1e6:,.0f} MB"),
        row("table bytes per key in memory", lambda r: num(r["summary"]["dedupe_at_peak"]
                                                           ["table_bytes_per_memory_key"], 1)),
        row("memory bytes per key in the window", lambda r: num(r["summary"]["dedupe_at_peak"]
                                                                ["memory_bytes_per_window_key"], 1)),
        "",
        "## Gauges per phase", "",
        "Maximum over the phase's scrapes (every few seconds), and the value at the phase's last scrape.", "",
    ]
    fmt = {"bytes": lambda v: f"{v / 1e6:,.0f} MB"}
    for g in GAUGES:
        if g in ("adstore_process_resident_memory_bytes",):
            continue
        if not any(r["summary"]["gauges_by_phase"].get(g, {}).get(p) for r in runs for p in phases):
            continue
        f = fmt["bytes"] if g.endswith("_bytes") else (lambda v: f"{v:,.0f}")
        lines += [f"`{g}` (max / last)", "", "| phase | " + " | ".join(f"`{x}`" for x in labels) + " |",
                  "|---|" + "---:|" * len(runs)]
        for p in phases:
            cells = []
            for r in runs:
                v = r["summary"]["gauges_by_phase"].get(g, {}).get(p)
                cells.append("n/a" if not v else f"{f(v['max'])} / {f(v['last'])}")
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Disk per stored event", "",
        "Bytes on disk (allocated) after settling, by category, divided by the events stored.", "",
        head,
    ]
    names = {"raw": "raw segments", "rollup": "rollup segments", "billing": "billing snapshots", "wal": "WAL",
             "dedupe": "dedupe runs", "attribution": "attribution parts",
             "state": "other state (catalog, lock, ...)",
             "unlisted_segments": "segment files not in the catalog"}
    for k, name in names.items():
        lines.append(row(name, lambda r, k=k: f"{r['summary']['disk_per_event'][k]:.2f} B "
                         f"({r['disk']['bytes'][k] / 1e6:,.0f} MB, {r['disk']['files'][k]} files)"))
    lines += [
        row("total", lambda r: f"{r['summary']['disk_total_per_event']:.2f} B "
            f"({sum(r['disk']['bytes'].values()) / 1e9:,.2f} GB)"),
        row("raw / rollup segments in the catalog", lambda r: f"{r['raw_segments']} / {r['rollup_segments']}"),
        "",
        "## Server log and exit", "", head,
        row("WARN / ERROR lines", lambda r: f"{r['log']['counts']['WARN']} / {r['log']['counts']['ERROR']}"),
        row("exit status on SIGTERM", lambda r: str(r["server_exit"])),
        row("/metrics scrapes failed", lambda r: str(r["scrape_errors"])),
        "",
    ]
    for r in runs:
        if r["log"]["examples"]:
            lines += [f"`{r['label']}`: the most frequent warnings and errors (numbers folded to N):", ""]
            lines += [f"- {e['count']} x `{e['first']}`" for e in r["log"]["examples"][:8]]
            lines.append("")
    return "\n".join(lines) + "\n"


def report_main(args) -> int:
    runs = []
    for label in args.labels:
        path = Path(args.out).resolve() / label / "results.json"
        try:
            with open(path) as f:
                run = json.load(f)
        except FileNotFoundError:
            raise BenchError(f"no {path}: run `benches/run.sh --suite sustained --label {label}` first") from None
        run["summary"] = summarize(run)  # figures added since the run was made
        runs.append(run)
    text = render(runs)
    if args.write:
        Path(args.write).write_text(text)
        log(f"wrote {args.write}")
    else:
        print(text)
    return 0


# ---------------------------------------------------------------------------
# self-test
# ---------------------------------------------------------------------------


def self_test() -> int:
    import io
    import tempfile

    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    m = parse_metrics("# HELP x\nadstore_dedupe_keys 12\nadstore_http_errors_total{route=\"a\"} 2\n"
                      "adstore_http_errors_total{route=\"b\"} 3\nbad line\n")
    check(m.get("adstore_dedupe_keys") == 12.0, "a bare gauge")
    check(m.get("adstore_http_errors_total") == 5.0, "a labelled family summed")
    conf = parse_config_extra(["ingest.dedupe_spill_keys=0", "storage.max_head_bytes = 2"])
    check(conf == {"ingest": {"dedupe_spill_keys": "0"}, "storage": {"max_head_bytes": "2"}}, f"config {conf}")
    text = render_config(conf)
    check("[ingest]\ndedupe_spill_keys = 0" in text and "max_head_bytes = 2" in text
          and str(MAX_HEAD_BYTES) not in text, f"an extra setting overrides the suite's: {text!r}")
    check(render_config({}) == f"[storage]\nmax_head_bytes = {MAX_HEAD_BYTES}\n", "the suite's config")
    try:
        parse_config_extra(["dedupe_spill_keys=0"])
        failures.append("a setting without a section is refused")
    except BenchError:
        pass
    data = b"".join(b'{"ts":%d}\n' % i for i in range(1000))
    bodies = list(cut_bodies(io.BytesIO(data), 100))
    check(b"".join(b for b, _ in bodies) == data, "bodies put together are the file")
    check(all(b.endswith(b"\n") for b, _ in bodies), "every body ends at a line end")
    check(sum(n for _, n in bodies) == 1000, "lines counted")
    check(list(cut_bodies(io.BytesIO(b'{"a":1}'), 100)) == [(b'{"a":1}\n', 1)], "a last line without newline")
    start = 1_000 * DAY_MS
    check(event_day(b'{"ts":%d}\n' % (start + DAY_MS + 5), start, 3) == 2, "day 2")
    check(event_day(b'{"ts":%d}\n' % (start + 5 * DAY_MS), start, 3) == 3, "past the span: the last day")
    samples = [{"phase": "day1", "rss": 5}, {"phase": "day1", "rss": 3}, {"phase": "day2", "rss": 7}]
    check(phase_summary(samples, "rss") == {"day1": {"max": 5, "last": 3}, "day2": {"max": 7, "last": 7}},
          "phase max and last")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for rel in ("segments/00000000000000aa.seg", "segments/00000000000000bb.seg", "segments/x.tmp",
                    "wal/1.wal", "dedupe/run-1.keys", "attribution/part-00000001.attr",
                    "billing/2026-11-01.v1.seg", "catalog.json", "LOCK"):
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(b"x" * 10000)
        disk = classify_disk(d, ["00000000000000aa"], ["00000000000000bb"])
        check(all(disk["files"][k] == 1 for k in ("raw", "rollup", "unlisted_segments", "wal", "dedupe",
                                                  "attribution", "billing")),
              f"one file per category: {disk['files']}")
        check(disk["files"]["state"] == 2 and set(disk["state_paths"]) == {"catalog.json", "LOCK"},
              f"state: {disk['state_paths']}")
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
    r = sub.add_parser("run", help="one sustained run (normally through benches/run.sh --suite sustained)")
    r.add_argument("--bin", required=True, help="the release adstore binary (gen and serve)")
    r.add_argument("--events", type=int, default=60_000_000)
    r.add_argument("--span", default="3d", help="days of event time the generated events cover")
    r.add_argument("--label", help="name of the run: its directory under --out (default: from --config-extra)")
    r.add_argument("--config-extra", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a setting added to the suite's config (TOML value), e.g. ingest.dedupe_spill_keys=0; "
                        "repeatable")
    r.add_argument("--connections", type=int, default=4)
    r.add_argument("--body-bytes", type=int, default=4 << 20, help="bytes per request body, cut at a line end")
    r.add_argument("--backoff-ms", type=int, default=100, help="wait before retrying a 503")
    r.add_argument("--backfill", action="store_true", help="send with ?mode=backfill (default: live)")
    r.add_argument("--scrape-s", type=float, default=2.0, help="seconds between /metrics scrapes")
    r.add_argument("--quiet-s", type=float, default=5.0, help="settled: segment counts still this long")
    r.add_argument("--idle-s", type=float, default=30.0, help="RSS sampling after settling")
    r.add_argument("--settle-timeout-s", type=float, default=3600.0)
    r.add_argument("--log", default="info", help="ADSTORE_LOG of the server")
    r.add_argument("--busy-file", help="a file that exists while the server runs (tells others a timed run is on)")
    r.add_argument("--keep-data", action="store_true", help="keep the data directory afterwards")
    r.add_argument("--out", default=str(OUT))
    r.add_argument("--gen-dir", default=str(HERE / "out"), help="where generated input is cached")
    r.add_argument("--command-line", default="benches/run.sh --suite sustained")
    rep = sub.add_parser("report", help="render runs side by side from their results.json")
    rep.add_argument("labels", nargs="+")
    rep.add_argument("--out", default=str(OUT))
    rep.add_argument("--write", help="write the markdown to this file instead of stdout")
    args = p.parse_args(argv)
    try:
        if args.cmd == "report":
            return report_main(args)
        return run_main(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
