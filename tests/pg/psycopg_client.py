"""psycopg 3 against adstore's PostgreSQL protocol (run by tests/pgwire.rs).

Usage: psycopg_client.py POSTGRES_URL EXPECTED_ROWS_JSON

EXPECTED_ROWS_JSON is /v1/sql's answer to the top-3 click query below. Each
check asserts; the script prints "all checks passed" at the end.
"""

import datetime
import json
import sys
import threading
import time

import psycopg
from psycopg import errors


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def main():
    url, expected = sys.argv[1], json.loads(sys.argv[2])
    top_clicks = ("SELECT campaign_id, count(*) AS n FROM events WHERE type = %s "
                  "GROUP BY campaign_id ORDER BY n DESC, campaign_id LIMIT %s")
    with psycopg.connect(url) as conn:
        # Extended protocol with parameters (Parse/Bind/Describe/Execute).
        rows = conn.execute(top_clicks, ("click", 3)).fetchall()
        check([list(r) for r in rows] == expected, f"parameters: {rows} != {expected}")

        # Prepared on the server (psycopg names the statement), run twice.
        for _ in range(2):
            again = conn.execute(top_clicks, ("click", 3), prepare=True).fetchall()
            check(again == rows, f"prepared: {again} != {rows}")

        # Types, in text and in binary results.
        typed = ("SELECT max(ts) AS t, avg(cost_micros) AS a, count(*) AS n, "
                 "count(*) > 0 AS b, NULL AS z, min(campaign_id) AS c FROM events")
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                t, a, n, b, z, c = cur.execute(typed).fetchone()
                check(isinstance(t, datetime.datetime) and t.utcoffset() == datetime.timedelta(0),
                      f"timestamptz (binary={binary}): {t!r}")
                check(isinstance(a, float), f"float8 (binary={binary}): {a!r}")
                check(isinstance(n, int) and n > 0, f"int8 (binary={binary}): {n!r}")
                check(b is True, f"bool (binary={binary}): {b!r}")
                check(z is None, f"NULL (binary={binary}): {z!r}")
                check(isinstance(c, str), f"text (binary={binary}): {c!r}")
                names = [d.name for d in cur.description]
                check(names == ["t", "a", "n", "b", "z", "c"], f"names: {names}")
        text_max = conn.execute("SELECT max(ts) FROM events").fetchone()[0]
        with conn.cursor(binary=True) as cur:
            binary_max = cur.execute("SELECT max(ts) FROM events").fetchone()[0]
        check(text_max == binary_max, f"text and binary timestamps differ: {text_max} {binary_max}")

        # A timestamp parameter is the same instant as the literal.
        since = text_max - datetime.timedelta(hours=6)
        by_param = conn.execute("SELECT count(*) FROM events WHERE ts >= %s", (since,)).fetchone()[0]
        literal = since.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        by_literal = conn.execute(f"SELECT count(*) FROM events WHERE ts >= '{literal}'").fetchone()[0]
        check(by_param == by_literal and by_param > 0, f"timestamp parameter: {by_param} vs {by_literal}")
        ints = conn.execute("SELECT count(*) FROM events WHERE cost_micros > %s", (0,)).fetchone()[0]
        check(ints > 0, f"integer parameter: {ints}")

        # An error names the SQLSTATE and position; the connection goes on.
        try:
            conn.execute("SELECT nope FROM events")
            check(False, "an unknown column was accepted")
        except errors.UndefinedColumn as e:
            check(e.sqlstate == "42703", f"sqlstate {e.sqlstate}")
            check(e.diag.statement_position == "8", f"position {e.diag.statement_position}")
            check('unknown column "nope" at 1:8' in str(e), f"message {e}")
        conn.rollback()
        check(conn.execute("SELECT count(*) FROM events").fetchone()[0] > 0, "after an error")
        try:
            conn.execute("SELECT count(*) FROM events WHERE cost_micros > %s", ("many",))
            check(False, "a text parameter was compared with a number")
        except psycopg.Error as e:
            check(e.sqlstate is not None, f"typed error: {e}")
        conn.rollback()

    # Cancel: a heavy query stops with 57014, and the connection still answers.
    with psycopg.connect(url, autocommit=True) as conn:
        heavy = "SELECT count(*) FROM events WHERE " + " AND ".join(
            f"(cost_micros + {i}) % 7 <> 99" for i in range(900))
        outcome = {}

        def run():
            started = time.monotonic()
            try:
                conn.execute(heavy)
                outcome["error"] = None
            except psycopg.Error as e:
                outcome["error"] = e
            outcome["seconds"] = time.monotonic() - started

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(0.5)
        conn.cancel()
        worker.join(60)
        check(not worker.is_alive(), "the cancelled query did not return")
        error = outcome.get("error")
        check(isinstance(error, errors.QueryCanceled), f"cancel: {error!r} after {outcome.get('seconds')} s")
        check(conn.execute("SELECT 1 AS one FROM events LIMIT 1").fetchone()[0] == 1, "after cancel")
    print("all checks passed")


if __name__ == "__main__":
    main()
