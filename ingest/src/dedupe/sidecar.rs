//! The `{segment}.keys` sidecar: a sealed segment's idempotency keys and
//! event times, read back at open instead of rescanning the segment.

/// Sidecar encoding of a segment's keys: `ADSKEYS1`, count (u64 LE), then
/// per key the 16-byte key (LE) and its event time (i64 LE).
pub fn encode_keys(keys: &[(u128, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + keys.len() * 24);
    out.extend_from_slice(b"ADSKEYS1");
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for (k, ts) in keys {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&ts.to_le_bytes());
    }
    out
}

pub fn decode_keys(bytes: &[u8]) -> Option<Vec<(u128, i64)>> {
    let rest = bytes.strip_prefix(b"ADSKEYS1")?;
    let (n, rest) = rest.split_first_chunk::<8>()?;
    let n = usize::try_from(u64::from_le_bytes(*n)).ok()?;
    if rest.len() != n.checked_mul(24)? {
        return None;
    }
    Some(
        rest.chunks_exact(24)
            .map(|c| {
                let (k, t) = c.split_at(16);
                let k = u128::from_le_bytes(k.try_into().unwrap_or([0; 16]));
                let t = i64::from_le_bytes(t.try_into().unwrap_or([0; 8]));
                (k, t)
            })
            .collect(),
    )
}
