//! Single-node mode: the embedded [`MemoryStore`]'s events feed the [`Hub`] directly.

use std::sync::Arc;

use publisher::MemoryStore;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::event::LiveEvent;
use crate::hub::Hub;

/// Forwards every event of the store to the hub until `shutdown`.
pub async fn feed(store: MemoryStore, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut events_rx = store.subscribe();
    loop {
        let received = tokio::select! {
            received = events_rx.recv() => received,
            () = shutdown.cancelled() => return,
        };
        match received {
            Ok(p) => hub.deliver(&p.topic, LiveEvent::from_envelope(&p.envelope)),
            // The feed fell behind the store: hand every topic its newest entry, whose
            // `prev` tells each client whether to refill from history.
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "embedded feed lagged; clients refill from history");
                for topic in hub.wanted() {
                    if let Some((id, fields)) = store.last_entry(&topic) {
                        hub.deliver(&topic, LiveEvent::from_entry(id, &fields));
                    }
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
