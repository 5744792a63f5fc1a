//! Prometheus metrics: request counts and latency per route pattern (never per raw path, which
//! would carry ids and make cardinality unbounded), and the heap SQLite holds. Each `AppState`
//! owns its registry, so several servers in one test process never share counters.

use std::net::IpAddr;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::store::GroupCommits;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    sqlite_heap: IntGauge,
    /// Brought up to the writer's own totals when scraped (under the lock: two scrapes at
    /// once must not both add the same difference).
    group_commit: std::sync::Mutex<(IntCounter, IntCounter)>,
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
        // SQLite's group commit: their ratio is the mean number of requests' writes that one
        // transaction carried (they stay 0 on PostgreSQL, which does not batch).
        let batches = IntCounter::new(
            "ward_sqlite_group_commit_batches_total",
            "Transactions the SQLite writer committed",
        )?;
        let pieces = IntCounter::new(
            "ward_sqlite_group_commit_writes_total",
            "Requests' writes those transactions carried",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(sqlite_heap.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(pieces.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            sqlite_heap,
            group_commit: std::sync::Mutex::new((batches, pieces)),
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

    /// The text exposition, with the gauges read now and the writer's totals (`None` on
    /// PostgreSQL) brought up to date.
    pub fn render(&self, group_commits: Option<GroupCommits>) -> String {
        self.sqlite_heap.set(crate::store::sqlite_heap_bytes());
        if let Some(now) = group_commits {
            let counters = self.group_commit.lock().unwrap_or_else(|e| e.into_inner());
            let (batches, pieces) = &*counters;
            batches.inc_by(now.batches.saturating_sub(batches.get()));
            pieces.inc_by(now.pieces.saturating_sub(pieces.get()));
        }
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
        let text = m.render(None);
        assert!(text.contains(
            "ward_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ));
        assert!(text.contains("ward_http_request_duration_seconds_bucket"));
    }

    #[test]
    fn group_commit_counters_follow_the_writers_totals() {
        let m = Metrics::new().expect("registry");
        let counter = |text: &str, name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} rendered"))
                .parse()
                .expect("an integer")
        };
        let (batches, writes) = (
            "ward_sqlite_group_commit_batches_total",
            "ward_sqlite_group_commit_writes_total",
        );
        let text = m.render(None);
        assert_eq!((counter(&text, batches), counter(&text, writes)), (0, 0));
        for (b, w) in [(3, 7), (3, 7), (5, 12)] {
            let text = m.render(Some(GroupCommits {
                batches: b,
                pieces: w,
            }));
            assert_eq!((counter(&text, batches), counter(&text, writes)), (b, w));
        }
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
        let held = gauge(&m.render(None));
        assert!(held >= 800_000, "{held}");
        drop(conn);
    }
}
