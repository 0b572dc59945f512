//! The bench's instruments: one monotonic clock for every thread, CPU time of this process, of
//! one thread and of the server (from /proc), the server's resident memory, the latency
//! histogram, error samples, and the watchdog that bounds every run.
//!
//! The definitions follow the peers harness's load generator (shared/peers/loadgen), so that a
//! figure here means what the same figure means there.

use super::CommonArgs;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Microseconds on a monotonic clock shared by every thread of this process. A publication
/// carries this value; its receiver (same process) subtracts it from its own reading.
pub(crate) fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Raises the open-file limit to the hard limit (each connection is a file) and returns it.
pub(crate) fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).or_else(|_| rlimit::Resource::NOFILE.get_soft()).unwrap_or(1024)
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes only the struct passed.
    #[allow(unsafe_code)]
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// CPU seconds (user + system) of this process so far.
pub(crate) fn process_cpu() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// CPU seconds (user + system) of the calling thread so far.
pub(crate) fn thread_cpu() -> f64 {
    rusage_seconds(libc::RUSAGE_THREAD)
}

/// CPU seconds of another process (all its threads): utime + stime of /proc/PID/stat.
pub(crate) fn pid_cpu(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The command name may hold spaces: the fields we want come after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Resident memory of a process in KiB (VmRSS of /proc/PID/status).
pub(crate) fn pid_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (busy, total) jiffies of the whole machine, from the first line of /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU use over the measured window: this process, the server (with its PID), the machine.
pub(crate) struct CpuWindow {
    started: Instant,
    own: f64,
    server: Option<f64>,
    machine: (u64, u64),
    pid: Option<u32>,
    /// `--also-pid` processes: name, PID, CPU seconds at the start (`None`: not readable).
    also: Vec<(String, u32, Option<f64>)>,
}

impl CpuWindow {
    /// Opens the window now, for the server (`--server-pid`) and the `--also-pid` processes.
    pub(crate) fn start(c: &CommonArgs) -> CpuWindow {
        let pid = c.server_pid;
        CpuWindow {
            started: Instant::now(),
            own: process_cpu(),
            server: pid_cpu(pid),
            machine: machine_jiffies(),
            pid,
            also: c.also_pids.iter().map(|(name, p)| (name.clone(), *p, pid_cpu(Some(*p)))).collect(),
        }
    }

    /// Closes the window now: before connections are torn down, which costs CPU of its own.
    pub(crate) fn stop(&self) -> CpuUse {
        CpuUse {
            wall: self.started.elapsed().as_secs_f64().max(1e-9),
            own: process_cpu() - self.own,
            server: self.server.zip(pid_cpu(self.pid)).map(|(before, after)| after - before),
            machine: (self.machine, machine_jiffies()),
            also: self
                .also
                .iter()
                .map(|(name, pid, before)| {
                    (name.clone(), before.zip(pid_cpu(Some(*pid))).map(|(before, after)| after - before))
                })
                .collect(),
        }
    }
}

/// What a [`CpuWindow`] measured.
pub(crate) struct CpuUse {
    /// Seconds the window lasted.
    pub(crate) wall: f64,
    own: f64,
    server: Option<f64>,
    machine: ((u64, u64), (u64, u64)),
    /// CPU seconds of each `--also-pid` process (`None`: it could not be read).
    also: Vec<(String, Option<f64>)>,
}

impl CpuUse {
    /// The figures: this process's CPU (`thread_max_pct`: its busiest thread's), the server's
    /// (also per unit of work: `per` = (name, count)), the machine's.
    pub(crate) fn json(&self, thread_max_pct: f64, per: (&str, u64)) -> Value {
        let ((busy0, total0), (busy1, total1)) = self.machine;
        let busy_pct =
            100.0 * busy1.saturating_sub(busy0) as f64 / total1.saturating_sub(total0).max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut v = json!({
            "window_s": round(self.wall, 3),
            "cores": cores,
            "bench_cpu_s": round(self.own, 3),
            "bench_cpu_pct": round(100.0 * self.own / self.wall, 1),
            "bench_thread_cpu_max_pct": round(thread_max_pct, 1),
            "machine_busy_pct": round(busy_pct, 1),
        });
        if let Some(server) = self.server {
            v["server_cpu_s"] = json!(round(server, 3));
            v["server_cpu_pct"] = json!(round(100.0 * server / self.wall, 1));
            // Neither ours nor the server's: kernel threads and whatever else ran meanwhile.
            let other = busy_pct * cores as f64 - 100.0 * (server + self.own) / self.wall;
            v["other_cpu_pct"] = json!(round(other.max(0.0), 1));
            if per.1 > 0 {
                v[format!("server_cpu_us_per_{}", per.0)] = json!(round(server * 1e6 / per.1 as f64, 3));
            }
        }
        if !self.also.is_empty() {
            v["also_cpu"] = self.also_json(&[per]);
        }
        v
    }

    /// The `--also-pid` processes' CPU: `{NAME: {cpu_s, cpu_pct, cpu_us_per_UNIT...}}` (a
    /// process whose CPU could not be read: `null`), per unit of each of `per`.
    pub(crate) fn also_json(&self, per: &[(&str, u64)]) -> Value {
        let mut out = serde_json::Map::new();
        for (name, cpu) in &self.also {
            let v = cpu.map(|s| {
                let mut v = json!({"cpu_s": round(s, 3), "cpu_pct": round(100.0 * s / self.wall, 1)});
                for (unit, n) in per.iter().filter(|p| p.1 > 0) {
                    v[format!("cpu_us_per_{unit}")] = json!(round(s * 1e6 / *n as f64, 3));
                }
                v
            });
            out.insert(name.clone(), v.unwrap_or(Value::Null));
        }
        Value::Object(out)
    }
}

/// `x` rounded to `digits` decimals.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// A latency histogram in µs: 1 µs to one hour, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid; qed")
}

