//! Every metric of the contract, registered once at start-up so dashboards see
//! zeros instead of "no data", and handles pre-built per outcome and per route
//! so the per-connection path records without a lock or an allocation.
//! The `/metrics` endpoint is served by hyper's HTTP/1 server (the HTTP
//! stack the CrowdSec client uses too).
//!
//! Two kinds of series:
//! - process-wide ones (outcomes, bans, reloads, ...) live in the
//!   `metrics-exporter-prometheus` recorder;
//! - those labelled with a route or a backend live in [`RouteMetrics`] and
//!   [`BackendMetrics`] cells held by the config snapshot in force (carried
//!   over a reload to the route and backend of the same name), and each
//!   scrape writes them from that snapshot ([`Live`]) after the recorder's
//!   output. So a scrape reports exactly the routes and backends of the
//!   config in force (the recorder cannot forget a series, so a removed
//!   backend would otherwise be exported until a restart), and values that
//!   depend on time, like `sniroute_backend_up` after a passive skip ends,
//!   are computed when scraped rather than when something last happened.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Gauge, Histogram, HistogramFn, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::forward::ByteCounters;
use crate::outcome::Outcome;

/// Latency buckets, 50 µs to 10 s: a ClientHello usually arrives within a
/// round trip (µs on a LAN, tens of ms across the internet) and a backend
/// connect is a LAN round trip, while stalls run to the hello timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the
/// same handle) and registers every metric at zero. `None` if another recorder
/// was installed first (then metrics are not exported).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            register_static();
            Some(handle)
        })
        .as_ref()
}

fn register_static() {
    describe();
    for outcome in Outcome::ALL {
        counter!("sniroute_connections_total", "outcome" => outcome.as_str()).increment(0);
    }
    for reason in Outcome::STRIKABLE {
        counter!("sniroute_strikes_total", "reason" => reason.as_str()).increment(0);
    }
    for source in ["strike", "manual", "crowdsec"] {
        counter!("sniroute_bans_total", "source" => source).increment(0);
    }
    for reason in ["expired", "manual"] {
        counter!("sniroute_unbans_total", "reason" => reason).increment(0);
    }
    for result in ["ok", "error"] {
        counter!("sniroute_config_reloads_total", "result" => result).increment(0);
    }
    // The config in force at start-up was loaded fine (else no start).
    gauge!("sniroute_config_last_reload_successful").set(1.0);
    gauge!("sniroute_banned").increment(0.0);
    gauge!("sniroute_firewall_elements").increment(0.0);
    counter!("sniroute_firewall_errors_total").increment(0);
    counter!("sniroute_firewall_syncs_total").increment(0);
    counter!("sniroute_firewall_dropped_packets_total").increment(0);
    gauge!("sniroute_crowdsec_decisions").increment(0.0);
    for result in ["ok", "error"] {
        counter!("sniroute_crowdsec_pulls_total", "result" => result).increment(0);
        counter!("sniroute_crowdsec_pushes_total", "result" => result).increment(0);
    }
    gauge!("sniroute_strike_sources").increment(0.0);
    gauge!("sniroute_rate_limit_keys").increment(0.0);
    gauge!("sniroute_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Touch the histogram so its series exists from start-up.
    let _ = histogram!("sniroute_client_hello_seconds");
}

/// `# HELP` text for every metric (promtool wants one for each).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "sniroute_connections_total",
        "Client connections by how they ended."
    );
    describe_counter!(
        "sniroute_strikes_total",
        "Strikes by the outcome that earned them."
    );
    describe_counter!("sniroute_bans_total", "New bans by source.");
    describe_gauge!("sniroute_banned", "Addresses and prefixes banned now.");
    describe_gauge!(
        "sniroute_crowdsec_decisions",
        "Remote bans (CrowdSec decisions) held now."
    );
    describe_counter!(
        "sniroute_crowdsec_pulls_total",
        "Decision pulls from the CrowdSec LAPI, by result."
    );
    describe_counter!(
        "sniroute_crowdsec_pushes_total",
        "Alerts and deletions sent to the CrowdSec LAPI, by result."
    );
    describe_counter!("sniroute_unbans_total", "Bans lifted, by reason.");
    describe_histogram!(
        "sniroute_client_hello_seconds",
        "Time from accept to a decided ClientHello."
    );
    describe_counter!(
        "sniroute_config_reloads_total",
        "Config reload attempts by result."
    );
    describe_gauge!(
        "sniroute_config_last_reload_successful",
        "1 if the last config reload was taken (or none was tried), 0 if it was refused."
    );
    describe_gauge!(
        "sniroute_max_connections",
        "limits.max_connections in force: open client connections allowed."
    );
    describe_gauge!(
        "sniroute_build_info",
        "Always 1; the version label says which build."
    );
    describe_gauge!(
        "sniroute_firewall_elements",
        "Bans held in the kernel's nftables sets now (firewall.backend = nftables)."
    );
    describe_counter!(
        "sniroute_firewall_errors_total",
        "Failed nft runs (bans stay enforced in user space meanwhile)."
    );
    describe_counter!(
        "sniroute_firewall_syncs_total",
        "Whole-table loads of the nftables table (start, repair, reload)."
    );
    describe_counter!(
        "sniroute_firewall_dropped_packets_total",
        "Packets from banned sources the kernel dropped (read every 5 s)."
    );
    describe_gauge!(
        "sniroute_strike_sources",
        "Sources with strikes inside find_time (bounded table)."
    );
    describe_gauge!(
        "sniroute_rate_limit_keys",
        "Sources the rate limiter tracks now."
    );
}

