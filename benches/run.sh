#!/usr/bin/env bash
# The end-to-end benchmark: adstore vs DuckDB vs chDB on the same generated
# events, in one run, on this machine. See benches/harness.py for the steps.
#
#   benches/run.sh [--events N] [--quick] [--engines adstore,duckdb,chdb] [--threads 2]
#                  [--runs 5] [--publish]
#   benches/run.sh --suite longrange [--events N] [--span 30d] [--engines adstore,chdb] ...
#   benches/run.sh --suite tiering [--events N] [--runs 5] [--threads 2]
#   benches/run.sh --suite sustained [--events N] [--span 3d] [--label L]
#   benches/run.sh --suite kafka [--events N] [--broker tansu|mock]
#                  [--config-extra SECTION.KEY=VALUE]... [--busy-file FILE]
#
#   --suite      default (the dashboard suite, benches/queries.toml, two days of events), or
#                longrange (issue 23: benches/longrange.toml on 30 days of events, adstore
#                `metrics` vs `events` vs chDB's hourly rollup; see benches/longrange.py;
#                report in benches/out/longrange/), or
#                tiering (issue 24: the suite over raw segments moved to moto's S3 server, cold and
#                cached, against all local; tiering MB/s; its cost to a concurrent ingest; see
#                benches/tiering.py; report in benches/out/tiering/), or
#                sustained (days of events pushed at full speed into one server with a 1 GiB head:
#                rates, settle time, RSS and dedupe gauges per event day, disk per event; see
#                benches/sustained.py; report in benches/out/sustained/LABEL/)
#                kafka (issue 28: one node consuming a 4-partition topic against HTTP ingest of the
#                same events, the lag after a burst, and two nodes in one group; benches/kafka.py;
#                --broker tansu (default; needs kafka-python and tansu, which scripts/test installs)
#                or mock (librdkafka's mock cluster, benches/kafka_broker.rs); default 1000000 events)
#   --events N   events to generate (default 10000000; sustained: 60000000)
#   --quick      1000000 events (for development)
#   --span Nd    days the generated events span (longrange: default 30d; sustained: 3d)
#   --label L    sustained: the run's name, its directory under benches/out/sustained/
#   --config-extra SECTION.KEY=VALUE
#                sustained: a setting added to the server's config (repeatable), e.g.
#                ingest.dedupe_spill_keys=0
#   --busy-file F
#                sustained: a file that exists while the timed run is on (not while building)
#   --engines    comma-separated subset of adstore,duckdb,chdb (default all three;
#                longrange: adstore,chdb)
#   --threads    threads each engine may use (default 2)
#   --runs       timed runs per query after one warm-up (default 5)
#   --publish    copy the report to docs/bench/latest.md and the chart to docs/bench/latest.png
#                (default suite only)
#
# Output in benches/out/ (gitignored): the generated NDJSON (reused when the
# size matches), engine data directories, logs, report.md, ratios.png,
# results.json. The virtualenv with DuckDB, chDB and matplotlib (pinned in
# benches/requirements.txt) is created in benches/.venv on first use.
# Exit status: 0 when every query agreed across the engines, 1 on a result
# mismatch (the diff is printed), 2 on any other failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cmdline="benches/run.sh $*"

suite=default
events=
span=
engines=
threads=2
runs=5
publish=()
sustained=()
broker=tansu
while [[ $# -gt 0 ]]; do
  case "$1" in
    --suite) suite="$2"; shift 2 ;;
    --suite=*) suite="${1#*=}"; shift ;;
    --span) span="$2"; shift 2 ;;
    --span=*) span="${1#*=}"; shift ;;
    --events) events="$2"; shift 2 ;;
    --events=*) events="${1#*=}"; shift ;;
    --quick) events=1000000; shift ;;
    --engines) engines="$2"; shift 2 ;;
    --engines=*) engines="${1#*=}"; shift ;;
    --threads) threads="$2"; shift 2 ;;
    --threads=*) threads="${1#*=}"; shift ;;
    --runs) runs="$2"; shift 2 ;;
    --runs=*) runs="${1#*=}"; shift ;;
    --publish) publish=(--publish); shift ;;
    --broker) broker="$2"; shift 2 ;;
    --broker=*) broker="${1#*=}"; shift ;;
    --label|--config-extra|--busy-file) sustained+=("$1" "$2"); shift 2 ;;
    --label=*|--config-extra=*|--busy-file=*) sustained+=("$1"); shift ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#sustained[@]} -eq 0 || "$suite" == sustained ]] \
  || { echo "run.sh: --label, --config-extra and --busy-file are for --suite sustained" >&2; exit 2; }
