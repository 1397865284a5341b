//! Admission control for SQL statements: a bounded number run at once, the
//! rest wait their turn in arrival order.
//!
//! ```text
//!  HTTP /v1/sql ─┐                      ┌─ running (≤ query.max_running) ─► blocking pool ─► adstore_query
//!  PostgreSQL ───┴─► Admission::admit ──┤
//!                                       └─ queued, FIFO (≤ query.max_queued, ≤ query.queue_timeout_ms)
//! ```
//!
//! Without it every statement starts at once and the query pool shares the
//! cores among all of them: a hundred dashboards make every query a hundred
//! times slower, and the statement timeout, which counted that wait, fired
//! at random. With it a statement's timeout starts when it runs; its wait
//! is bounded on its own and reported apart (`adstore_query_queue_wait_seconds`).
//! A statement refused for a full queue or a wait past the bound fails with
//! `overloaded` (HTTP 503 with `Retry-After`, SQLSTATE 53000): retrying later
//! is safe, nothing ran.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ServerError;
use crate::metrics::HttpMetrics;

/// The gate in front of the query pool.
pub struct Admission {
    running: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queued: usize,
    queue_timeout: Duration,
}

/// Why a statement was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_queued` statements were already waiting.
    QueueFull { max_queued: usize },
    /// It waited `queue_timeout` without a turn.
    Waited { queue_timeout_ms: u64 },
}

impl Refusal {
    /// The `reason` label of `adstore_query_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::Waited { .. } => "queue_timeout",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::QueueFull { max_queued } => write!(
                f,
                "the server is overloaded: {max_queued} statements are already waiting to run (query.max_queued); retry later"
            ),
            Refusal::Waited { queue_timeout_ms } => write!(
                f,
                "the server is overloaded: the statement waited {queue_timeout_ms} ms for a turn to run (query.queue_timeout_ms) and did not start; retry later"
            ),
        }
    }
}

/// A statement's turn to run; the next waiting one starts when it is dropped.
pub struct Turn {
    _permit: OwnedSemaphorePermit,
    running: prometheus::IntGauge,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.running.dec();
    }
}

/// Counts a waiting statement in the queue until it is admitted, refused or
/// abandoned (a cancel request or a closed connection drops the future).
struct Waiting<'a> {
    queued: &'a AtomicUsize,
    gauge: &'a prometheus::IntGauge,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Admission {
    pub fn new(max_running: usize, max_queued: usize, queue_timeout: Duration) -> Admission {
        Admission {
            running: Arc::new(Semaphore::new(max_running)),
            queued: AtomicUsize::new(0),
            max_queued,
            queue_timeout,
        }
    }

    /// Waits for a turn to run one statement, in arrival order.
    pub async fn admit(&self, metrics: &HttpMetrics) -> Result<Turn, Refusal> {
        let started = Instant::now();
        let turn = self.wait(metrics).await;
        match &turn {
            Ok(_) => metrics.query_queue_wait.observe(started.elapsed().as_secs_f64()),
            Err(refusal) => metrics.query_rejected.with_label_values(&[refusal.label()]).inc(),
        }
        turn
    }

    async fn wait(&self, metrics: &HttpMetrics) -> Result<Turn, Refusal> {
        // A free slot and nobody waiting: run now (the semaphore is fair, so
        // try_acquire fails while others wait ahead).
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(self.turn(permit, metrics));
        }
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        metrics.query_queued.inc();
        let _waiting = Waiting { queued: &self.queued, gauge: &metrics.query_queued };
        if before >= self.max_queued {
            return Err(Refusal::QueueFull { max_queued: self.max_queued });
        }
        let timeout_ms = u64::try_from(self.queue_timeout.as_millis()).unwrap_or(u64::MAX);
        match tokio::time::timeout(self.queue_timeout, self.running.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.turn(permit, metrics)),
            // The semaphore is never closed; treat it as a wait that ended.
            Ok(Err(_)) | Err(_) => Err(Refusal::Waited { queue_timeout_ms: timeout_ms }),
        }
    }

    fn turn(&self, permit: OwnedSemaphorePermit, metrics: &HttpMetrics) -> Turn {
        metrics.query_running.inc();
        Turn { _permit: permit, running: metrics.query_running.clone() }
    }
}

impl From<Refusal> for ServerError {
    fn from(r: Refusal) -> ServerError {
        ServerError::Overloaded(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> HttpMetrics {
        HttpMetrics::new().expect("metrics")
    }

    #[tokio::test]
    async fn turns_come_in_arrival_order_and_the_queue_is_bounded() {
        let m = Arc::new(metrics());
        let gate = Arc::new(Admission::new(1, 2, Duration::from_secs(5)));
        let first = gate.admit(&m).await.expect("a free slot");
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (gate, m, order) = (gate.clone(), m.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let turn = gate.admit(&m).await;
                order.lock().push(i);
                drop(turn);
            }));
            // Let each waiter enqueue before the next arrives.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(m.query_queued.get(), 2);
        assert_eq!(gate.admit(&m).await.err(), Some(Refusal::QueueFull { max_queued: 2 }));
        assert_eq!(m.query_running.get(), 1);
        drop(first);
        for w in waiters {
            w.await.expect("waiter");
        }
        assert_eq!(*order.lock(), vec![0, 1]);
        assert_eq!((m.query_queued.get(), m.query_running.get()), (0, 0));
        assert_eq!(m.query_rejected.with_label_values(&["queue_full"]).get(), 1);
    }

    #[tokio::test]
    async fn a_wait_past_the_bound_is_refused_and_leaves_the_queue() {
        let m = metrics();
        let gate = Admission::new(1, 10, Duration::from_millis(50));
        let _busy = gate.admit(&m).await.expect("a free slot");
        assert_eq!(gate.admit(&m).await.err(), Some(Refusal::Waited { queue_timeout_ms: 50 }));
        assert_eq!(m.query_queued.get(), 0);
        let abandoned = tokio::time::timeout(Duration::from_millis(10), gate.admit(&m)).await;
        assert!(abandoned.is_err(), "still waiting when abandoned");
        assert_eq!(m.query_queued.get(), 0, "an abandoned wait leaves the queue");
    }
}