/// The percentiles of a latency histogram, or null when it is empty.
pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": round(h.mean(), 1),
    })
}

/// Errors of one kind: all counted, the first few distinct messages kept.
#[derive(Default)]
pub(crate) struct Errors {
    /// How many.
    pub(crate) count: u64,
    /// Up to [`Errors::KEPT`] distinct messages.
    pub(crate) samples: Vec<String>,
}

impl Errors {
    const KEPT: usize = 5;

    /// Counts one error.
    pub(crate) fn add(&mut self, e: impl Into<String>) {
        self.count += 1;
        self.keep(e.into());
    }

    fn keep(&mut self, e: String) {
        if self.samples.len() < Self::KEPT && !self.samples.contains(&e) {
            self.samples.push(e);
        }
    }

    /// Adds another thread's errors.
    pub(crate) fn merge(&mut self, other: Errors) {
        self.count += other.count;
        other.samples.into_iter().for_each(|e| self.keep(e));
    }
}

/// Ends the whole process if the run overstays `limit`, so nothing is left running.
pub(crate) fn watchdog(scenario: &'static str, limit: Duration, json: bool) {
    std::thread::Builder::new()
        .name("bench-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            let e = format!("hard time limit of {:.0} s reached", limit.as_secs_f64());
            if json {
                println!("{}", json!({"scenario": scenario, "error": e}));
            }
            eprintln!("rpchub: bench {scenario}: {e}");
            std::process::exit(3);
        })
        .expect("a thread can be started; qed");
}

/// Polls `done` every 5 ms until it is true (then true) or `deadline` passes (then false).
pub(crate) fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `f(thread)` on `n` threads, each with its own current-thread runtime and `LocalSet`, so
/// a connection's state never crosses threads and needs no lock.
pub(crate) fn spawn_runtimes<T, F, Fut>(n: usize, name: &str, f: F) -> Vec<std::thread::JoinHandle<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = T> + 'static,
{
    (0..n)
        .map(|t| {
            let f = f.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime starts; qed");
                    tokio::task::LocalSet::new().block_on(&rt, f(t))
                })
                .expect("a thread can be started; qed")
        })
        .collect()
}

/// CPU of the calling thread, in % of a core, from now until `until` resolves.
pub(crate) async fn thread_cpu_pct_until(until: impl Future<Output = ()>) -> f64 {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    until.await;
    100.0 * (thread_cpu() - cpu) / wall.elapsed().as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_distinct_samples() {
        let mut e = Errors::default();
        for i in 0..10 {
            e.add(format!("e{}", i % 7));
        }
        e.add("e0");
        assert_eq!(e.count, 11);
        assert_eq!(e.samples, ["e0", "e1", "e2", "e3", "e4"]);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(pid_cpu(Some(pid)).is_some());
        assert!(pid_rss_kib(pid).unwrap() > 0);
        assert!(machine_jiffies().1 > 0);
    }
}
