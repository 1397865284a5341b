//! Request bodies: `Content-Encoding` and the size limit.
//!
//! ```text
//!  raw body (axum, capped at server.max_body_bytes ─► 413)
//!     │ Content-Encoding: gzip | zstd
//!     ▼
//!  decompress, reading at most max_body_bytes + 1 bytes ─► 413 if more
//! ```
//!
//! The limit applies to the decompressed size too, so a small compressed
//! body cannot expand into an unbounded allocation (a "zip bomb").
//! Decompression is CPU work: callers run it on the blocking pool.

use std::io::Read;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};

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
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Encoding::Identity);
        };
        let text = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
        match text.as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            _ => Err(ServerError::UnsupportedEncoding(text)),
        }
    }
}

/// The decoded body, at most `limit_bytes` long. An identity body is
/// returned as is (no copy).
pub fn decode(body: Bytes, encoding: Encoding, limit_bytes: usize) -> Result<Bytes, ServerError> {
    let (name, reader): (&'static str, Box<dyn Read + '_>) = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(&body[..]))),
        Encoding::Zstd => {
            let d = zstd::stream::read::Decoder::new(&body[..])
                .map_err(|source| ServerError::Decompress { encoding: "zstd", source })?;
            ("zstd", Box::new(d))
        }
    };
    // A guess at the ratio of NDJSON, bounded so a tiny body cannot reserve much.
    let mut out = Vec::with_capacity(body.len().saturating_mul(8).min(limit_bytes));
    let read = reader
        .take(limit_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| ServerError::Decompress { encoding: name, source })?;
    if read > limit_bytes {
        return Err(ServerError::PayloadTooLarge { limit_bytes, after: ", after decompression" });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("compress");
        Bytes::from(e.finish().expect("finish"))
    }

    #[test]
    fn gzip_and_zstd_round_trip() {
        let data = b"{\"a\":1}\n".repeat(1000);
        assert_eq!(decode(gzip(&data), Encoding::Gzip, 1 << 20).expect("gzip")[..], data[..]);
        let z = Bytes::from(zstd::encode_all(&data[..], 3).expect("zstd"));
        assert_eq!(decode(z, Encoding::Zstd, 1 << 20).expect("zstd")[..], data[..]);
    }

    #[test]
    fn limit_applies_after_decompression() {
        let data = vec![b' '; 100_000];
        let err = decode(gzip(&data), Encoding::Gzip, 99_999).expect_err("too large");
        assert!(matches!(err, ServerError::PayloadTooLarge { limit_bytes: 99_999, .. }), "{err}");
        assert_eq!(decode(gzip(&data), Encoding::Gzip, 100_000).expect("fits").len(), 100_000);
    }

    #[test]
    fn garbage_is_a_decompress_error() {
        let err = decode(Bytes::from_static(b"not gzip"), Encoding::Gzip, 1024).expect_err("bad");
        assert!(matches!(err, ServerError::Decompress { encoding: "gzip", .. }), "{err}");
    }

    #[test]
    fn encodings_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(Encoding::from_headers(&h).expect("none"), Encoding::Identity);
        h.insert(header::CONTENT_ENCODING, "ZSTD".parse().expect("value"));
        assert_eq!(Encoding::from_headers(&h).expect("zstd"), Encoding::Zstd);
        h.insert(header::CONTENT_ENCODING, "br".parse().expect("value"));
        assert!(matches!(Encoding::from_headers(&h), Err(ServerError::UnsupportedEncoding(_))));
    }
}