/// Handles for what every connection records.
#[derive(Clone)]
pub struct ConnMetrics {
    outcomes: [Counter; Outcome::ALL.len()],
    /// Time from accept to a decided ClientHello.
    pub client_hello_seconds: Histogram,
}

impl ConnMetrics {
    pub fn new() -> ConnMetrics {
        ConnMetrics {
            outcomes: Outcome::ALL
                .map(|o| counter!("sniroute_connections_total", "outcome" => o.as_str())),
            client_hello_seconds: histogram!("sniroute_client_hello_seconds"),
        }
    }

    /// Counts one connection that ended with `outcome`.
    pub fn ended(&self, outcome: Outcome) {
        if let Some(counter) = self.outcomes.get(outcome.index()) {
            counter.increment(1);
        }
    }
}

impl Default for ConnMetrics {
    fn default() -> Self {
        ConnMetrics::new()
    }
}

/// A counter cell the recorder does not know: read by [`Live`] at scrape.
type Cell = Arc<AtomicU64>;

fn counter_of(cell: &Cell) -> Counter {
    Counter::from_arc(Arc::clone(cell))
}

/// Handles for one route, recorded by its connections; the scrape writes
/// them with the `route` label while the route is in the config.
#[derive(Clone)]
pub struct RouteMetrics {
    pub routed: Counter,
    pub active: Gauge,
    /// `sniroute_bytes_total{direction="up"|"down"}`, fed live by the relay.
    pub bytes: ByteCounters,
    pub connect_seconds: Histogram,
    /// Connections of this route that ended `backend_error`.
    pub backend_errors: Counter,
    cells: Arc<RouteCells>,
}

/// What [`RouteMetrics`] records into.
#[derive(Default)]
struct RouteCells {
    routed: Cell,
    /// An `f64` in its bits (the gauge's storage).
    active: Cell,
    up: Cell,
    down: Cell,
    backend_errors: Cell,
    connect_seconds: Arc<Buckets>,
}

impl RouteMetrics {
    /// Fresh series for a route new to the config (all zero). A route kept
    /// by a reload keeps its handles (a clone), so its counters go on.
    pub fn new() -> RouteMetrics {
        let cells = RouteCells::default();
        RouteMetrics {
            routed: counter_of(&cells.routed),
            active: Gauge::from_arc(Arc::clone(&cells.active)),
            bytes: ByteCounters {
                up: counter_of(&cells.up),
                down: counter_of(&cells.down),
            },
            connect_seconds: Histogram::from_arc(Arc::clone(&cells.connect_seconds)),
            backend_errors: counter_of(&cells.backend_errors),
            cells: Arc::new(cells),
        }
    }
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics::new()
    }
}

