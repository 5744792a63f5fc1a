//! Prometheus metrics: request counts and latency per route pattern (never per raw path, which
//! would carry ids and make cardinality unbounded). Each `AppState` owns its registry, so
//! several servers in one test process never share counters.

use std::net::IpAddr;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
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
}
