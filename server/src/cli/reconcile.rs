//! `adstore reconcile --from 2026-11-01 --to 2026-12-01`: asks a server
//! to re-aggregate the raw events of the range and compare them with its
//! rollups and billing snapshots (`GET /v1/reconcile`); prints what was
//! checked and every bucket whose numbers differ. Exit status 0 when
//! nothing differs, 1 when something does (or the request fails).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::error::ServerError;

#[derive(clap::Args)]
pub struct ReconcileArgs {
    /// Start of the range: a date (2026-11-01), an RFC 3339 time or epoch ms.
    #[arg(long)]
    from: String,
    /// End of the range (exclusive), in the same forms.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    remote: super::remote::Remote,
    /// Print the server's JSON report instead of the summary.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ReconcileArgs) -> Result<ExitCode, ServerError> {
    let url = args.remote.endpoint("/v1/reconcile");
    let agent: ureq::Agent = super::remote::agent(Duration::from_secs(3600));
    let client_error = |message: String| ServerError::Client { url: url.clone(), message };
    let mut response = args
        .remote
        .authorize(agent.get(&url))
        .query("from", &args.from)
        .query("to", &args.to)
        .call()
        .map_err(|e| client_error(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .read_to_string()
        .map_err(|e| client_error(format!("reading the response: {e}")))?;
    if status != 200 {
        eprintln!("{}", super::sql::render_error(status, &body, ""));
        return Ok(ExitCode::FAILURE);
    }
    let report: Value =
        serde_json::from_str(&body).map_err(|e| client_error(format!("the report is not the expected JSON: {e}")))?;
    if args.json {
        println!("{body}");
    } else {
        print!("{}", render(&report));
    }
    Ok(if report["differing"].as_u64() == Some(0) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The report for people: what was checked, then each difference.
fn render(r: &Value) -> String {
    let checks = r["checks"].as_array().map_or(&[][..], Vec::as_slice);
    let groups: u64 = checks.iter().filter_map(|c| c["groups"].as_u64()).sum();
    let mut out = format!(
        "reconcile {} .. {}: {} raw segments, {} events; {} rollup segments and billing snapshots, {} groups compared\n",
        r["from"].as_str().unwrap_or("?"),
        r["to"].as_str().unwrap_or("?"),
        r["raw_segments"],
        r["events"],
        checks.len(),
        groups
    );
    for c in checks.iter().filter(|c| c["differing"].as_u64() != Some(0) || c["groups"].as_u64() == Some(0)) {
        out.push_str(&format!(
            "  {}: {} of {} groups differ\n",
            c["what"].as_str().unwrap_or("?"),
            c["differing"],
            c["groups"]
        ));
    }
    for d in r["differences"].as_array().map_or(&[][..], Vec::as_slice) {
        let dims: Vec<String> = d["dimensions"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("NULL"))).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "DIFF {} bucket {} [{}] {}: events say {}, stored {}\n",
            d["what"].as_str().unwrap_or("?"),
            d["bucket"].as_str().unwrap_or("?"),
            dims.join(" "),
            d["column"].as_str().unwrap_or("?"),
            d["expected"].as_str().unwrap_or("?"),
            d["stored"].as_str().unwrap_or("?"),
        ));
    }
    let differing = r["differing"].as_u64().unwrap_or(0);
    out.push_str(&if differing == 0 {
        "OK: every group matches its raw events\n".to_string()
    } else {
        format!("{differing} groups differ\n")
    });
    out
}
