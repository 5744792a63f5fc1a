//! `BENCHMARKS.md`: the result lines of one `bench/run` rendered against the performance
//! issue's targets (SQLite, one worker, 32 connections, two cores), the PostgreSQL comparison,
//! memory, and the soak.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;

/// Every result line of one run, as written by the loadgen and by `bench/run`.
pub struct Results {
    lines: Vec<Value>,
}

impl Results {
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let lines = text
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
            .context("a result line is not JSON")?;
        Ok(Self { lines })
    }

    /// The last line of `scenario` with `tag` (a later run of the same scenario wins).
    fn find(&self, tag: &str, scenario: &str) -> Option<&Value> {
        self.lines
            .iter()
            .rev()
            .find(|l| l["scenario"] == scenario && l["tag"] == tag)
    }

    fn num(&self, tag: &str, scenario: &str, member: &str) -> Option<f64> {
        self.find(tag, scenario)?[member].as_f64()
    }

    /// Every value of `member` on the lines of `scenario` with `tag`, in run order.
    fn all(&self, tag: &str, scenario: &str, member: &str) -> Vec<f64> {
        self.lines
            .iter()
            .filter(|l| l["scenario"] == scenario && l["tag"] == tag)
            .filter_map(|l| l[member].as_f64())
            .collect()
    }

    /// An in-process bound: the mean of its measurements (bench/run takes one just before and
    /// one just after the scenario it bounds, on Ward's core), with how many and their range.
    fn bound(&self, tag: &str, scenario: &str, member: &str) -> Option<Bound> {
        let values = self.all(tag, scenario, member);
        Bound::of(&values)
    }

    fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = Vec::new();
        for line in &self.lines {
            if let Some(t) = line["tag"].as_str() {
                if !tags.iter().any(|x| x == t) {
                    tags.push(t.to_owned());
                }
            }
        }
        tags
    }
}

/// The mean of several measurements of one bound, and their spread.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    mean: f64,
    min: f64,
    max: f64,
    count: usize,
}

impl Bound {
    fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let count = values.len();
        let mean = values.iter().sum::<f64>() / count as f64;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self {
            mean,
            min,
            max,
            count,
        })
    }

    /// "1234 /s on Ward's core" or "1234 /s: mean of 2 on Ward's core, 1200–1268".
    fn describe(&self, digits: usize) -> String {
        if self.count == 1 {
            format!("{:.digits$} /s on Ward's core", self.mean)
        } else {
            format!(
                "{:.digits$} /s: mean of {} on Ward's core, {:.digits$}–{:.digits$}",
                self.mean, self.count, self.min, self.max
            )
        }
    }
}

/// The rows of the issue's table, in its order: (scenario, what is measured).
const ROWS: &[(&str, &str)] = &[
    ("get:/healthz", "GET /healthz"),
    ("introspect:valid", "POST /introspect (live token)"),
    ("introspect:invalid", "POST /introspect (forged token)"),
    (
        "client-credentials:RS384",
        "POST /token client_credentials (RS384 assertion)",
    ),
    (
        "client-credentials:ES384",
        "POST /token client_credentials (ES384 assertion)",
    ),
    ("refresh", "POST /token refresh_token (rotating)"),
    (
        "get:/.well-known/smart-configuration",
        "GET /.well-known/smart-configuration",
    ),
    ("get:/jwks", "GET /jwks"),
    ("login-storm", "GET + POST /login (password sign-in)"),
];

/// Scenarios the PostgreSQL comparison covers (introspection and token issuance).
const PG_ROWS: &[&str] = &[
    "introspect:valid",
    "introspect:invalid",
    "client-credentials:RS384",
    "client-credentials:ES384",
    "refresh",
];

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    }
}

/// `x ≥ factor × base` (None when either is missing).
fn at_least(x: Option<f64>, factor: f64, base: Option<f64>) -> Option<bool> {
    Some(x? >= factor * base?)
}

fn at_most(x: Option<f64>, limit: f64) -> Option<bool> {
    Some(x? <= limit)
}

fn both(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    Some(a? && b?)
}

