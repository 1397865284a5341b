// A Go client of the PostgreSQL protocol through database/sql and lib/pq
// (the driver family of Grafana's backend; Debian's
// golang-github-lib-pq-dev, built in GOPATH mode, no network), as
// tests/pgwire.rs runs it:
//
//	go run libpq_client.go URL EXPECTED_JSON
//
// URL carries the password (a token); EXPECTED_JSON is /v1/sql's rows of
// the query below. Prints "all checks passed" or exits 1 naming the check.
package main

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/lib/pq"
)

func check(ok bool, format string, args ...interface{}) {
	if !ok {
		fmt.Printf("FAILED: "+format+"\n", args...)
		os.Exit(1)
	}
}

func main() {
	url, expectedJSON := os.Args[1], os.Args[2]
	var expected [][]interface{}
	check(json.Unmarshal([]byte(expectedJSON), &expected) == nil && len(expected) > 0, "expected rows are JSON")
	db, err := sql.Open("postgres", url)
	check(err == nil, "open: %v", err)
	defer db.Close()
	db.SetMaxOpenConns(1)

	// lib/pq's health check is an empty statement.
	_, err = db.Exec(";")
	check(err == nil, "empty statement: %v", err)

	// Typed rows through the extended protocol (lib/pq prepares unnamed statements).
	rows, err := db.Query("SELECT campaign_id, count(*) AS n, sum(cost_micros) AS cost, min(ts) AS first " +
		"FROM events GROUP BY campaign_id ORDER BY campaign_id")
	check(err == nil, "query: %v", err)
	i := 0
	for rows.Next() {
		var campaign string
		var n, cost int64
		var first time.Time
		check(rows.Scan(&campaign, &n, &cost, &first) == nil, "scan row %d", i)
		check(i < len(expected), "more rows than /v1/sql: %d", i)
		want := expected[i]
		check(campaign == want[0].(string), "campaign %q, want %v", campaign, want[0])
		check(float64(n) == want[1].(float64), "count %d, want %v", n, want[1])
		check(float64(cost) == want[2].(float64), "cost %d, want %v", cost, want[2])
		wantFirst, err := time.Parse(time.RFC3339Nano, want[3].(string))
		check(err == nil && first.Equal(wantFirst), "first %v, want %v", first, want[3])
		i++
	}
	check(rows.Err() == nil, "rows: %v", rows.Err())
	check(i == len(expected), "%d rows, want %d", i, len(expected))

	// A parameter, bound by the driver.
	var n int64
	campaign := expected[0][0].(string)
	err = db.QueryRow("SELECT count(*) FROM events WHERE campaign_id = $1", campaign).Scan(&n)
	check(err == nil && float64(n) == expected[0][1].(float64), "parameter: %v, n %d", err, n)

	// An error names its SQLSTATE and position; the connection goes on.
	_, err = db.Query("SELECT nope FROM events")
	var pqErr *pq.Error
	check(errors.As(err, &pqErr), "an error of the server: %v", err)
	check(pqErr.Code == "42703" && pqErr.Position == "8", "code %s at %s", pqErr.Code, pqErr.Position)
	err = db.QueryRow("SELECT 1 AS one").Scan(&n)
	check(err == nil && n == 1, "after the error: %v", err)
	fmt.Println("all checks passed")
}
