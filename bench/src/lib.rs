//! The benchmarks and the load generator, and what only they use.
//!
//! - [`load`]: release `gateway` (and `publisher`) processes, a lean SSE client over a
//!   plain `TcpStream`, a latency histogram, `/proc` readings and report helpers.
//! - [`peers`]: Nchan and Centrifugo child processes for side-by-side load runs.
//!
//! The binaries (`src/bin/`): `loadgen` (`scripts/bench-load`, `scripts/bench-peers`),
//! `latency_bench`, `publish_bench`, `resume_bench`, `snapshot_bench` and
//! `cluster_pubsub_bench`, each run by the `scripts/bench-*` of that name; results and how
//! to read them: docs/BENCHMARKS.md.
//!
//! Redis servers, clusters and the in-process publisher come from the system-test harness
//! ([`system_tests`]); the harness does not depend on this crate, so a change here never
//! rebuilds or breaks the system tests.

pub mod load;
pub mod peers;
