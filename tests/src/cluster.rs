//! [`RedisCluster`]: a real Redis Cluster of 3 masters and 3 replicas, from six
//! `redis-server` children on free loopback ports, for the cluster-mode scenarios.
//!
//! Every node runs with `--cluster-node-timeout` of one second, so when a master is
//! killed its replica notices and promotes itself within a few seconds, with no
//! `CLUSTER FAILOVER` from the test. Nothing here waits on time: each step polls the
//! nodes' own view (`CLUSTER INFO`, `CLUSTER NODES`) until it holds, with a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::process::Command;

use crate::redis::{RedisChild, redis_server_binary, start_redis};
use crate::{STEP, free_port, poll_until, within};

/// Masters in the cluster (each has one replica).
pub const MASTERS: usize = 3;
/// `cluster-node-timeout`: how long a master may be unreachable before its replica takes
/// over. Low so a failover test takes seconds.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the cluster may take to form, or to recover from a killed master.
pub const CONVERGE: Duration = Duration::from_secs(30);
/// Number of hash slots in Redis Cluster.
pub const SLOTS: u16 = 16384;

/// One `redis-server` of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    /// SIGSTOPped: alive but not answering, so left out of every query.
    stopped: bool,
    process: Option<RedisChild>,
}

impl Node {
    async fn spawn(port: u16, dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(redis_server_binary());
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no", "--save", ""])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(format!("nodes-{port}.conf"))
            .arg("--cluster-node-timeout")
            .arg(NODE_TIMEOUT.as_millis().to_string())
            .args(["--appendonly", "yes"])
            // Each node in its own directory: the AOF directory name is fixed.
            .arg("--dir")
            .arg(&dir)
            .args(["--loglevel", "notice"]);
        Ok(Self {
            port,
            stopped: false,
            process: Some(start_redis(cmd, port).await?),
        })
    }

    fn alive(&self) -> bool {
        self.process.is_some() && !self.stopped
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(RedisChild::pid)
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        match self.process.take() {
            Some(process) => process.kill().await,
            None => Ok(()),
        }
    }
}

/// One line of `CLUSTER NODES`, the parts the harness uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Flagged `fail` or `fail?` by the node that answered.
    pub failing: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// Inclusive slot ranges served (masters only).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    }
}

/// Parses `CLUSTER NODES` output.
///
/// # Errors
/// If a line does not have the documented shape.
pub fn parse_cluster_nodes(text: &str) -> anyhow::Result<Vec<ClusterNode>> {
    let mut nodes = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(fields.len() >= 8, "CLUSTER NODES line: {line:?}");
        // `ip:port@cport[,hostname]`
        let port = fields[1]
            .split('@')
            .next()
            .and_then(|addr| addr.rsplit(':').next())
            .context("address")?
            .parse()?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let mut slots = Vec::new();
        for range in &fields[8..] {
            if range.starts_with('[') {
                continue; // a slot being imported or migrated
            }
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            slots.push((lo.parse()?, hi.parse()?));
        }
        nodes.push(ClusterNode {
            id: fields[0].to_owned(),
            port,
            master: flags.contains(&"master"),
            failing: flags.iter().any(|f| f.starts_with("fail")),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
        });
    }
    Ok(nodes)
}

