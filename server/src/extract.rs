//! Request extractors whose rejections are [`ServerError`]s, so that a
//! body, path or query string the server cannot use gets the same JSON
//! error body as every other error (axum's own rejections answer in plain
//! text), and the fallbacks for unknown routes and methods.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{Method, Uri, request::Parts};
use serde::de::DeserializeOwned;

use crate::error::ServerError;

/// A JSON request body (`axum::Json`).
pub struct JsonBody<T>(pub T);

/// A whole request body as bytes (`axum::body::Bytes`).
pub struct BodyBytes(pub Bytes);

/// Path parameters (`axum::extract::Path`).
pub struct PathParams<T>(pub T);

/// The query string (`axum::extract::Query`).
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ServerError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(r) => Err(json_rejection(&r)),
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for BodyBytes {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ServerError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(BodyBytes(bytes)),
            Err(r) => Err(bytes_rejection(&r)),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServerError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(PathParams(v)),
            Err(r) => Err(path_rejection(&r)),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServerError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(r) => Err(query_rejection(&r)),
        }
    }
}

fn json_rejection(r: &JsonRejection) -> ServerError {
    match r {
        JsonRejection::MissingJsonContentType(_) => ServerError::Rejected {
            status: r.status().as_u16(),
            message: "expected content-type: application/json".into(),
        },
        _ => ServerError::Rejected { status: r.status().as_u16(), message: r.body_text() },
    }
}

fn bytes_rejection(r: &BytesRejection) -> ServerError {
    ServerError::Rejected { status: r.status().as_u16(), message: r.body_text() }
}

fn path_rejection(r: &PathRejection) -> ServerError {
    ServerError::Rejected { status: r.status().as_u16(), message: format!("in the path: {}", r.body_text()) }
}

fn query_rejection(r: &QueryRejection) -> ServerError {
    ServerError::Rejected { status: r.status().as_u16(), message: format!("in the query string: {}", r.body_text()) }
}

/// The router's fallback: a JSON 404 naming what was asked for.
pub async fn no_route(method: Method, uri: Uri) -> ServerError {
    ServerError::NotFound(format!("no route for {method} {}", uri.path()))
}

/// The method fallback: a JSON 405.
pub async fn no_method(method: Method, uri: Uri) -> ServerError {
    ServerError::Rejected { status: 405, message: format!("{} does not take {method}", uri.path()) }
}
