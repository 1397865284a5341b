//! `adstore trace --publisher-id p1 --type click --event-id e-1` (or
//! `--click-id`, `--impression-id`): asks a server why an event counts as
//! it does (`GET /v1/trace`, docs/trace.md) and prints the answer for
//! people, or as the server's JSON with `--json`. Exit status 0 when the
//! event is stored, 1 when it is not, 2 when the request fails (refused,
//! or no server answered).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::error::ServerError;

#[derive(clap::Args)]
pub struct TraceArgs {
    /// The publisher that sent the event.
    #[arg(long)]
    publisher_id: Option<String>,
    /// impression, click or conversion (with --event-id).
    #[arg(long = "type")]
    kind: Option<String>,
    /// The event's id (with --publisher-id and --type).
    #[arg(long)]
    event_id: Option<String>,
    /// Find a click by its click_id instead.
    #[arg(long)]
    click_id: Option<String>,
    /// Find an impression by its impression_id instead.
    #[arg(long)]
    impression_id: Option<String>,
    /// For an event that is not stored: its user, to list candidates.
    #[arg(long)]
    user_key: Option<String>,
    /// For an event that is not stored: its ad, to list candidates.
    #[arg(long)]
    ad_id: Option<String>,
    /// For an event that is not stored: its time (RFC 3339 or epoch ms).
    #[arg(long)]
    ts: Option<String>,
    #[command(flatten)]
    remote: super::remote::Remote,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TraceArgs) -> Result<ExitCode, ServerError> {
    match ask(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("adstore: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn ask(args: TraceArgs) -> Result<ExitCode, ServerError> {
    let url = args.remote.endpoint("/v1/trace");
    let agent: ureq::Agent = super::remote::agent(Duration::from_secs(120));
    let params = [
        ("publisher_id", &args.publisher_id),
        ("type", &args.kind),
        ("event_id", &args.event_id),
        ("click_id", &args.click_id),
        ("impression_id", &args.impression_id),
        ("user_key", &args.user_key),
        ("ad_id", &args.ad_id),
        ("ts", &args.ts),
    ];
    let mut request = args.remote.authorize(agent.get(&url));
    for (name, value) in params {
        if let Some(v) = value {
            request = request.query(name, v);
        }
    }
    let (status, body) = super::remote::Remote::answer(&url, request.call())?;
    if status != 200 {
        eprintln!("{}", super::sql::render_error(status, &body, ""));
        return Ok(ExitCode::from(2));
    }
    let answer: Value = serde_json::from_str(&body)
        .map_err(|e| ServerError::Client { url: url.clone(), message: format!("the answer is not JSON: {e}") })?;
    if args.json {
        println!("{body}");
    } else {
        print!("{}", render(&answer));
    }
    Ok(if answer["found"].as_u64().is_some_and(|n| n > 0) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// The elements of a JSON list (none if it is not one).
fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// One line per event of a list.
fn brief(e: &Value) -> String {
    format!(
        "{} {} at {} (ad {}, user {})",
        s(&e["type"]),
        s(&e["event_id"]),
        s(&e["ts"]),
        s(&e["ad_id"]),
        s(&e["user_key"])
    )
}

/// The answer for people.
fn render(a: &Value) -> String {
    let mut out = String::new();
    let traces = a["traces"].as_array().map_or(&[][..], Vec::as_slice);
    let found = a["found"].as_u64().unwrap_or(0);
    if found > 1 {
        let shown =
            if found as usize > traces.len() { format!("; the first {} shown", traces.len()) } else { String::new() };
        let _ = writeln!(out, "{found} stored events match{shown}\n");
    }
    for (i, t) in traces.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_trace(&mut out, t);
    }
    if let Some(n) = a.get("not_found") {
        let _ = writeln!(out, "not stored: {}", s(&n["why"]));
        if let Some(d) = n.get("duplicates") {
            let _ = writeln!(out, "  duplicates logged: {}", d["count"]);
        }
        for e in items(&n["named_by"]) {
            let _ = writeln!(out, "  named by {}", brief(e));
        }
        if let Some(w) = n["candidates_window"].as_str() {
            let none = n["candidates"].as_array().is_none_or(Vec::is_empty);
            let _ = writeln!(out, "  candidates ({w}):{}", if none { " none" } else { "" });
        }
        for e in items(&n["candidates"]) {
            let _ = writeln!(out, "    {}", brief(e));
        }
        if let Some(hint) = n["candidates_hint"].as_str() {
            let _ = writeln!(out, "  {hint}");
        }
    }
    if let Some(x) = a.get("expired") {
        let _ = writeln!(out, "note: {}", s(&x["note"]));
    }
    out
}

fn render_trace(out: &mut String, t: &Value) {
    let e = &t["event"];
    let _ = writeln!(
        out,
        "{} {} of publisher {} at {}: advertiser {}, campaign {}, ad {}, user {}",
        s(&e["type"]),
        s(&e["event_id"]),
        s(&e["publisher_id"]),
        s(&e["ts"]),
        s(&e["advertiser_id"]),
        s(&e["campaign_id"]),
        s(&e["ad_id"]),
        s(&e["user_key"])
    );
    let st = &t["stored"];
    let place = match st["in"].as_str() {
        Some("head") => format!("in the head (WAL record {})", st["wal_lsn"]),
        _ => format!("in segment {} ({})", s(&st["segment"]), s(&st["tier"])),
    };
    let finality = if st["final"] == true { "final" } else { "provisional" };
    let _ = writeln!(out, "  stored: {place}, {finality}, rules version {}", st["rules_version"]);
    let d = &t["duplicates"];
    if d["kept"] == true {
        let firsts: Vec<String> =
            items(&d["arrivals"]).map(|a| format!("{} with ts {}", s(&a["received"]), s(&a["ts"]))).collect();
        let received = if firsts.is_empty() { String::new() } else { format!(": received {}", firsts.join("; ")) };
        let _ = writeln!(out, "  duplicates: {}{received}", d["count"]);
    }
    let at = &t["attribution"];
    if at["attributed"].is_boolean() {
        let derived = &at["derived_now"];
        if at["attributed"] == true {
            let _ = writeln!(out, "  attribution: attributed to {} by {}", s(&at["attributed_to"]), s(&at["method"]));
        } else {
            let _ = writeln!(out, "  attribution: not attributed ({}): {}", s(&at["method"]), s(&derived["why_not"]));
        }
        if at["agrees"] == false {
            let now = match derived["attributed_to"].as_str() {
                Some(to) => format!("attributed to {to}"),
                None => format!("not attributed: {}", s(&derived["why_not"])),
            };
            let _ = writeln!(out, "    the anchors stored now give: {now}");
        }
        if let Some(note) = at["note"].as_str() {
            let _ = writeln!(out, "    note: {note}");
        }
    } else {
        let _ = writeln!(out, "  attribution: {}", s(&at["method"]));
    }
    for key in ["attributed_clicks", "attributed_conversions"] {
        for x in items(&at[key]) {
            let _ = writeln!(out, "    attributed to it: {}", brief(x));
        }
    }
    let inv = &t["invalid"];
    match inv["reason"].as_str() {
        Some("") | None => {
            let _ = writeln!(out, "  {}", s(&inv["detail"]));
        }
        Some(r) => {
            let _ = writeln!(out, "  invalid: {r} (rule {}): {}", s(&inv["rule"]), s(&inv["detail"]));
        }
    }
    if let Some(note) = inv["note"].as_str() {
        let _ = writeln!(out, "    {note}");
    }
    let c = &t["counted_in"];
    let measures: Vec<String> = c["measures"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {}", v.as_str().map_or(v.to_string(), |_| "sketch".into())))
        .collect();
    let _ = writeln!(out, "  counts in: {}", measures.join(", "));
    for r in items(&c["rollups"]) {
        let _ = writeln!(
            out,
            "    rollup {} {} bucket {} (segment {})",
            s(&r["rollup"]),
            s(&r["granularity"]),
            s(&r["bucket"]),
            s(&r["segment"])
        );
    }
    if let Some(n) = c["rollups_note"].as_str() {
        let _ = writeln!(out, "    {n}");
    }
    let b = &c["billing"];
    if b.is_object() {
        let versions: Vec<String> = items(&b["versions"])
            .map(|v| format!("v{} {} (rules {})", v["version"], s(&v["cause"]), v["rules_version"]))
            .collect();
        let row = &b["row"];
        let _ = writeln!(
            out,
            "    billing {} {}/{}: {}",
            s(&row["day"]),
            s(&row["advertiser_id"]),
            s(&row["campaign_id"]),
            if versions.is_empty() { s(&b["note"]).to_string() } else { versions.join(", ") }
        );
    }
    for key in ["rules_note", "erased"] {
        if let Some(n) = t[key].as_str() {
            let _ = writeln!(out, "  note: {n}");
        }
    }
}
