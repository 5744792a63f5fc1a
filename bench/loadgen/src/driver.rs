//! The closed-loop load driver: each connection runs its [`Worker`] back to back (or at a fixed
//! interval, for probes) until the measurement window ends. Only operations that complete inside
//! the window count; the warm-up before it fills caches and connection state.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;

use crate::http::{Conn, Target};

/// How one operation ended.
#[derive(Debug)]
pub enum Outcome {
    /// What the scenario expects (usually a 2xx with the expected body).
    Ok,
    /// Refused by load shedding (429/503) where the scenario allows it.
    Shed,
    /// Anything else; the text is kept as a sample for the operator.
    Error(String),
}

/// One connection's behaviour. Futures need not be `Send`: everything runs on one thread.
pub trait Worker {
    /// Untimed work before each operation (e.g. signing an assertion when the pool is empty).
    async fn prepare(&mut self, _conn: &mut Conn) {}
    /// One timed operation.
    async fn op(&mut self, conn: &mut Conn) -> Outcome;
}

/// The measurement window shared by every group of one run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub measure_from: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(warmup: f64, seconds: f64) -> Self {
        let measure_from = Instant::now() + Duration::from_secs_f64(warmup.max(0.0));
        Self {
            measure_from,
            end: measure_from + Duration::from_secs_f64(seconds),
        }
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.measure_from).as_secs_f64()
    }

    fn contains(&self, t: Instant) -> bool {
        t >= self.measure_from && t <= self.end
    }
}

/// Latencies (microseconds) and counts of one group of connections.
#[derive(Debug)]
pub struct Stats {
    pub ok: Histogram<u64>,
    pub shed: Histogram<u64>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// TCP connections opened beyond the first per connection (keep-alive broken).
    pub reconnects: u64,
}

const MAX_SAMPLES: usize = 3;

impl Stats {
    fn new() -> Self {
        // Three significant digits from 1 µs to 10 minutes: ample for any HTTP request.
        let hist = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
        Self {
            ok: hist(),
            shed: hist(),
            errors: 0,
            error_samples: Vec::new(),
            reconnects: 0,
        }
    }

    fn record(&mut self, outcome: Outcome, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        match outcome {
            Outcome::Ok => self.ok.saturating_record(us),
            Outcome::Shed => self.shed.saturating_record(us),
            Outcome::Error(text) => {
                self.errors += 1;
                if self.error_samples.len() < MAX_SAMPLES && !self.error_samples.contains(&text) {
                    self.error_samples.push(text);
                }
            }
        }
    }

    /// Every counted operation: successes, errors and shed ones.
    pub fn requests(&self) -> u64 {
        self.ok.len() + self.shed.len() + self.errors
    }

    /// The standard members of a result line: successes per second, their p50 and p99, errors.
    pub fn summary(
        &self,
        scenario: &str,
        connections: usize,
        window: &Window,
    ) -> Map<String, Value> {
        let seconds = window.seconds();
        let mut m = Map::new();
        m.insert("scenario".into(), json!(scenario));
        m.insert(
            "rps".into(),
            json!(round(self.ok.len() as f64 / seconds, 1)),
        );
        m.insert("p50_ms".into(), json!(ms(&self.ok, 50.0)));
        m.insert("p99_ms".into(), json!(ms(&self.ok, 99.0)));
        m.insert("errors".into(), json!(self.errors));
        m.insert("requests".into(), json!(self.requests()));
        m.insert("connections".into(), json!(connections));
        m.insert("seconds".into(), json!(round(seconds, 2)));
        if self.reconnects > 0 {
            m.insert("reconnects".into(), json!(self.reconnects));
        }
        if !self.error_samples.is_empty() {
            m.insert("error_samples".into(), json!(self.error_samples));
        }
        m
    }
}

/// A percentile of a microsecond histogram, in milliseconds (null when empty).
pub fn ms(hist: &Histogram<u64>, percentile: f64) -> Value {
    if hist.is_empty() {
        return Value::Null;
    }
    json!(round(
        hist.value_at_percentile(percentile) as f64 / 1000.0,
        3
    ))
}

pub fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

/// Connections running one worker kind; [`Group::finish`] waits for them.
pub struct Group {
    handles: Vec<JoinHandle<u64>>,
    stats: Rc<RefCell<Stats>>,
}

impl Group {
    /// Starts one local task per worker, each with its own keep-alive connection. With
    /// `interval`, each connection starts an operation at most once per interval (a probe);
    /// otherwise back to back. Call inside a `LocalSet`.
    pub fn spawn<W: Worker + 'static>(
        target: &Target,
        window: Window,
        workers: Vec<W>,
        interval: Option<Duration>,
    ) -> Self {
        let stats = Rc::new(RefCell::new(Stats::new()));
        let handles = workers
            .into_iter()
            .map(|mut worker| {
                let stats = stats.clone();
                let mut conn = Conn::new(target);
                tokio::task::spawn_local(async move {
                    let mut ticker = interval.map(|every| {
                        let mut t = tokio::time::interval(every);
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        t
                    });
                    while Instant::now() < window.end {
                        if let Some(t) = ticker.as_mut() {
                            t.tick().await;
                        }
                        worker.prepare(&mut conn).await;
                        let started = Instant::now();
                        let outcome = worker.op(&mut conn).await;
                        let done = Instant::now();
                        if window.contains(done) {
                            stats.borrow_mut().record(outcome, done - started);
                        }
                    }
                    conn.connects.saturating_sub(1)
                })
            })
            .collect();
        Self { handles, stats }
    }

    pub async fn finish(self) -> Stats {
        let mut reconnects = 0;
        for handle in self.handles {
            reconnects += handle.await.unwrap_or(0);
        }
        let stats = Rc::try_unwrap(self.stats)
            .map(RefCell::into_inner)
            .unwrap_or_else(|rc| rc.replace(Stats::new()));
        Stats {
            reconnects,
            ..stats
        }
    }
}

/// CPU time (user + system, in seconds) of a process from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// Samples the CPU use of this process and, optionally, the server's over the window, so a
/// result line shows which side was saturated.
pub struct CpuMeter {
    task: JoinHandle<(Option<f64>, Option<f64>)>,
}

impl CpuMeter {
    pub fn start(window: Window, server_pid: Option<u32>) -> Self {
        let task = tokio::task::spawn_local(async move {
            let server = server_pid.map(|p| p.to_string());
            let sample = || (cpu_seconds("self"), server.as_deref().and_then(cpu_seconds));
            tokio::time::sleep_until(window.measure_from.into()).await;
            let (c0, s0) = sample();
            tokio::time::sleep_until(window.end.into()).await;
            let (c1, s1) = sample();
            let secs = window.seconds();
            let share = |a: Option<f64>, b: Option<f64>| Some(round((b? - a?) / secs, 2));
            (share(c0, c1), share(s0, s1))
        });
        Self { task }
    }

    /// Adds `client_cpu` and `server_cpu` (cores used on average) to a result line.
    pub async fn finish(self, line: &mut Map<String, Value>) {
        if let Ok((client, server)) = self.task.await {
            if let Some(c) = client {
                line.insert("client_cpu".into(), json!(c));
            }
            if let Some(s) = server {
                line.insert("server_cpu".into(), json!(s));
            }
        }
    }
}
