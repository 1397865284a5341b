"""Reads adstore's Iceberg tables with pyiceberg (the Apache project's Python
client), as another engine would: the table from its location (the
metadata file named by version-hint.text), every data file of its current
snapshot scanned. Prints, as JSON, per day: impressions and clicks (raw
events) or their sums (rollups), the files scanned and the snapshots.

usage: read.py TABLE_LOCATION events|rollup [PROPERTIES_JSON]
"""

import json
import sys

import duckdb
from pyiceberg.table import StaticTable


def main():
    location, kind = sys.argv[1], sys.argv[2]
    properties = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    table = StaticTable.from_metadata(location, properties)
    scan = table.scan()
    files = len(list(scan.plan_files()))
    data = scan.to_arrow()
    con = duckdb.connect()
    con.sql("SET TimeZone = 'UTC'")
    con.register("data", data)
    if kind == "events":
        query = ("SELECT CAST(CAST(ts AS DATE) AS VARCHAR), count(*) FILTER (type = 'impression'), "
                 "count(*) FILTER (type = 'click') FROM data GROUP BY 1 ORDER BY 1")
    else:
        query = ("SELECT CAST(CAST(ts AS DATE) AS VARCHAR), sum(impressions), sum(clicks) "
                 "FROM data GROUP BY 1 ORDER BY 1")
    rows = [[str(v) for v in r] for r in con.sql(query).fetchall()]
    print(json.dumps({
        "days": rows,
        "files": files,
        "snapshots": len(table.metadata.snapshots),
        "rows": data.num_rows,
    }))


if __name__ == "__main__":
    main()
