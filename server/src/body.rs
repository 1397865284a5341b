//! Request bodies: reading them into kept buffers, `Content-Encoding` and
//! the size limit.
//!
//! ```text
//!  raw body, streamed into a pooled buffer (capped at server.max_body_bytes ─► 413)
//!     │ Content-Encoding: gzip | zstd
//!     ▼
//!  decompress into a second pooled buffer, reading at most
//!  max_body_bytes + 1 bytes ─► 413 if more
//! ```
//!
//! The limit applies to the decompressed size too, so a small compressed
//! body cannot expand into an unbounded allocation (a "zip bomb").
//! Decompression is CPU work: callers run it on the blocking pool.
//!
//! Buffers come from a [`BufferPool`] (see `adstore_storage::buffers`) and
//! go back to it when dropped.

use std::io::Read;
use std::sync::Arc;

use adstore_storage::{BufferPool, PooledBuf};
use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;

use crate::error::ServerError;

/// How a request body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` of a request; absent means identity.
    pub fn from_headers(headers: &HeaderMap) -> Result<Encoding, ServerError> {
        let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
        let Some(value) = values.next() else {
            return Ok(Encoding::Identity);
        };
        // One encoding is supported: a stack of them (two headers, or a
        // list in one) is refused rather than half undone.
        if values.next().is_some() {
            return Err(ServerError::UnsupportedEncoding("more than one Content-Encoding header".into()));
        }
        let Ok(text) = value.to_str() else {
            return Err(ServerError::UnsupportedEncoding("a Content-Encoding that is not ASCII".into()));
        };
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            _ => Err(ServerError::UnsupportedEncoding(text)),
        }
    }
}

