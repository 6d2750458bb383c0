//! Gateway metrics (Prometheus). One [`Metrics`] per server, owning its registry, so
//! several gateways in one test process do not share series.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use proto::EventId;

/// publish->deliver latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every series the gateway exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// `gateway_sse_connections{endpoint}`: streams open now.
    pub connections: IntGaugeVec,
    /// `gateway_sse_connections_total{endpoint}`: streams ever opened.
    pub connections_total: IntCounterVec,
    /// `gateway_events_delivered_total`: change frames handed to clients (live and replay).
    pub delivered: IntCounter,
    /// `gateway_events_replayed_total`: of those, read back from the stream.
    pub replayed: IntCounter,
    /// `gateway_resets_total{reason}`.
    pub resets: IntCounterVec,
    /// `gateway_slow_client_catchups_total`: clients that fell behind live and were caught
    /// up from the stream.
    pub catchups: IntCounter,
    /// `gateway_gap_refills_total`: live events whose `prev` a client had not seen (a lost
    /// or dropped message), refilled from the stream.
    pub gap_refills: IntCounter,
    /// `gateway_slow_client_disconnects_total`: connections dropped because writes stalled.
    pub slow_disconnects: IntCounter,
    /// `gateway_redis_reconnects_total`: times the subscription connection was lost.
    pub redis_reconnects: IntCounter,
    /// `gateway_redis_subscription_up`: 1 while Redis answers and every topic is subscribed.
    pub subscription_up: IntGauge,
    /// `gateway_subscribed_topics`: topics this pod subscribes to.
    pub subscribed_topics: IntGauge,
    /// `gateway_subscription_batch_seconds{op}`: one `SUBSCRIBE`/`UNSUBSCRIBE` batch, from
    /// sent to confirmed (its `_count` is the number of batches).
    pub subscription_batches: HistogramVec,
    /// `gateway_pubsub_dropped_total`: messages dropped because the reader queue was full.
    pub pubsub_dropped: IntCounter,
    /// `gateway_snapshot_pages_total`: `event: snapshot` pages sent.
    pub snapshot_pages: IntCounter,
    /// `gateway_snapshot_records_total`: records sent in snapshot pages.
    pub snapshot_records: IntCounter,
    /// `gateway_move_outs_total`: updates that took a record out of a client's filter,
    /// delivered to it as the record's `remove`.
    pub moved_out: IntCounter,
    /// `gateway_streams_turned_away_total{reason}`: stream requests answered with "retry"
    /// (`200`, a `retry:` hint, end) because they could not be served right now:
    /// `redis` (unreachable), `subscribe-timeout`, `full` (`max_connections`),
    /// `draining`, `read-failed`.
    pub turned_away: IntCounterVec,
    /// `gateway_redis_cut_off`: 1 while this pod cannot reach Redis and a peer can.
    pub cut_off: IntGauge,
    /// `gateway_redis_fleet_outage`: 1 while neither this pod nor any peer reaches Redis.
    pub fleet_outage: IntGauge,
    /// `gateway_partition_stream_ends_total`: times this pod, cut off alone for longer
    /// than `partition_timeout`, ended its streams so their clients resume elsewhere.
    pub partition_evictions: IntCounter,
    /// `gateway_publish_to_deliver_seconds`: from the event's stream id (Redis's clock at
    /// publish) to the moment its frame is handed to a client's connection.
    pub latency: Histogram,
}

impl Metrics {
    /// Creates and registers every series in a fresh registry.
    ///
    /// # Errors
    /// Only on a programming error (duplicate or invalid names).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let connections = IntGaugeVec::new(
            Opts::new("gateway_sse_connections", "SSE streams open now."),
            &["endpoint"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        let connections_total = IntCounterVec::new(
            Opts::new("gateway_sse_connections_total", "SSE streams opened."),
            &["endpoint"],
        )?;
        registry.register(Box::new(connections_total.clone()))?;
        let resets = IntCounterVec::new(
            Opts::new("gateway_resets_total", "Clients told history was lost."),
            &["reason"],
        )?;
        registry.register(Box::new(resets.clone()))?;
        let turned_away = IntCounterVec::new(
            Opts::new(
                "gateway_streams_turned_away_total",
                "Stream requests told to retry because they could not be served now.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(turned_away.clone()))?;
        let subscription_batches = HistogramVec::new(
            HistogramOpts::new(
                "gateway_subscription_batch_seconds",
                "One SUBSCRIBE or UNSUBSCRIBE batch of topics, from sent to confirmed.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )?;
        registry.register(Box::new(subscription_batches.clone()))?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_publish_to_deliver_seconds",
                "From publish (stream id time) to delivery to a client connection.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            connections,
            connections_total,
            delivered: counter(
                "gateway_events_delivered_total",
                "Change events delivered to clients.",
            )?,
            replayed: counter(
                "gateway_events_replayed_total",
                "Change events delivered from the stream (resume, catch-up).",
            )?,
            resets,
            catchups: counter(
                "gateway_slow_client_catchups_total",
                "Clients behind live, caught up from the stream.",
            )?,
            gap_refills: counter(
                "gateway_gap_refills_total",
                "Missed live events refilled from the stream.",
            )?,
            slow_disconnects: counter(
                "gateway_slow_client_disconnects_total",
                "Connections dropped because writes stalled.",
            )?,
            redis_reconnects: counter(
                "gateway_redis_reconnects_total",
                "Redis subscription connection losses.",
            )?,
            subscription_up: gauge(
                "gateway_redis_subscription_up",
                "1 while the Redis subscription is confirmed.",
            )?,
            subscribed_topics: gauge("gateway_subscribed_topics", "Topics subscribed in Redis.")?,
            subscription_batches,
            pubsub_dropped: counter(
                "gateway_pubsub_dropped_total",
                "Pub/sub messages dropped on a full reader queue.",
            )?,
            snapshot_pages: counter(
                "gateway_snapshot_pages_total",
                "In-band snapshot pages sent (snapshot=true).",
            )?,
            snapshot_records: counter(
                "gateway_snapshot_records_total",
                "Records sent in in-band snapshot pages.",
            )?,
            moved_out: counter(
                "gateway_move_outs_total",
                "Updates that took a record out of a client's filter, sent as its remove.",
            )?,
            turned_away,
            cut_off: gauge(
                "gateway_redis_cut_off",
                "1 while this pod cannot reach Redis and a peer can.",
            )?,
            fleet_outage: gauge(
                "gateway_redis_fleet_outage",
                "1 while no gateway asked reaches Redis.",
            )?,
            partition_evictions: counter(
                "gateway_partition_stream_ends_total",
                "Times this pod ended its streams after being cut off from Redis alone.",
            )?,
            latency,
            registry,
        })
    }

    /// Counts one subscription batch of `op` (`subscribe`, `unsubscribe`) that took `took`.
    pub fn subscription_batch(&self, op: &str, took: Duration) {
        self.subscription_batches
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    /// Records the latency of delivering `id` now.
    pub fn observe_delivery(&self, id: EventId) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let published = Duration::from_millis(id.ms);
        // Clocks of two machines may disagree a little; never record a negative latency.
        self.latency
            .observe(now.saturating_sub(published).as_secs_f64());
    }
}
