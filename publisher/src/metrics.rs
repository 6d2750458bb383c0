//! Publisher metrics: mutations by type and outcome, and how long they take.
//!
//! Registered into a caller's [`Registry`] so the embedded gateway serves them beside its
//! own on one `/metrics`.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::error::StoreError;

/// Latency buckets in seconds, from a fast local Redis to a struggling one.
const BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The publisher's series.
#[derive(Clone, Debug)]
pub struct PublisherMetrics {
    /// `publisher_mutations_total{type, outcome}`.
    pub mutations: IntCounterVec,
    /// `publisher_mutation_duration_seconds{type}`.
    pub duration: HistogramVec,
    /// `publisher_idempotent_replays_total{type}`: writes answered with the first answer
    /// under their idempotency key (nothing written).
    pub replays: IntCounterVec,
    /// `publisher_batch_items{type}`: records or changes per batch write.
    pub batch_items: HistogramVec,
}

impl PublisherMetrics {
    /// Creates the series and registers them in `registry`.
    ///
    /// # Errors
    /// If a series of the same name is already registered.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let mutations = IntCounterVec::new(
            Opts::new(
                "publisher_mutations_total",
                "Mutations and raw publishes, by type and outcome.",
            ),
            &["type", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "publisher_mutation_duration_seconds",
                "Time to write a mutation and its event.",
            )
            .buckets(BUCKETS.to_vec()),
            &["type"],
        )?;
        let replays = IntCounterVec::new(
            Opts::new(
                "publisher_idempotent_replays_total",
                "Writes answered with the first answer under their Idempotency-Key, writing nothing.",
            ),
            &["type"],
        )?;
        let batch_items = HistogramVec::new(
            HistogramOpts::new(
                "publisher_batch_items",
                "Records or changes written per batch (array create, updateAll, publish array).",
            )
            .buckets(vec![
                0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
            ]),
            &["type"],
        )?;
        registry.register(Box::new(mutations.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(batch_items.clone()))?;
        Ok(Self {
            mutations,
            duration,
            replays,
            batch_items,
        })
    }

    /// Counts one mutation of `kind` (the operation: `create`, `replace`, `patch`, ...).
    /// A refused reuse of an idempotency key counts as outcome `key_reused` (the 422s).
    pub fn record<T>(&self, kind: &str, took: Duration, result: &Result<T, StoreError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(
                StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::Unsettled { .. },
            ) => "unavailable",
            Err(StoreError::Unanswered(_)) => "unknown",
            Err(StoreError::NotFound { .. } | StoreError::NoneFound { .. }) => "not_found",
            Err(
                StoreError::Exists { .. }
                | StoreError::Contended { .. }
                | StoreError::IdsExhausted { .. }
                | StoreError::RecordsNotKept { .. },
            ) => "conflict",
            Err(
                StoreError::IdMismatch { .. }
                | StoreError::Invalid(_)
                | StoreError::Filter(_)
                | StoreError::BadIdempotencyKey
                | StoreError::ManyMatched { .. },
            ) => "invalid",
            Err(StoreError::KeyReused) => "key_reused",
            Err(StoreError::BatchTooLarge { .. }) => "too_large",
            Err(StoreError::Redis(_) | StoreError::Reply(_)) => "error",
        };
        self.mutations.with_label_values(&[kind, outcome]).inc();
        self.duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }
}