/// Handles for one backend of one route, recorded by the pool; the scrape
/// writes them labelled with both (the address as written in the config).
#[derive(Clone)]
pub struct BackendMetrics {
    /// `sniroute_backend_connections_total{route,backend}`.
    pub connections: Counter,
    /// `sniroute_backend_connect_failures_total{route,backend}`.
    pub failures: Counter,
    cells: Arc<BackendCells>,
}

/// What [`BackendMetrics`] records into.
#[derive(Default)]
struct BackendCells {
    connections: Cell,
    failures: Cell,
}

impl BackendMetrics {
    /// Fresh series for a backend new to its route (zero). A backend kept by
    /// a reload keeps its handles (a clone), so its counters go on.
    pub fn new() -> BackendMetrics {
        let cells = BackendCells::default();
        BackendMetrics {
            connections: counter_of(&cells.connections),
            failures: counter_of(&cells.failures),
            cells: Arc::new(cells),
        }
    }
}

#[cfg(test)]
impl BackendMetrics {
    /// The failed connects counted so far.
    pub fn failures_so_far(&self) -> u64 {
        self.cells.failures.load(Ordering::Relaxed)
    }
}

impl Default for BackendMetrics {
    fn default() -> Self {
        BackendMetrics::new()
    }
}

/// A fixed-bucket histogram over [`LATENCY_BUCKETS`] (the recorder's
/// buckets for `_seconds`): one bucket add, one count add and one sum add
/// per value, no lock, no allocation.
#[derive(Default)]
struct Buckets {
    /// Values per bucket (not cumulative); the last is above every bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// The sum of the values, in nanoseconds.
    sum_ns: AtomicU64,
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        // `le` is inclusive: the first bound at or above the value.
        let index = LATENCY_BUCKETS.partition_point(|&bound| bound < value);
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // Saturating float-to-int: a negative value adds 0.
        self.sum_ns
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }
}

/// The series a scrape computes from the state in force, written after the
/// recorder's: each route's and each backend's of the current config, and
/// the open client connections.
pub struct Live<'a> {
    /// Client connections open now, whether or not they sent their hello
    /// (what `max_connections` limits).
    pub open_connections: usize,
    /// Every route of the config in force, by name.
    pub routes: Vec<(&'a str, &'a RouteMetrics)>,
    /// Every backend of every pool of the config in force.
    pub backends: Vec<LiveBackend<'a>>,
}

/// One backend's state at scrape time.
pub struct LiveBackend<'a> {
    pub route: &'a str,
    pub addr: SocketAddr,
    /// In service now: not taken out by health checks, not skipped after a
    /// refused client connect.
    pub up: bool,
    pub metrics: &'a BackendMetrics,
}

/// A backend's merged row: up, connections, failures. A route's
/// `backends` and `http_backends` are separate pools; an address in both
/// is one series, up only if both pools have it in service.
type BackendRow = (bool, u64, u64);

