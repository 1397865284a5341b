//! Per-publisher ingest rate limits (DESIGN.md §5): a token bucket per
//! `publisher_id`, refilled at `ingest.max_events_per_second_per_publisher`
//! with a burst of one second's worth. A request whose events for some
//! publisher exceed that publisher's tokens is refused whole with 429 and a
//! `Retry-After` saying when enough tokens will be there; nothing of it is
//! stored, so the producer simply retries. With access control on, each
//! token has its own buckets: one publisher's two ad servers, each with
//! its token, each get the rate.

use std::collections::HashMap;
use std::time::Instant;

use adstore_storage::{ColumnId, EventBatch};
use parking_lot::Mutex;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    /// Events per second per publisher; 0 = unlimited.
    rate: f64,
    /// By (token id, publisher id); the token id is empty when
    /// authentication is off. Bounded by tokens × their publishers.
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

/// A refusal: which publisher, and after how many seconds to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub publisher_id: String,
    pub retry_after_s: u64,
}

impl RateLimiter {
    pub fn new(events_per_second: u64) -> RateLimiter {
        RateLimiter { rate: events_per_second as f64, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes tokens for every event of `batches` (one request of the
    /// access token `token_id`), all or nothing.
    pub fn admit(&self, token_id: &str, batches: &[EventBatch]) -> Result<(), Limited> {
        if self.rate <= 0.0 || batches.iter().all(EventBatch::is_empty) {
            return Ok(());
        }
        let mut wanted: HashMap<&str, f64> = HashMap::new();
        for batch in batches {
            let publishers = batch.str_column(ColumnId::PublisherId);
            for i in 0..batch.num_rows() {
                *wanted.entry(publishers.value(i)).or_default() += 1.0;
            }
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        for (p, n) in &wanted {
            let b = buckets
                .entry((token_id.to_string(), (*p).to_string()))
                .or_insert(Bucket { tokens: self.rate, at: now });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.rate.max(*n));
            b.at = now;
            if b.tokens < *n {
                let retry_after_s = ((*n - b.tokens) / self.rate).ceil().max(1.0) as u64;
                return Err(Limited { publisher_id: (*p).to_string(), retry_after_s });
            }
        }
        for (p, n) in wanted {
            if let Some(b) = buckets.get_mut(&(token_id.to_string(), p.to_string())) {
                b.tokens -= n;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use adstore_storage::Event;

    use super::*;

    fn batch(publisher: &str, n: usize) -> EventBatch {
        let e = Event { publisher_id: publisher.into(), ..Event::default() };
        EventBatch::from_events(&vec![e; n])
    }

    #[test]
    fn refuses_beyond_the_rate_and_names_the_publisher() {
        let rl = RateLimiter::new(100);
        assert!(rl.admit("", &[batch("a", 80)]).is_ok());
        let err = rl.admit("", &[batch("a", 80)]).expect_err("over the rate");
        assert_eq!(err.publisher_id, "a");
        assert!(err.retry_after_s >= 1);
        // Another publisher has its own bucket.
        assert!(rl.admit("", &[batch("b", 100)]).is_ok());
        // So has another token of the same publisher.
        assert!(rl.admit("t2", &[batch("a", 80)]).is_ok());
        // The batches of one request count together.
        let err = rl.admit("", &[batch("c", 60), batch("c", 60)]).expect_err("120 events at once");
        assert_eq!(err.publisher_id, "c");
        // Unlimited by default.
        assert!(RateLimiter::new(0).admit("", &[batch("a", 1_000_000)]).is_ok());
    }
}