/// The issue's target for a row and whether it was met.
fn target(r: &Results, tag: &str, scenario: &str) -> (String, Option<bool>) {
    let rps = |s: &str| r.num(tag, s, "rps");
    let p99 = r.num(tag, scenario, "p99_ms");
    let healthz = rps("get:/healthz");
    let own = rps(scenario);
    match scenario {
        "get:/healthz" => ("baseline".into(), None),
        "introspect:valid" => (
            "≥ 0.3× healthz, p99 ≤ 5 ms".into(),
            both(at_least(own, 0.3, healthz), at_most(p99, 5.0)),
        ),
        "introspect:invalid" => (
            "≥ 0.9× live-token introspection".into(),
            at_least(own, 0.9, rps("introspect:valid")),
        ),
        "client-credentials:RS384" | "refresh" => {
            let factor = if scenario == "refresh" { 0.05 } else { 0.1 };
            (
                format!("≥ {factor}× healthz, p99 ≤ 10 ms"),
                both(at_least(own, factor, healthz), at_most(p99, 10.0)),
            )
        }
        "client-credentials:ES384" => {
            let bound = r.bound(tag, "p384-verify-bound", "verifies_per_sec");
            (
                format!(
                    "≥ 75% of the P-384 verify bound ({})",
                    bound.map_or_else(|| "—".into(), |b| b.describe(0))
                ),
                at_least(own, 0.75, bound.map(|b| b.mean)),
            )
        }
        "get:/.well-known/smart-configuration" | "get:/jwks" => {
            ("≥ 0.5× healthz".into(), at_least(own, 0.5, healthz))
        }
        "login-storm" => {
            let bound = r.bound(tag, "argon2-bound", "hashes_per_sec");
            (
                format!(
                    "≈ pinned cores / argon2 time (1 × {}); met at ≥ 75%",
                    bound.map_or_else(|| "—".into(), |b| b.describe(1))
                ),
                at_least(own, 0.75, bound.map(|b| b.mean)),
            )
        }
        _ => (String::new(), None),
    }
}

/// Renders the whole report. `meta` is (label, value) pairs describing the machine and run.
pub fn render(r: &Results, meta: &[(String, String)]) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Ward benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `bench/run` (do not edit by hand; run it again). Each scenario drives \
         HTTP/1.1 keep-alive load from `bench/loadgen` with a fixed number of connections \
         after a short warm-up; `rps` counts successful responses per second, `p50`/`p99` are \
         their latencies, `errors` every unexpected answer. Ward runs with one HTTP worker, \
         pinned to core 0; the load generator is pinned to core 1. `client cpu` and \
         `server cpu` are the cores each side used on average (1.00 = saturated).\n"
    );
    let _ = writeln!(w, "## Machine and run\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    for (k, v) in meta {
        let _ = writeln!(w, "| {k} | {} |", v.replace('|', "/"));
    }
    let _ = writeln!(w);

    let tags = r.tags();
    if tags.iter().any(|t| t == "sqlite") {
        targets_table(w, r, "sqlite");
    }
    for tag in tags.iter().filter(|t| *t != "soak") {
        all_table(w, r, tag);
    }
    if tags.iter().any(|t| t == "postgres") {
        postgres_table(w, r);
    }
    memory(w, r, &tags);
    soak(w, r);

    let _ = writeln!(w, "## Raw result lines\n\n```json");
    for line in &r.lines {
        let _ = writeln!(w, "{line}");
    }
    let _ = writeln!(w, "```");
    out
}

