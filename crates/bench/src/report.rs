//! How a run shows itself: a progress bar on stderr while it lasts (only on a terminal, only
//! once the run has taken a few seconds, never with `--json`), then either one JSON object with
//! every figure or a two-column table of the main ones on stdout.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A run shorter than this shows no progress bar.
const SHOW_AFTER: Duration = Duration::from_secs(2);

/// The progress bar of one run, driven by the thread that waits for the phases to end.
pub(crate) struct Progress {
    bar: ProgressBar,
    /// Whether a bar may be drawn at all (stderr is a terminal and `--json` was not given).
    enabled: bool,
    started: Instant,
    shown: Cell<bool>,
}

impl Progress {
    /// A bar that is drawn only if `enabled`, stderr is a terminal and the run lasts.
    pub(crate) fn new(enabled: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{msg:>12} [{bar:32}] {pos}/{len} {elapsed}")
            .expect("a constant template parses; qed")
            .progress_chars("=> ");
        bar.set_style(style);
        let enabled = enabled && std::io::stderr().is_terminal();
        Progress { bar, enabled, started: Instant::now(), shown: Cell::new(false) }
    }

    /// Starts a phase: `what` is counted up to `len` (connections, or seconds).
    pub(crate) fn phase(&self, what: &'static str, len: u64) {
        self.bar.set_message(what);
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.reveal();
    }

    /// Where the current phase is.
    pub(crate) fn set(&self, pos: u64) {
        self.bar.set_position(pos.min(self.bar.length().unwrap_or(pos)));
        self.reveal();
    }

    /// Sets the position to the whole seconds since `since`.
    pub(crate) fn seconds_since(&self, since: Instant) {
        self.set(since.elapsed().as_secs());
    }

    /// Removes the bar before the results are printed.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn reveal(&self) {
        if self.enabled && !self.shown.get() && self.started.elapsed() >= SHOW_AFTER {
            self.shown.set(true);
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
}

/// The figure at `path` (dot-separated keys) of a result.
pub(crate) fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// An integer figure with thousands separators, or `n/a`.
pub(crate) fn int(v: &Value, path: &str) -> String {
    match get(v, path).as_f64() {
        Some(x) => group(x.round() as i64),
        None => "n/a".into(),
    }
}

/// A figure with `decimals` decimals, or `n/a`.
pub(crate) fn dec(v: &Value, path: &str, decimals: usize) -> String {
    match get(v, path).as_f64() {
        Some(x) => format!("{x:.decimals$}"),
        None => "n/a".into(),
    }
}

/// A figure as plain text: a string without its quotes, anything else as JSON.
pub(crate) fn text(v: &Value, path: &str) -> String {
    match get(v, path) {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A count and, when it is not 0, its breakdown by reason: `3 (close 1008: 2, timed out: 1)`.
pub(crate) fn by_reason(v: &Value, count: &str, reasons: &str) -> String {
    let n = int(v, count);
    let Some(map) = get(v, reasons).as_object().filter(|m| !m.is_empty()) else { return n };
    let parts: Vec<String> = map.iter().map(|(k, c)| format!("{k}: {c}")).collect();
    format!("{n} ({})", parts.join(", "))
}

fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `p50 .. p90 .. p99 .. p99.9 .. max ..` of the `latency_us` figures, in µs.
pub(crate) fn latency(v: &Value) -> String {
    if v["latency_us"].is_null() {
        return "n/a (nothing measured)".into();
    }
    let keys = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max")];
    keys.iter()
        .map(|(name, k)| format!("{name} {}", int(v, &format!("latency_us.{k}"))))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Error samples (a JSON array of strings) as one line, if any.
pub(crate) fn samples(v: &Value, key: &str) -> Option<String> {
    let s: Vec<&str> = v[key].as_array()?.iter().filter_map(Value::as_str).collect();
    (!s.is_empty()).then(|| s.join("; "))
}

/// The CPU rows every scenario shows: the server's (with `--server-pid`), each `--also-pid`
/// process's (named by its NAME), then the bench's.
pub(crate) fn cpu_rows<'a>(v: &'a Value, unit: &str) -> Vec<(&'a str, String)> {
    let mut rows = Vec::new();
    if v["server_cpu_pct"].is_number() {
        let per = format!("server_cpu_us_per_{unit}");
        rows.push((
            "server CPU",
            format!("{}% of a core, {} µs per {unit}", dec(v, "server_cpu_pct", 1), dec(v, &per, 2)),
        ));
    }
    if let Some(also) = v["also_cpu"].as_object() {
        for (name, a) in also {
            let per = format!("cpu_us_per_{unit}");
            let line = match a.is_null() {
                true => "not readable".to_string(),
                false => {
                    format!("CPU {}% of a core, {} µs per {unit}", dec(a, "cpu_pct", 1), dec(a, &per, 2))
                }
            };
            rows.push((name.as_str(), line));
        }
    }
    rows.push((
        "bench CPU",
        format!(
            "{}% of a core (busiest thread {}%); machine {}% busy",
            dec(v, "bench_cpu_pct", 1),
            dec(v, "bench_thread_cpu_max_pct", 1),
            dec(v, "machine_busy_pct", 0)
        ),
    ));
    rows
}

/// Prints `title` and the rows, names left-aligned in one column.
pub(crate) fn print_table(title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    println!("{title}");
    println!();
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_figures() {
        let v = json!({"a": {"b": 1234567.4}, "n": -1000, "latency_us": {"p50": 10, "p90": 20, "p99": 30, "p999": 40, "max": 5000}});
        assert_eq!(int(&v, "a.b"), "1,234,567");
        assert_eq!(int(&v, "n"), "-1,000");
        assert_eq!(int(&v, "missing"), "n/a");
        assert_eq!(dec(&v, "a.b", 1), "1234567.4");
        assert_eq!(latency(&v), "p50 10  p90 20  p99 30  p99.9 40  max 5,000");
        assert_eq!(samples(&json!({"e": ["x", "y"]}), "e").as_deref(), Some("x; y"));
        assert_eq!(samples(&json!({"e": []}), "e"), None);
        let r = json!({"n": 3, "why": {"close 1008": 2, "timed out": 1}, "none": {}, "s": "a:b"});
        assert_eq!(by_reason(&r, "n", "why"), "3 (close 1008: 2, timed out: 1)");
        assert_eq!(by_reason(&r, "n", "none"), "3");
        assert_eq!(text(&r, "s"), "a:b");
    }
}