case "$suite" in
  default)
    events="${events:-10000000}"
    engines="${engines:-adstore,duckdb,chdb}"
    [[ -z "$span" ]] || { echo "run.sh: --span is for --suite longrange (the default suite spans 2d)" >&2; exit 2; } ;;
  longrange)
    events="${events:-10000000}"
    engines="${engines:-adstore,chdb}"
    span="${span:-30d}"
    [[ ${#publish[@]} -eq 0 ]] || { echo "run.sh: --publish is for the default suite" >&2; exit 2; } ;;
  tiering)
    events="${events:-10000000}"
    [[ -z "$engines" && -z "$span" && ${#publish[@]} -eq 0 ]] \
      || { echo "run.sh: --engines, --span and --publish are not for --suite tiering (adstore alone)" >&2; exit 2; } ;;
  sustained)
    events="${events:-60000000}"
    span="${span:-3d}"
    [[ -z "$engines" && ${#publish[@]} -eq 0 ]] \
      || { echo "run.sh: --engines and --publish are not for --suite sustained (adstore alone)" >&2; exit 2; } ;;
  kafka)
    events="${events:-1000000}"
    [[ -z "$engines" && -z "$span" && ${#publish[@]} -eq 0 ]] \
      || { echo "run.sh: --engines, --span and --publish are not for --suite kafka (adstore alone)" >&2; exit 2; } ;;
  *) echo "run.sh: unknown suite $suite (default, longrange, tiering, sustained or kafka)" >&2; exit 2 ;;
esac

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
t0=$(date +%s)

# 1. adstore, release. The binary is always built (gen and ingest come from it).
log "cargo build --release"
(cd "$repo" && cargo build --release --quiet --bin adstore)
target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target_dir/release/adstore"
[[ -x "$bin" ]] || { echo "run.sh: no binary at $bin" >&2; exit 2; }

# The tiering suite needs the standard library and moto's server (the system
# python3's, which scripts/test installs): no virtualenv.
if [[ "$suite" == tiering ]]; then
  set +e
  python3 "$here/tiering.py" run --bin "$bin" --events "$events" --threads "$threads" \
    --runs "$runs" --out "$here/out/tiering" --gen-dir "$here/out" --command-line "$cmdline"
  status=$?
  set -e
  log "finished in $(( $(date +%s) - t0 )) s (exit $status)"
  exit $status
fi

# The Kafka suite needs kafka-python and a tansu broker (scripts/test installs both).
if [[ "$suite" == kafka ]]; then
  mock=()
  if [[ "$broker" == mock ]]; then
    log "cargo bench --no-run --bench kafka_broker"
    mock=(--mock-broker "$(cd "$repo" && cargo bench --no-run --quiet --bench kafka_broker --message-format json \
      | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("target", {}).get("name") == "kafka_broker" and m.get("executable"): print(m["executable"])')")
  fi
  set +e
  python3 "$here/kafka.py" run --bin "$bin" --events "$events" --broker "$broker" "${mock[@]}"
  status=$?
  set -e
  log "finished in $(( $(date +%s) - t0 )) s (exit $status)"
  exit $status
fi

# The sustained suite needs only the standard library: no virtualenv.
if [[ "$suite" == sustained ]]; then
  set +e
  python3 "$here/sustained.py" run --bin "$bin" --events "$events" --span "$span" \
    --command-line "$cmdline" "${sustained[@]}"
  status=$?
  set -e
  log "finished in $(( $(date +%s) - t0 )) s (exit $status)"
  exit $status
fi

# 2. The virtualenv, (re)installed when requirements.txt changes.
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "creating $venv (duckdb, chdb, matplotlib from PyPI)"
  t=$(date +%s)
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
  log "virtualenv ready in $(( $(date +%s) - t )) s, $(du -sh "$venv" | cut -f1)"
fi

# 3. Everything else: generate, load, time, compare, report.
set +e
if [[ "$suite" == longrange ]]; then
  "$venv/bin/python" "$here/longrange.py" run --bin "$bin" --events "$events" --span "$span" \
    --engines "$engines" --threads "$threads" --runs "$runs" --out "$here/out/longrange" \
    --gen-dir "$here/out" --command-line "$cmdline"
else
  "$venv/bin/python" "$here/harness.py" run --bin "$bin" --events "$events" --engines "$engines" \
    --threads "$threads" --runs "$runs" --out "$here/out" --command-line "$cmdline" "${publish[@]}"
fi
status=$?
set -e
log "finished in $(( $(date +%s) - t0 )) s (exit $status)"
exit $status