impl Live<'_> {
    /// Appends the series in the Prometheus text format.
    pub fn write(&self, out: &mut String) {
        let load = |cell: &Cell| cell.load(Ordering::Relaxed);
        family(
            out,
            "sniroute_open_connections",
            "gauge",
            "Client connections open now, those still waiting for their hello included (what limits.max_connections caps).",
        );
        let _ = writeln!(out, "sniroute_open_connections {}", self.open_connections);

        let routes = &self.routes;
        let per_route =
            |out: &mut String, name, kind, help, value: &dyn Fn(&RouteCells) -> String| {
                family(out, name, kind, help);
                for (route, m) in routes {
                    let _ = writeln!(
                        out,
                        "{name}{{route=\"{}\"}} {}",
                        escape(route),
                        value(&m.cells)
                    );
                }
            };
        per_route(
            out,
            "sniroute_routed_connections_total",
            "counter",
            "Connections handed to a backend, per route.",
            &|c| load(&c.routed).to_string(),
        );
        per_route(
            out,
            "sniroute_active_connections",
            "gauge",
            "Routed connections open now, per route.",
            &|c| f64::from_bits(load(&c.active)).to_string(),
        );
        per_route(
            out,
            "sniroute_backend_errors_total",
            "counter",
            "Routed names whose backend could not be reached or closed at once, per route.",
            &|c| load(&c.backend_errors).to_string(),
        );
        family(
            out,
            "sniroute_bytes_total",
            "counter",
            "Bytes relayed per route; up = client to backend.",
        );
        for (route, m) in routes {
            for (direction, cell) in [("up", &m.cells.up), ("down", &m.cells.down)] {
                let _ = writeln!(
                    out,
                    "sniroute_bytes_total{{route=\"{}\",direction=\"{direction}\"}} {}",
                    escape(route),
                    load(cell)
                );
            }
        }
        family(
            out,
            "sniroute_backend_connect_seconds",
            "histogram",
            "Backend TCP connect time, per route.",
        );
        for (route, m) in routes {
            m.cells
                .connect_seconds
                .write(out, "sniroute_backend_connect_seconds", route);
        }

        let mut rows: BTreeMap<(&str, SocketAddr), BackendRow> = BTreeMap::new();
        for b in &self.backends {
            let row = rows.entry((b.route, b.addr)).or_insert((true, 0, 0));
            row.0 &= b.up;
            row.1 += load(&b.metrics.cells.connections);
            row.2 += load(&b.metrics.cells.failures);
        }
        let per_backend =
            |out: &mut String, name, kind, help, value: &dyn Fn(&BackendRow) -> u64| {
                family(out, name, kind, help);
                for ((route, addr), row) in &rows {
                    let _ = writeln!(
                        out,
                        "{name}{{route=\"{}\",backend=\"{addr}\"}} {}",
                        escape(route),
                        value(row)
                    );
                }
            };
        per_backend(
            out,
            "sniroute_backend_up",
            "gauge",
            "1 when the backend is in service for the route now; 0 while health checks have it out, or for 10 s after it refused a client's connect (until a check or a later try succeeds).",
            &|r| u64::from(r.0),
        );
        per_backend(
            out,
            "sniroute_backend_connections_total",
            "counter",
            "Connections handed to each backend of a route.",
            &|r| r.1,
        );
        per_backend(
            out,
            "sniroute_backend_connect_failures_total",
            "counter",
            "Failed connects to each backend of a route (client tries, not health checks).",
            &|r| r.2,
        );
    }
}

impl Buckets {
    /// The `_bucket` (cumulative), `_sum` and `_count` lines for `route`.
    /// The count is the buckets' total, so the lines agree with each other
    /// even while values are being recorded.
    fn write(&self, out: &mut String, name: &str, route: &str) {
        let route = escape(route);
        let mut total = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            total += count.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {total}"
            );
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {total}");
    }
}