fn targets_table(w: &mut String, r: &Results, tag: &str) {
    let _ = writeln!(
        w,
        "## Targets (SQLite, one worker, {} connections)\n",
        r.find(tag, "get:/healthz")
            .and_then(|l| l["connections"].as_u64())
            .map(|c| c.to_string())
            .unwrap_or_else(|| "?".into())
    );
    let _ = writeln!(
        w,
        "| path | rps | p50 ms | p99 ms | errors | ratio to /healthz | target | met? |\n\
         |---|---:|---:|---:|---:|---:|---|---|"
    );
    let healthz = r.num(tag, "get:/healthz", "rps");
    for (scenario, label) in ROWS {
        let rps = r.num(tag, scenario, "rps");
        let ratio = match (rps, healthz) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let (goal, ok) = target(r, tag, scenario);
        let _ = writeln!(
            w,
            "| {label} | {} | {} | {} | {} | {} | {goal} | {} |",
            fmt(rps, 0),
            fmt(r.num(tag, scenario, "p50_ms"), 2),
            fmt(r.num(tag, scenario, "p99_ms"), 2),
            fmt(r.num(tag, scenario, "errors"), 0),
            fmt(ratio, 3),
            met(ok),
        );
    }
    // The login storm's side conditions, for the storm and (when run) the flood.
    for (scenario, what) in [
        (
            "login-storm",
            "storm (shed sign-ins wait as Retry-After asks)",
        ),
        ("login-flood", "flood (shed sign-ins retry at once)"),
    ] {
        if r.find(tag, scenario).is_none() {
            continue;
        }
        let probe = r.num(tag, scenario, "probe_p99_ms");
        let _ = writeln!(
            w,
            "| POST /introspect during the sign-in {what} | {} | {} | {} | {} | — | p99 ≤ 5 ms | {} |",
            fmt(r.num(tag, scenario, "probe_rps"), 0),
            fmt(r.num(tag, scenario, "probe_p50_ms"), 2),
            fmt(probe, 2),
            fmt(r.num(tag, scenario, "probe_errors"), 0),
            met(at_most(probe, 5.0)),
        );
        let shed = r.num(tag, scenario, "shed");
        let shed_p99 = r.num(tag, scenario, "shed_p99_ms");
        let quick = match shed {
            Some(n) if n > 0.0 => at_most(shed_p99, 50.0),
            Some(_) => Some(false),
            None => None,
        };
        let _ = writeln!(
            w,
            "| sign-ins refused with 429/503 in the {what} | {} shed ({} sign-ins/s ok) | {} | {} | — | — | \
             excess refused quickly: some shed, shed p99 ≤ 50 ms | {} |",
            fmt(shed, 0),
            fmt(r.num(tag, scenario, "rps"), 0),
            fmt(r.num(tag, scenario, "shed_p50_ms"), 2),
            fmt(shed_p99, 2),
            met(quick),
        );
    }
    if let Some(m) = soak_memory(&soak_rss(r)) {
        let _ = writeln!(
            w,
            "| memory: RSS over the {:.0}-minute soak (below) | {:.1} → {:.1} MiB ({:+.1}%, {:+.0} MiB/h at that pace) | — | — | — | — | \
             flat: the last quarter's mean at most {:.0}% above the second quarter's (the first is warm-up) | {} |",
            m.minutes,
            m.settled_mib,
            m.last_mib,
            m.growth() * 100.0,
            m.mib_per_hour(),
            FLAT_GROWTH * 100.0,
            met(Some(m.flat())),
        );
    }
    let _ = writeln!(w);
    let bounds: Vec<String> = r
        .lines
        .iter()
        .filter(|l| {
            l["tag"] == tag
                && ["p384-verify-bound", "argon2-bound"]
                    .contains(&l["scenario"].as_str().unwrap_or(""))
        })
        .map(|l| format!("`{l}`"))
        .collect();
    if !bounds.is_empty() {
        let _ = writeln!(
            w,
            "In-process bounds, measured by the loadgen on Ward's core (while Ward idles) just \
             before and just after the scenario each bounds; the targets use their mean: {}\n",
            bounds.join(", ")
        );
    }
}

