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

/// The HTTP client of a command: answers of every status returned (the
/// command reads the error body), and at most `timeout` per call.
pub fn agent(timeout: std::time::Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
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

    /// A request's (status, body), or a `Client` error naming `url`.
    ///
    /// # Errors
    /// The request could not be sent or its answer not read.
    pub fn answer(
        url: &str,
        request: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), crate::error::ServerError> {
        let client_error = |message: String| crate::error::ServerError::Client { url: url.to_string(), message };
        let mut response = request.map_err(|e| client_error(e.to_string()))?;
        let status = response.status().as_u16();
        let body =
            response.body_mut().read_to_string().map_err(|e| client_error(format!("reading the response: {e}")))?;
        Ok((status, body))
    }

    /// `request` with the token, if one is given.
    pub fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match self.authorization() {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    }
}
