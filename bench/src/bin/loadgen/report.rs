//! One step's results, the tables printed as steps finish, the side-by-side comparison
//! (ours / peer) and the SVG plot.

use std::io::Write as _;

use serde_json::{Value, json};

use crate::{Target, Writes};

/// One step: a target, a client count and a rate, in one round.
#[derive(Debug, serde::Serialize)]
pub struct Step {
    pub round: u32,
    pub target: Target,
    pub clients: usize,
    /// Topics the clients spread over (event `seq` to topic `(seq - 1) % topics`).
    pub topics: usize,
    pub rate: u32,
    /// Deliveries per second offered: clients x rate / topics.
    pub offered_per_second: u64,
    pub held: u64,
    pub complete: u64,
    pub published: u64,
    /// Events published per second achieved: the publisher waits for each publish to be
    /// accepted before the next (so order is defined), so a server whose publish API slows
    /// under load is offered less than `rate`.
    pub published_per_second: f64,
    pub deliveries: u64,
    /// Deliveries over the time from the first publish to the last arrival.
    pub deliveries_per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub bytes: u64,
    pub errors: u64,
    pub disordered: u64,
    /// Peer messages that were not events (Centrifugo's connect reply, pings).
    pub other_messages: u64,
    pub rss_idle_kib: u64,
    pub rss_connected_kib: u64,
    /// Server RSS delta (all its processes) per held connection.
    pub kib_per_connection: f64,
    /// The same with PSS: shared pages counted once (matters for nginx's workers).
    pub pss_kib_per_connection: f64,
    /// CPU of the server's processes while publishing and draining.
    pub server_cpu_seconds: f64,
    pub redis_cpu_seconds: f64,
    /// CPU of the client workers and this process (the publisher) over the same time.
    pub clients_cpu_seconds: f64,
    /// The whole machine's busy CPU over the same time.
    pub machine_busy_seconds: f64,
    /// Busy CPU that was none of the above: other jobs on the machine (noise).
    pub other_cpu_seconds: f64,
    /// (server + Redis) CPU per delivery, microseconds.
    pub cpu_us_per_delivery: Option<f64>,
    /// With `--filter` or `--writes toggles` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<Variant>,
}

/// A step with a filter or toggling writes: what each client was owed and what it cost.
#[derive(Debug, serde::Serialize)]
pub struct Variant {
    pub writes: Writes,
    /// The `where` every client's stream was opened with.
    pub filter: Option<String>,
    /// Events a client was owed (the filter applied as the gateway applies it).
    pub owed_per_client: u64,
    /// Of those, move-outs (`remove`s).
    pub owed_move_outs_per_client: u64,
    /// Move-outs delivered, all clients.
    pub moved_out: u64,
    /// Deliveries with a latency: those carrying `t` (a move-out carries no data).
    pub latency_samples: u64,
    /// The gateways' CPU alone per delivery, microseconds.
    pub gateway_cpu_us_per_delivery: Option<f64>,
    /// Of which in user space (the gateway's own code: filters, framing).
    pub gateway_user_us_per_delivery: Option<f64>,
    /// And in the kernel (socket writes).
    pub gateway_system_us_per_delivery: Option<f64>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

pub fn print_header() {
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "| target | clients | topics | rate/s | published/s | complete/held | deliveries | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | KiB/conn RSS | KiB/conn PSS | server CPU s | redis CPU s | CPU µs/delivery | other CPU s | errors |"
    );
    let _ = writeln!(
        out,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
}

pub fn print_step(s: &Step) {
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {:.1} | {}/{} | {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {:.1} | {} |",
        name(s.target),
        s.clients,
        s.topics,
        s.rate,
        s.published_per_second,
        s.complete,
        s.held,
        s.deliveries,
        s.deliveries_per_second,
        ms(s.p50_ms),
        ms(s.p99_ms),
        ms(s.p999_ms),
        ms(s.max_ms),
        s.kib_per_connection,
        s.pss_kib_per_connection,
        s.server_cpu_seconds,
        s.redis_cpu_seconds,
        s.cpu_us_per_delivery
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
        s.other_cpu_seconds,
        s.errors + s.disordered,
    );
}

fn name(target: Target) -> &'static str {
    match target {
        Target::Gateway => "gateway",
        Target::Nchan => "nchan",
        Target::Centrifugo => "centrifugo",
    }
}