fn all_table(w: &mut String, r: &Results, tag: &str) {
    let _ = writeln!(w, "## Every scenario on {tag}\n");
    let _ = writeln!(
        w,
        "| scenario | rps | p50 ms | p99 ms | errors | requests | ratio to /healthz | client cpu | server cpu |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let healthz = r.num(tag, "get:/healthz", "rps");
    for line in r
        .lines
        .iter()
        .filter(|l| l["tag"] == tag && l.get("rps").is_some())
    {
        let rps = line["rps"].as_f64();
        let ratio = match (rps, healthz) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            line["scenario"].as_str().unwrap_or("?"),
            fmt(rps, 0),
            fmt(line["p50_ms"].as_f64(), 2),
            fmt(line["p99_ms"].as_f64(), 2),
            fmt(line["errors"].as_f64(), 0),
            fmt(line["requests"].as_f64(), 0),
            fmt(ratio, 3),
            fmt(line["client_cpu"].as_f64(), 2),
            fmt(line["server_cpu"].as_f64(), 2),
        );
    }
    let _ = writeln!(w);
}

fn postgres_table(w: &mut String, r: &Results) {
    let _ = writeln!(
        w,
        "## PostgreSQL against SQLite (target: introspection and token issuance within 2×)\n"
    );
    let _ = writeln!(
        w,
        "Met when PostgreSQL's rps is at least half of SQLite's and its p99 at most twice \
         SQLite's.\n"
    );
    let _ = writeln!(
        w,
        "| scenario | SQLite rps | PostgreSQL rps | rps ratio | SQLite p99 ms | PostgreSQL p99 ms | errors (pg) | met? |\n\
         |---|---:|---:|---:|---:|---:|---:|---|"
    );
    for scenario in PG_ROWS {
        let (s_rps, p_rps) = (
            r.num("sqlite", scenario, "rps"),
            r.num("postgres", scenario, "rps"),
        );
        let (s_p99, p_p99) = (
            r.num("sqlite", scenario, "p99_ms"),
            r.num("postgres", scenario, "p99_ms"),
        );
        let ratio = match (p_rps, s_rps) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let ok = both(
            at_least(p_rps, 0.5, s_rps),
            match (p_p99, s_p99) {
                (Some(p), Some(s)) => Some(p <= 2.0 * s),
                _ => None,
            },
        );
        let _ = writeln!(
            w,
            "| {scenario} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(s_rps, 0),
            fmt(p_rps, 0),
            fmt(ratio, 2),
            fmt(s_p99, 2),
            fmt(p_p99, 2),
            fmt(r.num("postgres", scenario, "errors"), 0),
            met(ok),
        );
    }
    let _ = writeln!(w);
}

fn memory(w: &mut String, r: &Results, tags: &[String]) {
    let rss: Vec<&Value> = r.lines.iter().filter(|l| l["scenario"] == "rss").collect();
    if rss.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "## Memory (VmRSS of the ward process)\n\n| backend | when | RSS MiB | threads |\n|---|---|---:|---:|"
    );
    for tag in tags {
        for line in rss.iter().filter(|l| l["tag"] == tag.as_str()) {
            let _ = writeln!(
                w,
                "| {tag} | {} | {} | {} |",
                line["phase"].as_str().unwrap_or("?"),
                fmt(line["rss_kb"].as_f64().map(|k| k / 1024.0), 1),
                fmt(line["threads"].as_f64(), 0),
            );
        }
    }
    let _ = writeln!(w);
}

/// How much RSS may grow between the soak's second quarter and its last and still count as
/// flat.
const FLAT_GROWTH: f64 = 0.05;

/// The soak's RSS samples: (seconds since the soak began, MiB).
fn soak_rss(r: &Results) -> Vec<(f64, f64)> {
    r.lines
        .iter()
        .filter(|l| l["scenario"] == "soak-rss")
        .filter_map(|l| Some((l["elapsed_s"].as_f64()?, l["rss_kb"].as_f64()? / 1024.0)))
        .collect()
}

/// Memory over a soak: the mean RSS of its second quarter (the first is warm-up, while page
/// caches and the allocators fill) against the mean of its last.
#[derive(Debug, PartialEq)]
struct SoakMemory {
    settled_mib: f64,
    last_mib: f64,
    /// Minutes from the middle of the second quarter to the middle of the last.
    apart_minutes: f64,
    /// The soak's length.
    minutes: f64,
}

impl SoakMemory {
    fn growth(&self) -> f64 {
        self.last_mib / self.settled_mib - 1.0
    }

