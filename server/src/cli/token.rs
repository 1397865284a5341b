//! `adstore token create|list|revoke`: access tokens (docs/security.md),
//! through a running server's admin API or in a stopped server's data
//! directory.
//!
//! ```text
//!  --data-dir D:  lock D (refused while a server holds it) ─► tokens.json changed in place
//!  otherwise:     POST / GET / DELETE {url}/v1/tokens[/{id}] with an admin --token
//!  create:        the token on stdout, once (it is stored only hashed); what it may do on stderr
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::auth::Role;
use crate::auth::tokens::{NewToken, TokenStore};
use crate::error::ServerError;
use crate::http::now_ms;

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: Action,
    /// Change the tokens of this data directory instead of a running
    /// server's (the server must be stopped).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    remote: super::remote::Remote,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Create a token and print it (the only time it is shown).
    Create(CreateArgs),
    /// List the tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (or the token itself).
    Revoke {
        /// The token's id, as `list` shows it.
        id: String,
    },
}

#[derive(clap::Args)]
struct CreateArgs {
    /// admin (everything), ingest (send events for --publisher), or query
    /// (read the rows of --advertiser, or --all-advertisers).
    #[arg(long, value_parser = ["admin", "ingest", "query"])]
    role: String,
    /// A publisher an ingest token may send for (repeat for more).
    #[arg(long = "publisher")]
    publishers: Vec<String>,
    /// An advertiser whose rows a query token sees (repeat for more).
    #[arg(long = "advertiser")]
    advertisers: Vec<String>,
    /// A query token that sees every advertiser's rows.
    #[arg(long)]
    all_advertisers: bool,
    /// A label for people ("grafana", "ad server eu-1").
    #[arg(long)]
    name: Option<String>,
}

impl CreateArgs {
    fn new_token(&self) -> NewToken {
        let role = match self.role.as_str() {
            "admin" => Role::Admin,
            "ingest" => Role::Ingest,
            _ => Role::Query,
        };
        NewToken {
            role,
            name: self.name.clone(),
            publishers: self.publishers.clone(),
            advertisers: self.advertisers.clone(),
            all_advertisers: self.all_advertisers,
        }
    }
}

pub fn run(args: TokenArgs) -> Result<ExitCode, ServerError> {
    match &args.data_dir {
        Some(dir) => offline(dir, args.action),
        None => online(&args.remote, args.action),
    }
}

/// On a stopped server's data directory, holding its lock.
fn offline(dir: &std::path::Path, action: Action) -> Result<ExitCode, ServerError> {
    // A first admin token may come before the first `serve` (so that the
    // server never runs open); anything else on a missing directory is a
    // mistyped path.
    if !dir.exists() {
        if !matches!(action, Action::Create(_)) {
            return Err(ServerError::InvalidArgument {
                arg: "data-dir",
                message: format!("{} does not exist: no data directory there", dir.display()),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| ServerError::Io { path: dir.display().to_string(), source })?;
        eprintln!("adstore: created the data directory {} (it did not exist)", dir.display());
    }
    let _lock = adstore_storage::lock_data_dir(dir).map_err(|e| match e {
        adstore_storage::StorageError::DataDirInUse { .. } => ServerError::InvalidArgument {
            arg: "data-dir",
            message: format!(
                "{} is in use by a running server: change its tokens through it instead \
                 (adstore token … --url URL --token ADMIN_TOKEN)",
                dir.display()
            ),
        },
        e => ServerError::Storage(e),
    })?;
    let tokens = TokenStore::open(dir)?;
    match action {
        Action::Create(create) => {
            let (token, record) = tokens.create(&create.new_token(), now_ms())?;
            announce(&token, &record.listing(), tokens.has_admin());
        }
        Action::List { json } => {
            let listing: Vec<serde_json::Value> = tokens.list().iter().map(|r| r.listing()).collect();
            print_list(&listing, json);
        }
        Action::Revoke { id } => {
            let record = tokens.revoke(&id, now_ms())?;
            eprintln!("revoked token {}", record.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Through a running server's admin API.
fn online(remote: &super::remote::Remote, action: Action) -> Result<ExitCode, ServerError> {
    let agent: ureq::Agent = super::remote::agent(Duration::from_secs(30));
    let url = remote.endpoint("/v1/tokens");
    let client_error = |message: String| ServerError::Client { url: url.clone(), message };
    let call = |request| super::remote::Remote::answer(&url, request);
    let (status, body) = match &action {
        Action::Create(create) => {
            let new = create.new_token();
            let json = serde_json::json!({
                "role": new.role,
                "name": new.name,
                "publishers": new.publishers,
                "advertisers": new.advertisers,
                "all_advertisers": new.all_advertisers,
            });
            call(
                remote
                    .authorize(agent.post(&url))
                    .header("content-type", "application/json")
                    .send(json.to_string().as_bytes()),
            )?
        }
        Action::List { .. } => call(remote.authorize(agent.get(&url)).call())?,
        Action::Revoke { id } => call(remote.authorize(agent.delete(&format!("{url}/{id}"))).call())?,
    };
    if !(200..300).contains(&status) {
        eprintln!("{}", super::sql::render_error(status, &body, ""));
        return Ok(ExitCode::FAILURE);
    }
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| client_error(format!("not the JSON expected: {e}")))?;
    match action {
        Action::Create(_) => {
            let token = json["token"].as_str().unwrap_or_default().to_string();
            announce(&token, &json, true);
        }
        Action::List { json: as_json } => {
            let listing = json["tokens"].as_array().cloned().unwrap_or_default();
            print_list(&listing, as_json);
        }
        Action::Revoke { .. } => eprintln!("revoked token {}", json["id"].as_str().unwrap_or("?")),
    }
    Ok(ExitCode::SUCCESS)
}

/// The new token on stdout; what it may do on stderr.
fn announce(token: &str, listing: &serde_json::Value, has_admin: bool) {
    println!("{token}");
    eprintln!(
        "created {} token {} ({}); it is shown only this once: keep it somewhere safe",
        listing["role"].as_str().unwrap_or("?"),
        listing["id"].as_str().unwrap_or("?"),
        scope(listing)
    );
    if !has_admin {
        eprintln!(
            "note: no admin token exists; tokens, rules and retention can only be changed offline \
             (adstore token create --role admin --data-dir …) until one does"
        );
    }
}

/// What a token listing may do, in words.
fn scope(listing: &serde_json::Value) -> String {
    let ids = |v: &serde_json::Value| {
        v.as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()
    };
    match listing["role"].as_str() {
        Some("admin") => "everything".into(),
        Some("ingest") => format!("sends events for publishers {}", ids(&listing["publishers"])),
        Some("query") if listing["advertisers"].is_null() => "reads every advertiser's rows".into(),
        Some("query") => format!("reads the rows of advertisers {}", ids(&listing["advertisers"])),
        _ => String::new(),
    }
}

fn print_list(listing: &[serde_json::Value], json: bool) {
    if json {
        println!("{}", serde_json::Value::Array(listing.to_vec()));
        return;
    }
    println!("{:<16}  {:<6}  {:<8}  {:<20}  scope", "id", "role", "state", "name");
    for t in listing {
        println!(
            "{:<16}  {:<6}  {:<8}  {:<20}  {}",
            t["id"].as_str().unwrap_or("?"),
            t["role"].as_str().unwrap_or("?"),
            if t["revoked_ms"].is_null() { "active" } else { "revoked" },
            t["name"].as_str().unwrap_or(""),
            scope(t)
        );
    }
}
