//! The web console at `/` of the HTTP port: a SQL editor with results as
//! a table and a line chart, EXPLAIN, copy as CSV, and the store's state
//! (ingest rate, freshness, head, segments per level and tier, errors)
//! read from `/metrics` and `/v1/sql`. Its files (`console/`) are compiled
//! into the binary: it works offline, with no CDN. The chart is uPlot
//! 1.6.32 (MIT, `console/LICENSE-uPlot`), vendored as published on npm.
//!
//! ```text
//!  browser ── GET / ─────────────► index.html
//!          ── GET /console/* ────► console.js, console.css, uPlot
//!          ── POST /v1/sql ──────► rows (JSON) ─► table + chart
//!          ── GET /metrics ──────► state panel, every 5 s
//! ```

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// One embedded file: its path under the HTTP root, type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 5] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("console/index.html") },
    Asset {
        path: "/console/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console/console.js"),
    },
    Asset {
        path: "/console/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("console/console.css"),
    },
    Asset {
        path: "/console/uplot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console/uplot.iife.min.js"),
    },
    Asset {
        path: "/console/uplot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("console/uplot.min.css"),
    },
];

/// The console's routes, to merge into the API router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        let (content_type, body) = (asset.content_type, asset.body);
        router.route(
            asset.path,
            get(move || async move {
                ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
            }),
        )
    })
}