    fn mib_per_hour(&self) -> f64 {
        (self.last_mib - self.settled_mib) / self.apart_minutes * 60.0
    }

    fn flat(&self) -> bool {
        self.growth() <= FLAT_GROWTH
    }
}

/// `None` with fewer than eight samples (four minutes): with fewer, a quarter is one sample and
/// the second is still warm-up.
fn soak_memory(samples: &[(f64, f64)]) -> Option<SoakMemory> {
    if samples.len() < 8 {
        return None;
    }
    let quarter = samples.len() / 4;
    let mean = |part: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        part.iter().map(pick).sum::<f64>() / part.len() as f64
    };
    let settled = &samples[quarter..2 * quarter];
    let last = &samples[samples.len() - quarter..];
    let apart_minutes = (mean(last, |s| s.0) - mean(settled, |s| s.0)) / 60.0;
    (apart_minutes > 0.0).then(|| SoakMemory {
        settled_mib: mean(settled, |s| s.1),
        last_mib: mean(last, |s| s.1),
        apart_minutes,
        minutes: samples[samples.len() - 1].0 / 60.0,
    })
}

fn soak(w: &mut String, r: &Results) {
    let samples: Vec<&Value> = r
        .lines
        .iter()
        .filter(|l| l["scenario"] == "soak-rss")
        .collect();
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "## Soak (mixed load on SQLite: introspection, client_credentials RS384, refresh, JWKS)\n\n\
         `SQLite heap` is `ward_sqlite_heap_bytes` from `/metrics`: SQLite's page caches, \
         schemas and prepared statements, part of the RSS. It rises and falls as the writer \
         commits (each reader's page cache starts again after a commit it did not make).\n\n\
         | elapsed s | RSS MiB | SQLite heap MiB | threads |\n|---:|---:|---:|---:|"
    );
    for s in &samples {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            fmt(s["elapsed_s"].as_f64(), 0),
            fmt(s["rss_kb"].as_f64().map(|k| k / 1024.0), 1),
            fmt(
                s["sqlite_heap_bytes"]
                    .as_f64()
                    .map(|b| b / (1024.0 * 1024.0)),
                1
            ),
            fmt(s["threads"].as_f64(), 0),
        );
    }
    let _ = writeln!(
        w,
        "\n| soak scenario | slices | mean rps | worst p99 ms | errors |\n|---|---:|---:|---:|---:|"
    );
    let mut names: Vec<&str> = Vec::new();
    for l in r
        .lines
        .iter()
        .filter(|l| l["tag"] == "soak" && l.get("rps").is_some())
    {
        if let Some(n) = l["scenario"].as_str() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    for name in names {
        let slices: Vec<&Value> = r
            .lines
            .iter()
            .filter(|l| l["tag"] == "soak" && l["scenario"] == name)
            .collect();
        let n = slices.len() as f64;
        let mean = slices.iter().filter_map(|l| l["rps"].as_f64()).sum::<f64>() / n;
        let worst = slices
            .iter()
            .filter_map(|l| l["p99_ms"].as_f64())
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let errors: f64 = slices.iter().filter_map(|l| l["errors"].as_f64()).sum();
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} |",
            slices.len(),
            fmt(Some(mean), 0),
            fmt(worst, 2),
            fmt(Some(errors), 0),
        );
    }
    let _ = writeln!(w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn results(lines: &[Value]) -> Results {
        Results {
            lines: lines.to_vec(),
        }
    }

    #[test]
    fn soak_memory_compares_the_second_quarter_with_the_last() {
        let samples = |rss: &[f64]| -> Vec<(f64, f64)> {
            rss.iter()
                .enumerate()
                .map(|(i, r)| ((i as f64 + 1.0) * 30.0, *r))
                .collect()
        };
        // Warm-up in the first quarter does not count; growth after it does.
        let m = soak_memory(&samples(&[
            50.0, 80.0, 100.0, 100.0, 102.0, 103.0, 104.0, 104.0,
        ]))
        .unwrap();
        assert_eq!((m.settled_mib, m.last_mib), (100.0, 104.0));
        assert_eq!((m.apart_minutes, m.minutes), (2.0, 4.0));
        assert!((m.growth() - 0.04).abs() < 1e-9 && m.flat());
        assert_eq!(m.mib_per_hour(), 120.0);
        let leaking = soak_memory(&samples(&[
            50.0, 60.0, 100.0, 100.0, 104.0, 105.0, 106.0, 106.0,
        ]));
        assert!(!leaking.unwrap().flat());
        assert_eq!(soak_memory(&samples(&[1.0; 7])), None);
        // Samples out of order (two runs merged) are not judged.
        let mut mixed = samples(&[1.0; 8]);
        mixed.reverse();
        assert_eq!(soak_memory(&mixed), None);
    }

    #[test]
    fn the_targets_table_judges_memory_when_there_was_a_soak() {
        let mut lines = vec![json!({"scenario": "get:/healthz", "rps": 1000.0, "tag": "sqlite"})];
        let only_healthz = render(&results(&lines), &[]);
        assert!(!only_healthz.contains("memory: RSS"));
        for (i, rss_mib) in [60.0, 90.0, 100.0, 100.0, 110.0, 110.0, 120.0, 120.0]
            .iter()
            .enumerate()
        {
            lines.push(json!({"scenario": "soak-rss", "tag": "soak",
                "elapsed_s": (i + 1) * 30, "rss_kb": rss_mib * 1024.0, "threads": 9,
                "sqlite_heap_bytes": 2_097_152}));
        }
        let out = render(&results(&lines), &[]);
        let row = out
            .lines()
            .find(|l| l.starts_with("| memory: RSS over the 4-minute soak"))
            .expect("memory row");
        assert!(row.contains("100.0 → 120.0 MiB (+20.0%"), "{row}");
        assert!(row.ends_with("| **no** |"), "{row}");
        assert!(out.contains("| 30 | 60.0 | 2.0 | 9 |"), "{out}");
    }

    #[test]
    fn a_bound_is_the_mean_of_its_measurements_with_their_range() {
        let b = Bound::of(&[900.0, 1100.0, 1000.0]).unwrap();
        assert_eq!(b.mean, 1000.0);
        assert_eq!((b.min, b.max, b.count), (900.0, 1100.0, 3));
        assert_eq!(b.describe(0), "1000 /s: mean of 3 on Ward's core, 900–1100");
        assert_eq!(
            Bound::of(&[52.24]).unwrap().describe(1),
            "52.2 /s on Ward's core"
        );
        assert_eq!(Bound::of(&[]), None);
    }

    #[test]
    fn the_es384_target_compares_with_the_mean_of_the_bracketing_bounds_of_its_own_backend() {
        let bound = |tag: &str, v: f64| json!({"scenario": "p384-verify-bound", "tag": tag, "verifies_per_sec": v});
        let es384 = json!({"scenario": "client-credentials:ES384", "tag": "sqlite", "rps": 800.0});
        // 800 against a mean of 1000: 80% ≥ 75%. Against the last measurement alone (1200) it
        // would be 67%, and the other backend's bound must not count.
        let r = results(&[
            bound("sqlite", 800.0),
            es384.clone(),
            bound("sqlite", 1200.0),
            bound("postgres", 5000.0),
        ]);
        let (goal, ok) = target(&r, "sqlite", "client-credentials:ES384");
        assert_eq!(ok, Some(true), "{goal}");
        assert!(goal.contains("1000 /s: mean of 2"), "{goal}");

        let r = results(&[bound("sqlite", 1100.0), es384, bound("sqlite", 1100.0)]);
        assert_eq!(
            target(&r, "sqlite", "client-credentials:ES384").1,
            Some(false)
        );
    }

    #[test]
    fn a_target_without_its_bound_is_not_judged() {
        let r = results(&[json!({"scenario": "login-storm", "tag": "sqlite", "rps": 40.0})]);
        let (goal, ok) = target(&r, "sqlite", "login-storm");
        assert_eq!(ok, None);
        assert!(goal.contains('—'), "{goal}");
    }
}
