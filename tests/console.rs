//! The web console in a real browser (headless Chromium, Debian's
//! `chromium`; `.ci/run` and `scripts/test` install it): the page loads
//! from the binary, runs the query of `/?q=`, shows the rows `/v1/sql`
//! answers and a line chart for a time column, and shows a bad query's
//! error with its caret. It also takes the screenshot docs/grafana.md
//! shows (`target/console.png`; copied to `docs/console.png` when
//! `ADSTORE_WRITE_SCREENSHOT=1`).

mod support;

use std::process::Command;

use support::*;

fn chromium() -> String {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("sh").args(["-c", &format!("command -v {b}")]).output().is_ok_and(|o| o.status.success())
        })
        .expect("a Chromium browser (Debian package chromium; .ci/run installs it)")
        .to_string()
}

fn encode(sql: &str) -> String {
    sql.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The page's DOM after its scripts ran (virtual time: no real waiting).
fn dom(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_console_runs_a_query_shows_rows_and_a_chart_and_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(&tmp.path().join("data"), None, &["--demo", "--demo-events", "20000"]);
    let query = "SELECT time_bucket(INTERVAL '1 hour', ts) AS t, \
                 count(*) FILTER (WHERE type = 'impression') AS impressions, \
                 count(*) FILTER (WHERE type = 'click') AS clicks FROM events GROUP BY 1 ORDER BY 1";
    let (status, http) = sql(&server, query);
    assert_eq!(status, 200, "{http}");
    let rows = http["rows"].as_array().expect("rows");
    assert!(rows.len() > 10);

    let page = dom(&format!("{}/?q={}", server.url, encode(query)), &["--dump-dom"]);
    // Every row, in order, as cells.
    let table = &page[page.find("<table id=\"rows\">").expect("result table")..];
    let table = &table[..table.find("</table>").expect("table end")];
    let cells: Vec<String> = table
        .split("<td")
        .skip(1)
        .map(|c| c[c.find('>').expect("td")..][1..].split('<').next().unwrap_or_default().to_string())
        .collect();
    let expected: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.as_array().expect("row").iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        })
        .collect();
    assert_eq!(cells, expected);
    assert!(page.contains(&format!("{} row(s)", rows.len())), "status line");
    // uPlot drew a chart of the two series.
    assert!(page.contains("class=\"uplot"), "no chart in the page");
    assert!(page.contains("impressions") && page.contains("clicks"));
    // The state panel read /metrics.
    let head = &page[page.find("id=\"head\">").expect("head stat") + 10..];
    assert!(head.split('<').next().is_some_and(|h| h.contains(" rows, ")), "head from /metrics: {}", &head[..40]);

    // A bad query: the error and a caret under the column.
    let page = dom(&format!("{}/?q={}", server.url, encode("SELECT nope FROM events")), &["--dump-dom"]);
    let error = &page[page.find("<pre id=\"error\"").expect("error box")..];
    let error = &error[..error.find("</pre>").expect("end")];
    assert!(!error.contains("hidden"), "{error}");
    assert!(error.contains("unknown column \"nope\" at 1:8"), "{error}");
    assert!(error.contains("SELECT nope FROM events\n       ^"), "{error}");

    // The screenshot for docs/grafana.md.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    dom(
        &format!("{}/?q={}", server.url, encode(query)),
        &["--window-size=1300,900", &format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot of {} bytes", png.len());
    if std::env::var_os("ADSTORE_WRITE_SCREENSHOT").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console.png"), &png).expect("write docs/console.png");
    }
}

/// With access control on, the console says it needs a token (its field
/// in the header) instead of showing an empty page.
#[test]
fn the_console_asks_for_a_token_when_the_server_needs_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let out = Command::new(ADSTORE)
        .args(["token", "create", "--role", "admin", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("adstore token create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start(&dir, None);
    let page = dom(&format!("{}/?q={}", server.url, encode("SELECT 1 AS one")), &["--dump-dom"]);
    assert!(page.contains("id=\"token\""), "the token field");
    let error = &page[page.find("<pre id=\"error\"").expect("error box")..];
    let error = &error[..error.find("</pre>").expect("end")];
    assert!(!error.contains("hidden") && error.contains("Paste an access token"), "{error}");
    assert!(page.contains("needs an admin token"), "the state panel says why it is empty");
}
