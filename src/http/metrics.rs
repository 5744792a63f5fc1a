//! Prometheus metrics: request counts and latency per route pattern (never per raw path, which
//! would carry ids and make cardinality unbounded), and the heap SQLite holds. Each `AppState`
//! owns its registry, so several servers in one test process never share counters.

use std::net::IpAddr;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    sqlite_heap: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("ward_http_requests_total", "HTTP requests answered"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "ward_http_request_duration_seconds",
                "Time to answer an HTTP request",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method", "route"],
        )?;
        // Read when scraped: it is the whole process's (every connection's page cache, schema
        // and prepared statements), bounded by the cache sizes Ward sets, and 0 on PostgreSQL.
        let sqlite_heap = IntGauge::new(
            "ward_sqlite_heap_bytes",
            "Heap memory SQLite holds in this process (page caches, schemas, prepared statements)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(sqlite_heap.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            sqlite_heap,
        })
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    pub fn render(&self) -> String {
        self.sqlite_heap.set(crate::store::sqlite_heap_bytes());
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `/metrics` is for the operator's own host unless opened: a loopback peer that is not
/// relaying someone else's request through a proxy.
pub fn metrics_allowed(peer: Option<IpAddr>, forwarded: bool, open: bool) -> bool {
    open || (peer.is_some_and(|ip| ip.is_loopback()) && !forwarded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_only_for_direct_loopback_peers_unless_open() {
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let local6: IpAddr = "::1".parse().expect("ip");
        let remote: IpAddr = "203.0.113.9".parse().expect("ip");
        assert!(metrics_allowed(Some(local), false, false));
        assert!(metrics_allowed(Some(local6), false, false));
        assert!(!metrics_allowed(Some(remote), false, false));
        assert!(!metrics_allowed(Some(local), true, false));
        assert!(!metrics_allowed(None, false, false));
        assert!(metrics_allowed(Some(remote), true, true));
    }

    #[test]
    fn observations_render_in_text_format() {
        let m = Metrics::new().expect("registry");
        m.observe("GET", "/healthz", 200, 0.001);
        let text = m.render();
        assert!(text.contains(
            "ward_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ));
        assert!(text.contains("ward_http_request_duration_seconds_bucket"));
    }

    #[test]
    fn the_sqlite_heap_is_read_when_scraped() {
        let gauge = |text: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix("ward_sqlite_heap_bytes "))
                .expect("gauge rendered")
                .parse()
                .expect("an integer")
        };
        let m = Metrics::new().expect("registry");
        // A connection whose page cache holds about 0.8 MB of rows (other tests' connections
        // only add to the process-wide figure).
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut conn = diesel::SqliteConnection::establish(":memory:").expect("sqlite");
        conn.batch_execute(
            "CREATE TABLE t(x TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 \
             FROM n WHERE i < 2000) INSERT INTO t SELECT hex(randomblob(200)) FROM n",
        )
        .expect("fill");
        let held = gauge(&m.render());
        assert!(held >= 800_000, "{held}");
        drop(conn);
    }
}
