//! [`Blackhole`]: a TCP proxy on loopback that can go silent, for the quiet network fault:
//! a partition that sends no FIN and no RST (a dropped route, a dead NAT entry, a frozen
//! node). While partitioned it forwards nothing either way but keeps every connection
//! open, and accepts new ones that forward nothing. After [`Blackhole::heal`], new
//! connections work and every connection that existed before or during the partition
//! stays dead, as connections do whose peer's state was lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A proxy from `addr` to a target. Stops on drop (its connections end with it).
#[derive(Debug)]
pub struct Blackhole {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    partitioned: AtomicBool,
    /// Bumped when a partition starts and when it ends: a connection accepted under an
    /// older generation is dead for good.
    generation: AtomicU64,
}

impl State {
    fn alive(&self, born: u64) -> bool {
        !self.partitioned.load(Ordering::SeqCst) && self.generation.load(Ordering::SeqCst) == born
    }
}

impl Blackhole {
    /// A proxy on `127.0.0.1:0` to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, target).await
    }

    /// A proxy on `listen` (e.g. another loopback address with the target's port) to
    /// `target`.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the proxy on {listen}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept(listener, target, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// From now on nothing is forwarded, on any connection.
    pub fn partition(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        self.state.partitioned.store(true, Ordering::SeqCst);
    }

    /// New connections work again; every older one stays silent.
    pub fn heal(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        self.state.partitioned.store(false, Ordering::SeqCst);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, state: Arc<State>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let born = state.generation.load(Ordering::SeqCst);
        let state = state.clone();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            pipe(client, server, born, &state).await;
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
}

/// Copies both ways while the connection is alive; once dead, reads and drops what
/// arrives (so neither side sees a close or a full buffer) until either side closes.
async fn pipe(mut client: TcpStream, mut server: TcpStream, born: u64, state: &State) {
    let (mut from_client, mut to_client) = client.split();
    let (mut from_server, mut to_server) = server.split();
    let mut up = vec![0_u8; 16 * 1024];
    let mut down = vec![0_u8; 16 * 1024];
    loop {
        tokio::select! {
            read = from_client.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if state.alive(born) && to_server.write_all(&up[..n]).await.is_err() {
                    return;
                },
            },
            read = from_server.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if state.alive(born) && to_client.write_all(&down[..n]).await.is_err() {
                    return;
                },
            },
        }
    }
}