/// The `# HELP` and `# TYPE` lines that open a family (after a blank line,
/// as the recorder separates its families).
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    if !out.is_empty() && !out.ends_with("\n\n") {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value in the text format: `\`, `"` and newlines escaped (route
/// names are host names, so this is only a safeguard).
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

/// Counts a config reload attempt and keeps whether the last one was taken.
pub fn reload_result(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("sniroute_config_reloads_total", "result" => result).increment(1);
    gauge!("sniroute_config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
}

/// Exports the limits of the config now in force (at start and after each
/// reload), so alerts can compare usage against them.
pub fn limits(max_connections: usize) {
    gauge!("sniroute_max_connections").set(max_connections as f64);
}

/// How long a scraper may take to send its request head: a scrape sends it
/// at once; a connection still silent after this is not a scraper.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes the series a scrape computes from the state in force ([`Live`]),
/// after the recorder's output.
pub type Collect = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Serves `GET /metrics` on `listener` until the task is dropped, with
/// hyper's HTTP/1 server: `/metrics` answers the exposition (the
/// recorder's, then `live`'s), any other path a 404, and each connection
/// closes after its response.
pub async fn serve(listener: TcpListener, handle: &'static PrometheusHandle, live: Collect) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: let the system recover.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let live = Arc::clone(&live);
        let service = service_fn(move |request| {
            let response = respond(handle, &*live, &request);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

/// The response to one request: the scrape for `GET`/`HEAD /metrics`
/// (query ignored), 404 elsewhere, 405 for other methods.
fn respond<B>(
    handle: &PrometheusHandle,
    live: &(dyn Fn(&mut String) + Send + Sync),
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, scrape(handle, live)),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found; try /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// One scrape: the recorder's series, then those `live` computes now.
pub fn scrape(handle: &PrometheusHandle, live: &(dyn Fn(&mut String) + Send + Sync)) -> String {
    handle.run_upkeep();
    let mut text = handle.render();
    live(&mut text);
    text
}

/// Binds the metrics endpoint (start-up fails loudly if it cannot).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_cumulative_and_agree_with_the_count() {
        let b = Buckets::default();
        for v in [0.00005, 0.2, 0.25, 20.0] {
            b.record(v);
        }
        let mut out = String::new();
        b.write(&mut out, "x_seconds", "r");
        let line = |le: &str| format!("x_seconds_bucket{{route=\"r\",le=\"{le}\"}} ");
        let value = |le: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&line(le)))
                .unwrap_or_else(|| panic!("no le={le} in\n{out}"))
                .to_owned()
        };
        assert_eq!(value("0.00005"), "1", "a bound is inclusive");
        assert_eq!(value("0.1"), "1");
        assert_eq!(value("0.25"), "3");
        assert_eq!(value("10"), "3");
        assert_eq!(value("+Inf"), "4");
        assert!(out.contains("x_seconds_count{route=\"r\"} 4\n"), "{out}");
        assert!(
            out.contains("x_seconds_sum{route=\"r\"} 20.45005\n"),
            "{out}"
        );
    }

    #[test]
    fn live_series_follow_the_handles_and_merge_an_address_in_both_pools() {
        let route = RouteMetrics::new();
        route.routed.increment(2);
        route.active.increment(1.0);
        route.bytes.down.increment(7);
        let kept = route.clone();
        kept.routed.increment(1);
        let (tls, http) = (BackendMetrics::new(), BackendMetrics::new());
        tls.connections.increment(3);
        http.connections.increment(4);
        http.failures.increment(1);
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let backend = |metrics, up| LiveBackend {
            route: "a.example",
            addr,
            up,
            metrics,
        };
        let live = Live {
            open_connections: 5,
            routes: vec![("a.example", &route)],
            backends: vec![backend(&tls, true), backend(&http, false)],
        };
        let mut out = "recorded 1\n".to_owned();
        live.write(&mut out);
        for want in [
            "recorded 1\n\n# HELP sniroute_open_connections ",
            "\nsniroute_open_connections 5\n",
            "\nsniroute_routed_connections_total{route=\"a.example\"} 3\n",
            "\nsniroute_active_connections{route=\"a.example\"} 1\n",
            "\nsniroute_bytes_total{route=\"a.example\",direction=\"down\"} 7\n",
            "\nsniroute_backend_up{route=\"a.example\",backend=\"127.0.0.1:80\"} 0\n",
            "\nsniroute_backend_connections_total{route=\"a.example\",backend=\"127.0.0.1:80\"} 7\n",
            "\nsniroute_backend_connect_failures_total{route=\"a.example\",backend=\"127.0.0.1:80\"} 1\n",
        ] {
            assert!(out.contains(want), "no {want:?} in\n{out}");
        }
        assert_eq!(out.matches("sniroute_backend_up{").count(), 1, "{out}");
        assert_eq!(out.matches("# TYPE ").count(), 9, "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a.example"), "a.example");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