fn ratio(ours: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (ours, peer) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn x(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

/// One (target, clients, topics, rate) over all rounds: the median of each figure.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub target: Target,
    pub clients: usize,
    pub topics: usize,
    pub rate: u32,
    pub rounds: usize,
    /// Rounds in which every client got every event exactly once, in order. The medians
    /// are over these rounds when there is one.
    pub complete_rounds: usize,
    pub deliveries_per_second: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub kib_per_connection: Option<f64>,
    pub pss_kib_per_connection: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    pub other_cpu_seconds: Option<f64>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Every client connected and got every event exactly once, in order.
fn is_complete(s: &Step) -> bool {
    s.held == s.clients as u64 && s.complete == s.held && s.errors + s.disordered == 0
}

pub fn summarize(steps: &[Step]) -> Vec<Summary> {
    let key = |s: &Step| (s.clients, s.topics, s.rate, s.target);
    let mut keys: Vec<(usize, usize, u32, Target)> = Vec::new();
    for s in steps {
        if !keys.contains(&key(s)) {
            keys.push(key(s));
        }
    }
    keys.into_iter()
        .map(|(clients, topics, rate, target)| {
            let all: Vec<&Step> = steps
                .iter()
                .filter(|s| key(s) == (clients, topics, rate, target))
                .collect();
            let complete: Vec<&Step> = all.iter().copied().filter(|s| is_complete(s)).collect();
            // Medians of the rounds that delivered everything, if any did: a round that
            // broke (a peer refusing clients) says nothing about speed or latency.
            let group = if complete.is_empty() { &all } else { &complete };
            let m = |f: &dyn Fn(&Step) -> Option<f64>| {
                median(group.iter().filter_map(|s| f(s)).collect())
            };
            Summary {
                target,
                clients,
                topics,
                rate,
                rounds: all.len(),
                complete_rounds: complete.len(),
                deliveries_per_second: m(&|s| Some(s.deliveries_per_second)),
                p50_ms: m(&|s| s.p50_ms),
                p99_ms: m(&|s| s.p99_ms),
                p999_ms: m(&|s| s.p999_ms),
                kib_per_connection: m(&|s| Some(s.kib_per_connection)),
                pss_kib_per_connection: m(&|s| Some(s.pss_kib_per_connection)),
                cpu_us_per_delivery: m(&|s| s.cpu_us_per_delivery),
                other_cpu_seconds: m(&|s| Some(s.other_cpu_seconds)),
            }
        })
        .collect()
}

fn f1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// Prints the medians over the rounds, when there was more than one.
pub fn print_summaries(summaries: &[Summary]) {
    if summaries.iter().all(|s| s.rounds < 2) {
        return;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "\nmedians over the rounds\n\n| target | clients | topics | rate/s | rounds (complete) | deliveries/s | p50 ms | p99 ms | p99.9 ms | KiB/conn RSS | KiB/conn PSS | CPU µs/delivery | other CPU s |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |",
            name(s.target),
            s.clients,
            s.topics,
            s.rate,
            s.rounds,
            s.complete_rounds,
            s.deliveries_per_second
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            f1(s.p50_ms),
            f1(s.p99_ms),
            f1(s.p999_ms),
            f1(s.kib_per_connection),
            f1(s.pss_kib_per_connection),
            s.cpu_us_per_delivery
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            f1(s.other_cpu_seconds),
        );
    }
}

/// Ours / peer (medians over the rounds) for every (clients, rate) both ran, and for the
/// highest deliveries/s each reached per client count (saturation, when several rates
/// ran). Prints both tables when there is a peer; returns them for the JSON.
pub fn compare(summaries: &[Summary]) -> Value {
    let ours: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.target == Target::Gateway)
        .collect();
    let peers: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.target != Target::Gateway)
        .collect();
    if ours.is_empty() || peers.is_empty() {
        return json!(null);
    }
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "\nours / peer (deliveries/s: above 1 is better for us; latency, memory, CPU: below 1 is)\n"
    );
    let _ = writeln!(
        out,
        "| peer | clients | topics | rate/s | deliveries/s | p50 | p99 | KiB/conn RSS | KiB/conn PSS | CPU/delivery |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut same_step = Vec::new();
    for peer in &peers {
        let Some(us) = ours
            .iter()
            .find(|s| s.clients == peer.clients && s.topics == peer.topics && s.rate == peer.rate)
        else {
            continue;
        };
        let row = json!({
            "peer": peer.target, "clients": peer.clients, "topics": peer.topics, "rate": peer.rate,
            "deliveries_per_second": ratio(us.deliveries_per_second, peer.deliveries_per_second),
            "p50": ratio(us.p50_ms, peer.p50_ms),
            "p99": ratio(us.p99_ms, peer.p99_ms),
            "kib_per_connection": ratio(us.kib_per_connection, peer.kib_per_connection),
            "pss_kib_per_connection": ratio(us.pss_kib_per_connection, peer.pss_kib_per_connection),
            "cpu_per_delivery": ratio(us.cpu_us_per_delivery, peer.cpu_us_per_delivery),
        });
        let f = |key: &str| x(row[key].as_f64());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            name(peer.target),
            peer.clients,
            peer.topics,
            peer.rate,
            f("deliveries_per_second"),
            f("p50"),
            f("p99"),
            f("kib_per_connection"),
            f("pss_kib_per_connection"),
            f("cpu_per_delivery"),
        );
        same_step.push(row);
    }

    // Saturation: the best median deliveries/s over the rates, per target and clients.
    let best = |target: Target, clients: usize, topics: usize| {
        summaries
            .iter()
            .filter(|s| s.target == target && s.clients == clients && s.topics == topics)
            .filter_map(|s| s.deliveries_per_second)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let mut saturated = Vec::new();
    let rates: std::collections::BTreeSet<u32> = summaries.iter().map(|s| s.rate).collect();
    if rates.len() > 1 {
        let _ = writeln!(
            out,
            "\nhighest deliveries/s over the rates (saturation)\n\n| peer | clients | topics | ours/s | peer/s | ours / peer |\n|---|--:|--:|--:|--:|--:|"
        );
        let mut pairs: Vec<(Target, usize, usize)> = Vec::new();
        for s in &peers {
            if !pairs.contains(&(s.target, s.clients, s.topics)) {
                pairs.push((s.target, s.clients, s.topics));
            }
        }
        for (peer, clients, topics) in pairs {
            let (a, b) = (
                best(Target::Gateway, clients, topics),
                best(peer, clients, topics),
            );
            let r = ratio(a, b);
            let _ = writeln!(
                out,
                "| {} | {clients} | {topics} | {:.0} | {:.0} | {} |",
                name(peer),
                a.unwrap_or(0.0),
                b.unwrap_or(0.0),
                x(r)
            );
            saturated.push(
                json!({ "peer": peer, "clients": clients, "topics": topics, "ours": a, "peer_best": b, "ratio": r }),
            );
        }
    }
    json!({ "same_step": same_step, "saturated": saturated })
}

