//! `adstore retention show` and `adstore retention set --raw-hot 7d --raw-ttl 90d …`:
//! the retention policy of a running server (`GET` / `PUT /v1/retention`).
//!
//! ```text
//!  show: GET  ─► one line per level: hot and ttl ("never" for null)
//!  set:  GET  ─► the fields given replaced ("never" clears one) ─► PUT ─► the policy in force
//!        a refused policy: the server's reason on stderr, exit 1 (nothing changed)
//! ```

use std::process::ExitCode;
use std::time::Duration;

use adstore_storage::retention::{Age, LevelPolicy, RetentionPolicy};

use crate::error::ServerError;

#[derive(clap::Args)]
pub struct RetentionArgs {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    remote: super::remote::Remote,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Print the policy in force.
    Show {
        /// Print the server's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Change some fields of the policy: a duration like 90m, 36h, 7d, or "never".
    Set(SetArgs),
}

#[derive(clap::Args)]
struct SetArgs {
    /// Raw events deleted this long after their bucket ends.
    #[arg(long)]
    raw_ttl: Option<String>,
    #[arg(long)]
    minute_ttl: Option<String>,
    #[arg(long)]
    hour_ttl: Option<String>,
    #[arg(long)]
    day_ttl: Option<String>,
    /// Raw events moved to the object store this long after their bucket ends.
    #[arg(long)]
    raw_hot: Option<String>,
    #[arg(long)]
    minute_hot: Option<String>,
    #[arg(long)]
    hour_hot: Option<String>,
    #[arg(long)]
    day_hot: Option<String>,
}

pub fn run(args: RetentionArgs) -> Result<ExitCode, ServerError> {
    let url = args.remote.endpoint("/v1/retention");
    let agent: ureq::Agent = super::remote::agent(Duration::from_secs(30));
    let client_error = |message: String| ServerError::Client { url: url.clone(), message };
    let call = |request| super::remote::Remote::answer(&url, request);
    let (status, body) = call(args.remote.authorize(agent.get(&url)).call())?;
    if status != 200 {
        eprintln!("{}", super::sql::render_error(status, &body, ""));
        return Ok(ExitCode::FAILURE);
    }
    let mut policy: RetentionPolicy =
        serde_json::from_str(&body).map_err(|e| client_error(format!("not a retention policy: {e}")))?;
    match args.action {
        Action::Show { json: true } => println!("{body}"),
        Action::Show { json: false } => print!("{}", render(&policy)),
        Action::Set(set) => {
            let fields = [
                ("raw-ttl", set.raw_ttl, &mut policy.raw.ttl),
                ("minute-ttl", set.minute_ttl, &mut policy.minute.ttl),
                ("hour-ttl", set.hour_ttl, &mut policy.hour.ttl),
                ("day-ttl", set.day_ttl, &mut policy.day.ttl),
                ("raw-hot", set.raw_hot, &mut policy.raw.hot),
                ("minute-hot", set.minute_hot, &mut policy.minute.hot),
                ("hour-hot", set.hour_hot, &mut policy.hour.hot),
                ("day-hot", set.day_hot, &mut policy.day.hot),
            ];
            for (arg, value, field) in fields {
                if let Some(v) = value {
                    *field = parse_ttl(arg, &v)?;
                }
            }
            let json = serde_json::to_string(&policy).map_err(|e| ServerError::Internal(e.to_string()))?;
            let (status, body) = call(
                args.remote.authorize(agent.put(&url)).header("content-type", "application/json").send(json.as_bytes()),
            )?;
            if status != 200 {
                eprintln!("{}", super::sql::render_error(status, &body, ""));
                return Ok(ExitCode::FAILURE);
            }
            let now: RetentionPolicy =
                serde_json::from_str(&body).map_err(|e| client_error(format!("not a retention policy: {e}")))?;
            print!("{}", render(&now));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A ttl or hot argument: a duration, or `never` (also `null`, `none`).
fn parse_ttl(arg: &'static str, value: &str) -> Result<Option<Age>, ServerError> {
    if ["never", "null", "none"].contains(&value.trim().to_ascii_lowercase().as_str()) {
        return Ok(None);
    }
    Age::parse(value).map(Some).map_err(|message| ServerError::InvalidArgument { arg, message })
}

/// One line per level: `raw     hot never   ttl 30d`.
fn render(policy: &RetentionPolicy) -> String {
    let show = |a: Option<Age>| a.map_or("never".to_string(), |a| a.to_string());
    let levels: [(&str, &LevelPolicy); 4] =
        [("raw", &policy.raw), ("minute", &policy.minute), ("hour", &policy.hour), ("day", &policy.day)];
    levels.iter().map(|(name, p)| format!("{name:<7} hot {:<7} ttl {}\n", show(p.hot), show(p.ttl))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_arguments() {
        assert_eq!(parse_ttl("raw-ttl", "never").expect("never"), None);
        assert_eq!(parse_ttl("raw-ttl", "30d").expect("30d").map(Age::ms), Some(30 * 86_400_000));
        assert!(parse_ttl("raw-ttl", "30 days").is_err());
        let p = RetentionPolicy { raw: LevelPolicy { hot: None, ttl: Age::parse("30d").ok() }, ..Default::default() };
        assert_eq!(render(&p).lines().next(), Some("raw     hot never   ttl 30d"));
    }
}
