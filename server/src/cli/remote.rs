//! The server a client command talks to: its URL, and the token it sends
//! (`Authorization: Bearer`, docs/security.md).

/// `--url` and `--token` of every command that calls a server.
#[derive(clap::Args, Clone, Debug)]
pub struct Remote {
    /// Base URL of the server.
    #[arg(long, env = "ADSTORE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// Access token for a server with access control (docs/security.md).
    #[arg(long, env = "ADSTORE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl Remote {
    /// The URL of `path` (`/v1/sql`) on the server.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    /// The `Authorization` header value, if a token is given.
    pub fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {}", t.trim()))
    }

    /// `request` with the token, if one is given.
    pub fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match self.authorization() {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    }
}
