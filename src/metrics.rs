//! Every metric of the contract, registered once at start-up so dashboards see
//! zeros instead of "no data", and handles pre-built per outcome and per route
//! so the per-connection path records without a lock or an allocation.
//! The `/metrics` endpoint is served by hyper's HTTP/1 server (the HTTP
//! stack the CrowdSec client uses too).

use std::net::SocketAddr;
use std::sync::OnceLock;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::config::Route;
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
        "sniroute_routed_connections_total",
        "Connections handed to a backend, per route."
    );
    describe_gauge!(
        "sniroute_active_connections",
        "Routed connections open now, per route."
    );
    describe_counter!(
        "sniroute_bytes_total",
        "Bytes relayed per route; up = client to backend."
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
    describe_histogram!(
        "sniroute_backend_connect_seconds",
        "Backend TCP connect time, per route."
    );
    describe_gauge!(
        "sniroute_backend_up",
        "1 when the backend is in service for the route, 0 when health checks took it out or it refused the last try."
    );
    describe_counter!(
        "sniroute_backend_connections_total",
        "Connections handed to each backend of a route."
    );
    describe_counter!(
        "sniroute_backend_connect_failures_total",
        "Failed connects to each backend of a route (client tries, not health checks)."
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
    describe_counter!(
        "sniroute_backend_errors_total",
        "Routed names whose backend could not be reached or closed at once, per route."
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

/// Handles for one route, labelled with its name.
#[derive(Clone)]
pub struct RouteMetrics {
    pub routed: Counter,
    pub active: Gauge,
    /// `sniroute_bytes_total{direction="up"|"down"}`, fed live by the relay.
    pub bytes: ByteCounters,
    pub connect_seconds: Histogram,
    /// Connections of this route that ended `backend_error`.
    pub backend_errors: Counter,
}

impl RouteMetrics {
    pub fn new(route: &Route) -> RouteMetrics {
        let name = route.name.clone();
        let m = RouteMetrics {
            routed: counter!("sniroute_routed_connections_total", "route" => name.clone()),
            active: gauge!("sniroute_active_connections", "route" => name.clone()),
            bytes: ByteCounters {
                up: counter!("sniroute_bytes_total", "route" => name.clone(), "direction" => "up"),
                down: counter!("sniroute_bytes_total", "route" => name.clone(), "direction" => "down"),
            },
            connect_seconds: histogram!("sniroute_backend_connect_seconds", "route" => name.clone()),
            backend_errors: counter!("sniroute_backend_errors_total", "route" => name),
        };
        m.routed.increment(0);
        m.backend_errors.increment(0);
        m.active.increment(0.0);
        m.bytes.up.increment(0);
        m.bytes.down.increment(0);
        m
    }
}

/// Handles for one backend of one route, labelled with both (the address as
/// written in the config).
#[derive(Clone)]
pub struct BackendMetrics {
    /// `sniroute_backend_up{route,backend}`.
    pub up: Gauge,
    /// `sniroute_backend_connections_total{route,backend}`.
    pub connections: Counter,
    /// `sniroute_backend_connect_failures_total{route,backend}`.
    pub failures: Counter,
}

impl BackendMetrics {
    /// Registers the series (so they exist from start-up); `up` starts at `up`.
    pub fn new(route: &str, backend: SocketAddr, up: bool) -> BackendMetrics {
        let labels = [
            ("route", route.to_owned()),
            ("backend", backend.to_string()),
        ];
        let m = BackendMetrics {
            up: gauge!("sniroute_backend_up", &labels),
            connections: counter!("sniroute_backend_connections_total", &labels),
            failures: counter!("sniroute_backend_connect_failures_total", &labels),
        };
        m.up.set(if up { 1.0 } else { 0.0 });
        m.connections.increment(0);
        m.failures.increment(0);
        m
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

/// Serves `GET /metrics` on `listener` until the task is dropped, with
/// hyper's HTTP/1 server: `/metrics` answers the exposition, any other path
/// a 404, and each connection closes after its response.
pub async fn serve(listener: TcpListener, handle: &'static PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: let the system recover.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let service = service_fn(move |request| async move {
            Ok::<_, std::convert::Infallible>(respond(handle, &request))
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
fn respond<B>(handle: &PrometheusHandle, request: &Request<B>) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            handle.run_upkeep();
            (StatusCode::OK, handle.render())
        }
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

/// Binds the metrics endpoint (start-up fails loudly if it cannot).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
