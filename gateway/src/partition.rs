//! What a pod does when it cannot reach Redis: tell a partition of this pod alone from an
//! outage of the whole fleet, and act on the difference.
//!
//! The two look the same from inside the pod (commands time out or are refused) and call
//! for opposite answers:
//!
//! - **Cut off alone** (a dropped route, a dead NAT entry, a frozen node), while other
//!   pods serve: this pod's clients hear nothing while the others' get every event. The
//!   pod turns not ready, so the Service stops sending it new streams, and once it has
//!   been cut off for longer than `partition_timeout` it ends its streams, each at a
//!   random moment of the drain window, so their clients resume with `Last-Event-ID` on a
//!   pod that can serve them.
//! - **The whole fleet** cannot reach Redis (Redis is down, failing over, or its network
//!   is): every pod is in the same place, so moving clients gains nothing and costs a
//!   reconnect storm, and if every pod turned unready at once the Service would have no
//!   endpoints and the ingress itself would answer 503, which ends EventSource for good.
//!   So the pods stay ready, keep their streams (which refill what they missed once Redis
//!   is back), and tell new streams to retry (see [`crate::http`]).
//!
//! The pod tells them apart by asking its peers (`peers`: the other gateways, e.g. a
//! headless Service name): a peer answering `GET /readyz/redis` with 200 reaches Redis, so
//! this pod is cut off alone. No peer answering 200 (or no peers configured: a lone pod is
//! its whole fleet) is a fleet-wide outage. Peers are asked only while this pod cannot
//! reach Redis, once per [`CHECK_INTERVAL`]. A pod cut off from its peers as well as from
//! Redis takes it for a fleet outage and keeps its clients: if its clients still reach it
//! while it reaches nothing else, that is the one case this cannot tell (docs/OPERATIONS.md).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::subscription::Readiness;

/// How often a pod that cannot reach Redis asks its peers whether they can.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for a peer's answer (connecting included).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// The path a pod asks its peers: 200 when that pod reaches Redis.
pub const PEER_PATH: &str = "/readyz/redis";

/// Where this pod stands with Redis, as far as it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Redis answers this pod (or no verdict is needed: it has not failed yet).
    Reachable,
    /// This pod cannot reach Redis, and a peer can.
    Alone,
    /// This pod cannot reach Redis, and no peer can either.
    Fleet,
}

impl Reach {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Alone,
            2 => Self::Fleet,
            _ => Self::Reachable,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Reachable => 0,
            Self::Alone => 1,
            Self::Fleet => 2,
        }
    }
}

/// The pod's verdict on a lost Redis, and the token its streams end on. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Partition {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    reach: AtomicU8,
    shutdown: CancellationToken,
    /// What streams opened now end on: a child of `shutdown`, cancelled (and replaced by a
    /// fresh one) when this pod, cut off alone for too long, ends its streams.
    ends: Mutex<CancellationToken>,
}

impl Partition {
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                reach: AtomicU8::new(Reach::Reachable.as_u8()),
                shutdown: shutdown.clone(),
                ends: Mutex::new(shutdown.child_token()),
            }),
        }
    }

    /// The last verdict.
    pub fn reach(&self) -> Reach {
        Reach::from_u8(self.inner.reach.load(Ordering::SeqCst))
    }

    fn set_reach(&self, reach: Reach) {
        self.inner.reach.store(reach.as_u8(), Ordering::SeqCst);
    }

    fn ends(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        // A token; a panic elsewhere must not stop streams from opening.
        self.inner
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token a stream opened now ends on (spread over the drain window): the pod's
    /// shutdown, or this pod ending its streams after being cut off alone.
    pub fn stream_end(&self) -> CancellationToken {
        self.ends().clone()
    }

    /// Ends every stream opened so far (each at a random moment of the drain window);
    /// streams opened from now on get a fresh token.
    fn end_streams(&self) {
        let mut ends = self.ends();
        ends.cancel();
        *ends = self.inner.shutdown.child_token();
    }
}