/// Reads a request body into a pooled buffer, refusing it with 413 once it
/// passes `limit_bytes` (up front when `Content-Length` says so).
pub async fn read(
    body: Body,
    headers: &HeaderMap,
    limit_bytes: usize,
    pool: &Arc<BufferPool>,
) -> Result<PooledBuf, ServerError> {
    let too_large = || ServerError::PayloadTooLarge { limit_bytes, after: "" };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit_bytes as u64) {
        return Err(too_large());
    }
    let mut out = pool.take();
    let declared = declared.unwrap_or(0) as usize;
    if out.vec_mut().capacity() < declared {
        // A fresh buffer, not `reserve`: growing the pooled one would copy
        // its whole old capacity (the allocator does not know it is empty),
        // 1% of Arrow ingest in a profile. An eighth more, so that bodies
        // a little larger than this one reuse it.
        *out.vec_mut() = Vec::with_capacity(declared.saturating_add(declared / 8).min(limit_bytes));
    }
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ServerError::BadRequest(format!("failed to read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit_bytes {
                return Err(too_large());
            }
            out.vec_mut().extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The decoded body, at most `limit_bytes` long. An identity body is
/// returned as is (no copy); a compressed one is decompressed into a
/// buffer from `pool`.
pub fn decode(
    body: PooledBuf,
    encoding: Encoding,
    limit_bytes: usize,
    pool: &Arc<BufferPool>,
) -> Result<PooledBuf, ServerError> {
    let (name, reader): (&'static str, Box<dyn Read + '_>) = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(&body[..]))),
        Encoding::Zstd => {
            let d = zstd::stream::read::Decoder::new(&body[..])
                .map_err(|source| ServerError::Decompress { encoding: "zstd", source })?;
            ("zstd", Box::new(d))
        }
    };
    let mut out = pool.take();
    // A guess at the ratio of NDJSON, bounded so a tiny body cannot reserve much.
    out.vec_mut().reserve(body.len().saturating_mul(8).min(limit_bytes));
    let read = reader
        .take(limit_bytes as u64 + 1)
        .read_to_end(out.vec_mut())
        .map_err(|source| ServerError::Decompress { encoding: name, source })?;
    if read > limit_bytes {
        return Err(ServerError::PayloadTooLarge { limit_bytes, after: ", after decompression" });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn pooled(pool: &Arc<BufferPool>, data: &[u8]) -> PooledBuf {
        let mut b = pool.take();
        b.vec_mut().extend_from_slice(data);
        b
    }

    fn gzip(pool: &Arc<BufferPool>, data: &[u8]) -> PooledBuf {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("compress");
        pooled(pool, &e.finish().expect("finish"))
    }

    #[test]
    fn gzip_and_zstd_round_trip() {
        let pool = BufferPool::new(4, 1 << 20);
        let data = b"{\"a\":1}\n".repeat(1000);
        assert_eq!(decode(gzip(&pool, &data), Encoding::Gzip, 1 << 20, &pool).expect("gzip")[..], data[..]);
        let z = pooled(&pool, &zstd::encode_all(&data[..], 3).expect("zstd"));
        assert_eq!(decode(z, Encoding::Zstd, 1 << 20, &pool).expect("zstd")[..], data[..]);
    }

    #[test]
    fn limit_applies_after_decompression() {
        let pool = BufferPool::new(4, 1 << 20);
        let data = vec![b' '; 100_000];
        let err = decode(gzip(&pool, &data), Encoding::Gzip, 99_999, &pool).expect_err("too large");
        assert!(matches!(err, ServerError::PayloadTooLarge { limit_bytes: 99_999, .. }), "{err}");
        assert_eq!(decode(gzip(&pool, &data), Encoding::Gzip, 100_000, &pool).expect("fits").len(), 100_000);
    }

    #[test]
    fn garbage_is_a_decompress_error() {
        let pool = BufferPool::new(4, 1 << 20);
        let err = decode(pooled(&pool, b"not gzip"), Encoding::Gzip, 1024, &pool).expect_err("bad");
        assert!(matches!(err, ServerError::Decompress { encoding: "gzip", .. }), "{err}");
    }

    #[tokio::test]
    async fn reading_enforces_the_limit_with_and_without_content_length() {
        let pool = BufferPool::new(2, 1 << 16);
        let body = || Body::from(vec![b'x'; 2000]);
        let mut h = HeaderMap::new();
        assert_eq!(read(body(), &h, 2000, &pool).await.expect("fits").len(), 2000);
        let Err(err) = read(body(), &h, 1999, &pool).await else { panic!("too large while streaming") };
        assert!(matches!(err, ServerError::PayloadTooLarge { limit_bytes: 1999, .. }), "{err}");
        h.insert(header::CONTENT_LENGTH, "5000".parse().expect("value"));
        let Err(err) = read(Body::empty(), &h, 4999, &pool).await else { panic!("too large by its header") };
        assert!(matches!(err, ServerError::PayloadTooLarge { limit_bytes: 4999, .. }), "{err}");
    }

    #[test]
    fn encodings_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(Encoding::from_headers(&h).expect("none"), Encoding::Identity);
        h.insert(header::CONTENT_ENCODING, "ZSTD".parse().expect("value"));
        assert_eq!(Encoding::from_headers(&h).expect("zstd"), Encoding::Zstd);
        h.insert(header::CONTENT_ENCODING, "br".parse().expect("value"));
        assert!(matches!(Encoding::from_headers(&h), Err(ServerError::UnsupportedEncoding(_))));
        // Not ASCII, or a stack of encodings: refused, not read as identity
        // or half undone.
        h.insert(header::CONTENT_ENCODING, axum::http::HeaderValue::from_bytes(b"gzip\xff").expect("value"));
        assert!(matches!(Encoding::from_headers(&h), Err(ServerError::UnsupportedEncoding(_))));
        h.insert(header::CONTENT_ENCODING, "gzip".parse().expect("value"));
        h.append(header::CONTENT_ENCODING, "zstd".parse().expect("value"));
        assert!(matches!(Encoding::from_headers(&h), Err(ServerError::UnsupportedEncoding(_))));
    }
}