/// Latency (p50, p99; left axis, ms) and deliveries/s (right axis) against connections,
/// for the first target at its first rate.
pub fn plot(steps: &[Step]) -> String {
    let steps: Vec<&Step> = steps
        .iter()
        .filter(|s| s.target == steps[0].target && s.rate == steps[0].rate)
        .collect();
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 60.0, 70.0, 20.0, 40.0);
    let x = |i: usize| left + (w - left - right) * (i as f64 + 0.5) / steps.len().max(1) as f64;
    let max_ms = steps
        .iter()
        .filter_map(|s| s.p99_ms)
        .fold(1.0_f64, f64::max);
    let max_rate = steps
        .iter()
        .map(|s| s.deliveries_per_second)
        .fold(1.0_f64, f64::max);
    let y_ms = |v: f64| top + (h - top - bottom) * (1.0 - v / max_ms);
    let y_rate = |v: f64| top + (h - top - bottom) * (1.0 - v / max_rate);
    let series = |f: &dyn Fn(&Step) -> Option<f64>, y: &dyn Fn(f64) -> f64| {
        steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| f(s).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="14">p50 / p99 publish->deliver (ms, left) and deliveries/s (right) by connections</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<text x="4" y="{top}">{max_ms:.1} ms</text><text x="{}" y="{top}">{max_rate:.0}/s</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{}"/>
<polyline fill="none" stroke="#2ca02c" stroke-width="2" stroke-dasharray="6 3" points="{}"/>
"##,
        h - bottom,
        w - right,
        h - bottom,
        w - right + 4.0,
        series(&|s| s.p50_ms, &y_ms),
        series(&|s| s.p99_ms, &y_ms),
        series(&|s| Some(s.deliveries_per_second), &y_rate),
    );
    for (i, s) in steps.iter().enumerate() {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(i),
            h - bottom + 16.0,
            s.clients
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{left}\" y=\"{}\" fill=\"#1f77b4\">p50</text><text x=\"{}\" y=\"{}\" fill=\"#d62728\">p99</text><text x=\"{}\" y=\"{}\" fill=\"#2ca02c\">deliveries/s</text>\n</svg>\n",
        h - 6.0,
        left + 40.0,
        h - 6.0,
        left + 80.0,
        h - 6.0
    ));
    svg
}