/// Watches `readiness` until `shutdown`: while this pod cannot reach Redis, asks `peers`
/// (each `host:port`; a name resolving to several addresses is one peer per address)
/// every [`CHECK_INTERVAL`], keeps the verdict in `partition`, and ends the pod's streams
/// once it has been cut off alone for `bound`.
pub async fn watch(
    partition: Partition,
    readiness: Readiness,
    peers: Vec<String>,
    bound: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when this pod has been cut off while a peer was serving, and whether its
    // streams were ended for it.
    let mut alone_since: Option<Instant> = None;
    let mut ended = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reach = if readiness.unreachable() {
            if any_peer_reaches_redis(&peers).await {
                Reach::Alone
            } else {
                Reach::Fleet
            }
        } else {
            Reach::Reachable
        };
        if reach != partition.reach() {
            match reach {
                Reach::Alone => tracing::warn!(
                    partition_timeout_ms = millis(bound),
                    "redis unreachable from this pod while a peer reaches it: not ready; streams end if it lasts"
                ),
                Reach::Fleet => tracing::warn!(
                    "redis unreachable from every gateway asked: staying ready, keeping streams, telling new ones to retry"
                ),
                Reach::Reachable => tracing::info!("redis reachable again"),
            }
            partition.set_reach(reach);
        }
        metrics.cut_off.set(i64::from(reach == Reach::Alone));
        metrics.fleet_outage.set(i64::from(reach == Reach::Fleet));
        if reach != Reach::Alone {
            alone_since = None;
            ended = false;
            continue;
        }
        let since = *alone_since.get_or_insert_with(Instant::now);
        // Past the bound, every tick ends whatever opened since (a stream that raced the
        // verdict); the first time is the one logged and counted.
        if since.elapsed() >= bound {
            if !ended {
                tracing::warn!(
                    cut_off_ms = millis(since.elapsed()),
                    "cut off from redis while a peer serves: ending streams so their clients resume elsewhere"
                );
                metrics.partition_evictions.inc();
                ended = true;
            }
            partition.end_streams();
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether any address of any of `peers` answers [`PEER_PATH`] with 200 within
/// [`PEER_TIMEOUT`]. This pod itself may be among them: it answers 503.
async fn any_peer_reaches_redis(peers: &[String]) -> bool {
    if peers.is_empty() {
        return false;
    }
    let ask_all = async {
        let mut asks = FuturesUnordered::new();
        for peer in peers {
            match tokio::net::lookup_host(peer.as_str()).await {
                Ok(addrs) => asks.extend(addrs.map(peer_reaches_redis)),
                Err(e) => tracing::debug!(%peer, error = %e, "peer name does not resolve"),
            }
        }
        while let Some(reaches) = asks.next().await {
            if reaches {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(PEER_TIMEOUT, ask_all)
        .await
        .unwrap_or(false)
}

/// One peer's answer to `GET /readyz/redis`: true on a 200.
async fn peer_reaches_redis(addr: std::net::SocketAddr) -> bool {
    let ask = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request =
            format!("GET {PEER_PATH} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut status = [0_u8; 12];
        stream.read_exact(&mut status).await?;
        Ok::<bool, std::io::Error>(&status == b"HTTP/1.1 200")
    };
    matches!(tokio::time::timeout(PEER_TIMEOUT, ask).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ending_streams_cancels_the_old_token_and_hands_out_a_fresh_one() {
        let shutdown = CancellationToken::new();
        let partition = Partition::new(&shutdown);
        let before = partition.stream_end();
        partition.end_streams();
        assert!(before.is_cancelled());
        let after = partition.stream_end();
        assert!(!after.is_cancelled());
        shutdown.cancel();
        assert!(after.is_cancelled(), "the shutdown ends every stream");
    }

    #[tokio::test]
    async fn a_peer_that_answers_200_reaches_redis_others_do_not() {
        let serve = |status: &'static str| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let mut buf = [0_u8; 256];
                    let _ = conn.read(&mut buf).await;
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    let _ = conn.write_all(answer.as_bytes()).await;
                }
            });
            addr.to_string()
        };
        let up = serve("200 OK").await;
        let down = serve("503 Service Unavailable").await;
        // A port nobody listens on.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(!any_peer_reaches_redis(&[]).await);
        assert!(!any_peer_reaches_redis(&[down.clone(), closed.clone()]).await);
        assert!(any_peer_reaches_redis(&[down, closed, up]).await);
    }
}
