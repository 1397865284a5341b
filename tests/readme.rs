//! The README's five-minute tour, run as written against `serve --demo`
//! (issue 25): every `sh` block of the tour after the first (which builds
//! the binary and starts the server; this test starts it itself) runs in
//! bash with `adstore` the binary under test, `ADSTORE_URL` and
//! `localhost:8080` pointing at the test's server, and two scale-downs for
//! a debug build: `--demo-events 50000`, and `gen --events 5000000` as
//! 50,000 events. What the tour says an output is, it checks.

mod support;

use std::process::Command;

use support::*;

const ADSTORE: &str = env!("CARGO_BIN_EXE_adstore");

/// The `sh` blocks of the README section `title`.
fn sh_blocks(readme: &str, title: &str) -> Vec<String> {
    let start = readme.find(&format!("## {title}")).unwrap_or_else(|| panic!("no section {title}"));
    let section = &readme[start + 3..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section.split("```sh\n").skip(1).map(|b| b[..b.find("```").expect("closed block")].to_string()).collect()
}

#[test]
fn the_readme_tour_runs_as_written_against_a_demo_server() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let blocks = sh_blocks(&readme, "Five-minute tour");
    assert!(blocks[0].contains("serve"), "the first block starts the server: {}", blocks[0]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(&tmp.path().join("data"), None, &["--demo", "--demo-events", "50000"]);
    let port = server.url.rsplit(':').next().expect("port").to_string();
    let pg_host_port = server.pg_url.trim_start_matches("postgresql://").trim_end_matches("/adstore").to_string();
    for (i, block) in blocks.iter().enumerate().skip(1) {
        let script = block
            .replace("localhost:8080", &format!("127.0.0.1:{port}"))
            .replace("localhost:5433", &pg_host_port)
            .replace("--events 5000000", "--events 50000");
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &format!("adstore() {{ {ADSTORE:?} \"$@\"; }}\n{script}")])
            .current_dir(tmp.path())
            .env("ADSTORE_URL", &server.url)
            .env("ADSTORE_LOG", "warn")
            .output()
            .expect("bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("tour block {i}: {} lines of output", stdout.lines().count());
        assert!(out.status.success(), "tour block {i} failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        // Outputs the tour shows as comments (`# {...}` after a command).
        for expected in script.lines().filter_map(|l| l.trim().strip_prefix("# {")) {
            let expected = format!("{{{expected}");
            assert!(stdout.contains(&expected), "tour block {i}: expected {expected}\n--- stdout\n{stdout}");
        }
        if script.contains("adstore ingest") {
            assert!(stdout.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["rejected", "0"]), "{stdout}");
        }
        if script.contains("EXPLAIN SELECT campaign_id, sum(clicks) FROM metrics") {
            // What is read, rollups or events, is named.
            assert!(stdout.lines().any(|l| l.starts_with("reads,")), "{stdout}");
        }
        if script.contains("psql postgresql://") {
            assert!(stdout.contains("(3 rows)"), "psql answers: {stdout}");
        }
        if script.contains("token create --role query --advertiser adv-001") {
            // The scoped token's answer holds adv-001's rows and no other advertiser's.
            assert!(stdout.contains("[\"adv-001\",") && !stdout.contains("adv-002"), "{stdout}");
        }
        if script.contains("/v1/reprocess -H") {
            assert!(stdout.contains("\"status\":\"running\""), "the reprocess job starts: {stdout}");
        }
    }
}