/// A Redis Cluster of [`MASTERS`] masters, each with one replica. Killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster with `redis-cli --cluster create`, and waits
    /// until every node reports `cluster_state:ok` with all slots covered and every
    /// replica is in sync with its master.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for _ in 0..MASTERS * 2 {
            nodes.push(spawn_on_free_port(dir.path()).await?);
        }
        let cluster = Self { nodes, _dir: dir };
        cluster.create().await?;
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    async fn create(&self) -> anyhow::Result<()> {
        let mut cmd = Command::new(redis_cli_binary());
        cmd.args(["--cluster", "create"]);
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(CONVERGE, cmd.output())
            .await
            .context("redis-cli --cluster create timed out")??;
        ensure!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Waits until every live node sees the cluster as ok with all slots served, agrees
    /// on one master per shard, and each replica's link to its master is up.
    pub async fn wait_healthy(&self) -> anyhow::Result<()> {
        poll_until("redis cluster healthy", CONVERGE, || async {
            self.healthy().await.ok().filter(|ok| *ok)
        })
        .await
        .map(|_| ())
    }

    async fn healthy(&self) -> anyhow::Result<bool> {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.alive()).collect();
        for node in &live {
            let info = node_command(node.port, redis::cmd("CLUSTER").arg("INFO")).await?;
            let ok = info.contains("cluster_state:ok")
                && info.contains(&format!("cluster_slots_ok:{SLOTS}"))
                && info.contains(&format!("cluster_slots_assigned:{SLOTS}"));
            if !ok {
                return Ok(false);
            }
            let view = self.nodes_seen_by(node.port).await?;
            let masters = view.iter().filter(|n| n.master && !n.failing).count();
            let serving = view.iter().filter(|n| !n.slots.is_empty()).count();
            if masters != MASTERS || serving != MASTERS {
                return Ok(false);
            }
            let me = view
                .iter()
                .find(|n| n.port == node.port)
                .context("myself")?;
            if !me.master {
                let replication =
                    node_command(node.port, redis::cmd("INFO").arg("replication")).await?;
                if !replication.contains("master_link_status:up") {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// `CLUSTER NODES` as node `port` sees it.
    pub async fn nodes_seen_by(&self, port: u16) -> anyhow::Result<Vec<ClusterNode>> {
        parse_cluster_nodes(&node_command(port, redis::cmd("CLUSTER").arg("NODES")).await?)
    }

    fn any_live_port(&self) -> anyhow::Result<u16> {
        self.nodes
            .iter()
            .find(|n| n.alive())
            .map(|n| n.port)
            .context("no live node")
    }

    /// The cluster as a live node sees it.
    pub async fn topology(&self) -> anyhow::Result<Vec<ClusterNode>> {
        self.nodes_seen_by(self.any_live_port()?).await
    }

    /// Seed URLs of every node started (`redis://127.0.0.1:port`), in start order.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The ports of every node started, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Makes every node leave the address out of its slot map (`CLUSTER SLOTS` answers
    /// with no endpoint, `cluster-preferred-endpoint-type unknown-endpoint`), so a client
    /// reaches each node at the address it reached its seed by, with the node's port.
    /// With proxies on another loopback address and the nodes' ports, one client can be
    /// put behind them while the others connect directly. (Redirects then name no host
    /// either: do not move slots while a client is behind proxies.)
    pub async fn answer_with_unknown_endpoints(&self) -> anyhow::Result<()> {
        for node in self.nodes.iter().filter(|n| n.alive()) {
            let mut set = redis::cmd("CONFIG");
            set.arg("SET")
                .arg("cluster-preferred-endpoint-type")
                .arg("unknown-endpoint");
            node_command(node.port, &mut set).await?;
        }
        Ok(())
    }

    /// The seed list as `GATEWAY_REDIS_CLUSTER` / `PUBLISHER_REDIS_CLUSTER` take it.
    pub fn seed_list(&self) -> String {
        self.seed_urls().join(",")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn keyslot(&self, key: &str) -> anyhow::Result<u16> {
        let port = self.any_live_port()?;
        let mut conn = node_connection(port).await?;
        let slot: u16 = within(
            "CLUSTER KEYSLOT",
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut conn),
        )
        .await??;
        Ok(slot)
    }

    /// Index (0..MASTERS) of the shard serving `slot`, by the order of the shards' first
    /// slot. Stable across a failover: the promoted replica serves the same slots.
    pub async fn shard_of_slot(&self, slot: u16) -> anyhow::Result<usize> {
        let mut firsts: Vec<u16> = self
            .topology()
            .await?
            .iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .filter_map(|n| n.slots.iter().map(|(lo, _)| *lo).min())
            .collect();
        firsts.sort_unstable();
        let owner = self
            .topology()
            .await?
            .into_iter()
            .find(|n| n.master && n.serves(slot))
            .with_context(|| format!("no master serves slot {slot}"))?;
        let first = owner
            .slots
            .iter()
            .map(|(lo, _)| *lo)
            .min()
            .context("slots")?;
        firsts
            .iter()
            .position(|f| *f == first)
            .context("shard index")
    }

    /// Topic names `{prefix}{n}` whose keys land on each shard: `per_shard` names for
    /// every one of the [`MASTERS`] shards (the slot of `cs:{T}:stream`, which every key
    /// and the channel of topic `T` share).
    pub async fn topics_on_each_shard(
        &self,
        prefix: &str,
        per_shard: usize,
    ) -> anyhow::Result<Vec<Vec<String>>> {
        let mut shards = vec![Vec::new(); MASTERS];
        for n in 0.. {
            if shards.iter().all(|s| s.len() >= per_shard) {
                break;
            }
            ensure!(n < 10_000, "no topic spread found");
            let name = format!("{prefix}{n}");
            let slot = self.keyslot(&format!("cs:{{{name}}}:stream")).await?;
            let shard = self.shard_of_slot(slot).await?;
            if shards[shard].len() < per_shard {
                shards[shard].push(name);
            }
        }
        Ok(shards)
    }

    /// SIGKILLs the master serving `slot`, then waits until its replica has taken over
    /// (every live node sees a healthy cluster with the replica as the slot's master).
    /// Returns the killed port and the new master's port.
    pub async fn kill_master_of(&mut self, slot: u16) -> anyhow::Result<(u16, u16)> {
        let (killed, replica) = self.kill_master(slot).await?;
        self.wait_failover(slot, killed, replica).await?;
        Ok((killed, replica))
    }

    /// SIGKILLs the master serving `slot` and returns its port and its replica's, without
    /// waiting for anything (see [`Self::wait_failover`]).
    pub async fn kill_master(&mut self, slot: u16) -> anyhow::Result<(u16, u16)> {
        let topology = self.topology().await?;
        let master = topology
            .iter()
            .find(|n| n.master && n.serves(slot))
            .with_context(|| format!("no master serves slot {slot}"))?
            .clone();
        let replica = topology
            .iter()
            .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .with_context(|| format!("master {} has no replica", master.port))?
            .port;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == master.port)
            .context("master is not one of ours")?;
        node.kill().await?;
        Ok((master.port, replica))
    }

    /// Waits until `replica` serves `slot` as a master and the cluster is healthy without
    /// the `killed` node.
    pub async fn wait_failover(&self, slot: u16, killed: u16, replica: u16) -> anyhow::Result<()> {
        poll_until("replica promoted", CONVERGE, || async {
            let view = self.nodes_seen_by(replica).await.ok()?;
            view.iter()
                .any(|n| n.port == replica && n.master && n.serves(slot))
                .then_some(())
        })
        .await?;
        self.wait_healthy_without(killed).await
    }

    /// Cuts the replica of the master serving `slot` off its replication stream: SIGSTOP
    /// it (so it cannot reconnect), then `CLIENT KILL TYPE replica` on the master. The
    /// master goes on acknowledging writes (replication is asynchronous) that the replica
    /// will never get. Kill the master, then [`Self::resume`] the replica, and it takes
    /// over without them: acknowledged events that Redis itself lost. Returns the
    /// replica's port.
    pub async fn cut_off_replica_of(&mut self, slot: u16) -> anyhow::Result<u16> {
        let topology = self.topology().await?;
        let master = topology
            .iter()
            .find(|n| n.master && n.serves(slot))
            .with_context(|| format!("no master serves slot {slot}"))?;
        let replica = topology
            .iter()
            .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .context("no replica")?
            .port;
        self.signal(replica, "-STOP").await?;
        let killed: u64 = node_query(
            master.port,
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"),
        )
        .await?;
        ensure!(killed == 1, "expected one replica link, killed {killed}");
        Ok(replica)
    }

    /// SIGSTOPs node `port`: it keeps its connections open but answers nothing.
    pub async fn stop_node(&mut self, port: u16) -> anyhow::Result<()> {
        self.signal(port, "-STOP").await
    }

    /// SIGCONTs a node stopped by [`Self::cut_off_replica_of`].
    pub async fn resume(&mut self, port: u16) -> anyhow::Result<()> {
        self.signal(port, "-CONT").await
    }

    async fn signal(&mut self, port: u16, signal: &str) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("no such node")?;
        let pid = node.pid().context("node is not running")?;
        node.stopped = signal == "-STOP";
        let status = within(
            "kill",
            Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .status(),
        )
        .await??;
        ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// Moves `slot` to the master of shard `to_shard` the way `redis-cli --cluster
    /// reshard` does, keys and all: `SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE` of every
    /// key in the slot, then `SETSLOT NODE` on both ends and every other master. Writes
    /// may go on meanwhile (they get `ASK`/`TRYAGAIN` for the moment the keys move). Waits
    /// until every node agrees on the new owner.
    pub async fn migrate_slot(&self, slot: u16, to_shard: usize) -> anyhow::Result<()> {
        let topology = self.topology().await?;
        let source = topology
            .iter()
            .find(|n| n.master && n.serves(slot))
            .with_context(|| format!("no master serves slot {slot}"))?
            .clone();
        let target_port = *self.masters().await?.get(&to_shard).context("shard")?;
        let target = topology
            .iter()
            .find(|n| n.port == target_port)
            .context("target node")?
            .clone();
        ensure!(source.port != target.port, "slot {slot} is already there");
        let setslot = |port: u16, state: &'static str, id: String| async move {
            node_query::<String>(
                port,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(id),
            )
            .await
        };
        setslot(target.port, "IMPORTING", source.id.clone()).await?;
        setslot(source.port, "MIGRATING", target.id.clone()).await?;
        loop {
            let keys: Vec<String> = node_query(
                source.port,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(1000),
            )
            .await?;
            if keys.is_empty() {
                break;
            }
            // One MIGRATE for every key: a topic's keys move together.
            let _: String = node_query(
                source.port,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(target.port)
                    .arg("")
                    .arg(0)
                    .arg(STEP.as_millis().to_string())
                    .arg("KEYS")
                    .arg(&keys),
            )
            .await?;
        }
        setslot(target.port, "NODE", target.id.clone()).await?;
        setslot(source.port, "NODE", target.id.clone()).await?;
        for node in topology.iter().filter(|n| n.master && !n.failing) {
            if node.port != source.port && node.port != target.port {
                setslot(node.port, "NODE", target.id.clone()).await?;
            }
        }
        poll_until("slot migrated everywhere", CONVERGE, || async {
            for node in self.nodes.iter().filter(|n| n.alive()) {
                let view = self.nodes_seen_by(node.port).await.ok()?;
                let owner = view.iter().find(|n| n.master && n.serves(slot))?;
                if owner.port != target.port {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// Like [`Self::wait_healthy`], after a kill: live nodes agree, the killed one is
    /// flagged failing and serves nothing.
    async fn wait_healthy_without(&self, killed: u16) -> anyhow::Result<()> {
        poll_until("cluster healthy after failover", CONVERGE, || async {
            for node in self.nodes.iter().filter(|n| n.alive()) {
                let info = node_command(node.port, redis::cmd("CLUSTER").arg("INFO"))
                    .await
                    .ok()?;
                if !(info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_slots_ok:{SLOTS}")))
                {
                    return None;
                }
                let view = self.nodes_seen_by(node.port).await.ok()?;
                let serving: Vec<&ClusterNode> = view
                    .iter()
                    .filter(|n| n.master && !n.slots.is_empty())
                    .collect();
                if serving.len() != MASTERS || serving.iter().any(|n| n.port == killed) {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// Each live node's port and process id, for `/proc` readings (the benchmarks' CPU
    /// time per node).
    pub fn pids(&self) -> anyhow::Result<Vec<(u16, u32)>> {
        self.nodes
            .iter()
            .filter(|n| n.alive())
            .map(|node| Ok((node.port, node.pid().context("pid")?)))
            .collect()
    }

    /// A cluster connection for checking what the cluster holds (each reply may take up
    /// to [`STEP`]).
    pub async fn connection(&self) -> anyhow::Result<redis::cluster_async::ClusterConnection> {
        // Connecting waits for every seed; a short connection timeout keeps a stopped
        // node from holding up the rest.
        let client = redis::cluster::ClusterClientBuilder::new(self.seed_urls())
            .response_timeout(STEP)
            .connection_timeout(Duration::from_secs(1))
            .build()?;
        within("connect to the cluster", client.get_async_connection())
            .await?
            .context("cluster connect")
    }

    /// The masters' ports by shard index (see [`Self::shard_of_slot`]).
    pub async fn masters(&self) -> anyhow::Result<BTreeMap<usize, u16>> {
        let mut out = BTreeMap::new();
        for node in self.topology().await? {
            if node.master && !node.slots.is_empty() {
                out.insert(self.shard_of_slot(node.slots[0].0).await?, node.port);
            }
        }
        Ok(out)
    }
}

/// Starts a node on a free port, retrying if the port is taken between probe and bind.
async fn spawn_on_free_port(dir: &Path) -> anyhow::Result<Node> {
    let mut last_error = None;
    for _ in 0..5 {
        let port = free_port()?;
        match Node::spawn(port, dir.join(port.to_string())).await {
            Ok(node) => return Ok(node),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
}

/// `redis-cli` from `REDIS_CLI` or the `PATH`.
fn redis_cli_binary() -> PathBuf {
    std::env::var_os("REDIS_CLI").map_or_else(|| PathBuf::from("redis-cli"), PathBuf::from)
}

/// A plain (non-cluster) connection to one node.
async fn node_connection(port: u16) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(STEP))
        .set_connection_timeout(Some(STEP));
    within(
        "connect to a cluster node",
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await?
    .context("connect")
}

/// Runs `cmd` on node `port` and reads the reply as text.
async fn node_command(port: u16, cmd: &mut redis::Cmd) -> anyhow::Result<String> {
    node_query(port, cmd).await
}

/// Runs `cmd` on node `port`.
async fn node_query<T: redis::FromRedisValue>(
    port: u16,
    cmd: &mut redis::Cmd,
) -> anyhow::Result<T> {
    let mut conn = node_connection(port).await?;
    Ok(within("cluster node command", cmd.query_async(&mut conn)).await??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 7000 [5461->-67ed]
dead 127.0.0.1:30003@40003 master,fail - 1 1 3 disconnected
";
        let nodes = parse_cluster_nodes(text).unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].master_id.as_deref(), Some("e7d1"));
        assert!(!nodes[0].master);
        assert_eq!(nodes[1].port, 30002);
        assert_eq!(nodes[2].slots, vec![(0, 5460), (7000, 7000)]);
        assert!(nodes[2].serves(7000) && !nodes[2].serves(7001));
        assert!(nodes[3].failing && nodes[3].slots.is_empty());
    }
}
