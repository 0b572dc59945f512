//! `rpchub bench`: a load generator for sizing a deployment, run against a node it does not
//! start (`rpchub bench fanout|market|rpc|idle|storm [options]`). The `rpchub` binary parses
//! [`BenchArgs`] and calls [`run`]; this crate talks to the node over the network only and does
//! not depend on the server library.
//!
//! - [`fanout`]: N subscribers on one channel, one publisher; deliveries/s, publish-to-receive
//!   latency, and per-subscriber offset accounting (lost, gaps, duplicates).
//! - [`market`]: C channels, N connections each on K of them (uniform or Zipf-skewed), P
//!   publishers; the same figures per (connection, channel) subscription.
//! - [`rpc`]: closed-loop calls on C connections; calls/s and latency.
//! - [`idle`]: N idle subscribed connections; the server's memory per connection.
//! - [`storm`]: N clients connect, subscribe, get the snapshot and leave; connects/s. With
//!   `--since`, a reconnect storm (`reconnect`): N subscribed clients are cut at once and come
//!   back with `since`; the time until all have recovered every missed publication.
//!
//! The figures mean what the same figures of the peers harness's load generator mean (same
//! definitions, same measuring method), so a deployment sized here compares with the published
//! comparisons. Every run is bounded in time and ends by itself (a watchdog stops the process if
//! it overstays); connections come from 127.B.x.y source addresses, at most `--per-ip` each, so
//! neither the server's per-IP upgrade limit nor the ephemeral port range limits a run.
//!
//! Files: one per scenario; `subscriber` and `publisher` are fanout's two sides; `client`
//! (the target, source addresses) and `socket` (a lean receiving WebSocket) connect; `measure`
//! holds the clocks, CPU and memory readings; `report` the progress bar and the table.

#![forbid(unsafe_op_in_unsafe_fn)]

mod client;
mod counts;
pub use counts::LoadArgs;
pub mod fanout;
pub mod idle;
pub mod market;
mod measure;
mod publisher;
mod reconnect;
mod report;
pub mod rpc;
mod socket;
pub mod storm;
mod subscriber;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::sync::Arc;

/// The URL a bench loads unless told otherwise: a local node's default address.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:7410/ws/rpc";

/// `rpchub bench`: the scenario to run and the options every scenario takes.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Options of every scenario (accepted before or after the scenario's name).
    #[command(flatten)]
    pub common: CommonArgs,
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// What to measure.
#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// N subscribers, one publisher: deliveries/s, latency, lost/gaps/duplicates.
    Fanout(fanout::FanoutArgs),
    /// C channels, N connections x K subscriptions, P publishers: an exchange feed's load.
    Market(market::MarketArgs),
    /// Closed-loop calls on C connections: calls/s, latency, errors.
    Rpc(rpc::RpcArgs),
    /// N idle subscribed connections: the server's memory per connection (--server-pid).
    Idle(idle::IdleArgs),
    /// N clients connect, subscribe, get the snapshot and leave: connects/s, setup latency.
    Storm(storm::StormArgs),
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout(_) => "fanout",
            Scenario::Market(_) => "market",
            Scenario::Rpc(_) => "rpc",
            Scenario::Idle(_) => "idle",
            Scenario::Storm(_) => "storm",
        }
    }
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Options of every scenario")]
pub struct CommonArgs {
    /// WebSocket URL of the node.
    #[arg(long, global = true, default_value = DEFAULT_URL)]
    pub url: String,
    /// Allow a URL whose host is not a loopback address (then connections come from the
    /// kernel's choice of source address and per-IP limits apply).
    #[arg(long, global = true)]
    pub allow_remote: bool,
    /// Token sent as `Authorization: Bearer` on every upgrade (publishing needs rights; the
    /// admin token also has no per-connection call rate).
    #[arg(long, global = true, env = "RPCHUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PID of the node, to report its CPU time (and, for idle, its memory).
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Another process to report the CPU time of, over the same window, as NAME=PID (a second
    /// node, the Redis behind the nodes: `--also-pid redis=4242`); may be repeated.
    #[arg(long = "also-pid", global = true, value_name = "NAME=PID", value_parser = named_pid)]
    pub also_pids: Vec<(String, u32)>,
    /// Client threads, each with its own single-threaded runtime (default: one per core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Print one JSON object with every figure instead of the table (and no progress bar).
    #[arg(long, global = true)]
    pub json: bool,
    /// Connections per generated source address 127.B.x.y (0: all from the kernel's choice).
    #[arg(long, global = true, default_value_t = 90)]
    pub per_ip: usize,
    /// Connection attempts in flight at once, over all threads.
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds allowed for opening (and subscribing) all connections.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub setup_seconds: f64,
}

impl CommonArgs {
    /// Client threads to run.
    fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
    }

    /// Connection attempts in flight per thread.
    fn connect_permits(&self, threads: usize) -> usize {
        (self.connect_concurrency / threads).max(1)
    }
}

/// `NAME=PID`, for `--also-pid`.
fn named_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or_else(|| format!("{s}: give NAME=PID"))?;
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(format!("{s}: NAME is letters, digits, '-' and '_'"));
    }
    Ok((name.to_string(), pid.parse().map_err(|_| format!("{s}: PID is a number"))?))
}

/// Why a bench did not run or did not measure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options cannot be run (bad URL, remote host, too many connections for the limits).
    #[error("bench: {0}")]
    Usage(String),
    /// The run measured nothing worth reporting (no connection subscribed, nothing accepted).
    #[error("bench {scenario}: {reason}")]
    Failed {
        /// The scenario.
        scenario: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Runs one scenario and prints its figures: a table, or one JSON object with `--json`.
/// Blocks until the run is over (each scenario starts its own client threads), so call it from
/// a thread that may block.
pub fn run(args: BenchArgs) -> Result<(), Error> {
    measure::now_us();
    let (c, scenario) = (&args.common, args.scenario.name());
    let outcome = client::Target::new(c).and_then(|target| {
        let target = Arc::new(target);
        let progress = report::Progress::new(!c.json);
        let result = match &args.scenario {
            Scenario::Fanout(a) => fanout::run(c, target, a, &progress),
            Scenario::Market(a) => market::run(c, target, a, &progress),
            Scenario::Rpc(a) => rpc::run(c, target, a, &progress),
            Scenario::Idle(a) => idle::run(c, target, a, &progress),
            Scenario::Storm(a) => storm::run(c, target, a, &progress),
        };
        progress.finish();
        result
    });
    let figures = match outcome {
        Ok(v) => v,
        Err(e) => {
            if c.json {
                println!("{}", json!({"scenario": scenario, "url": c.url, "error": e.to_string()}));
            }
            return Err(e);
        }
    };
    if c.json {
        println!("{figures}");
    } else {
        match &args.scenario {
            Scenario::Fanout(_) => fanout::table(&figures),
            Scenario::Market(_) => market::table(&figures),
            Scenario::Rpc(_) => rpc::table(&figures),
            Scenario::Idle(_) => idle::table(&figures),
            Scenario::Storm(a) if a.since => reconnect::table(&figures),
            Scenario::Storm(_) => storm::table(&figures),
        }
    }
    match figures.get("error").and_then(Value::as_str) {
        Some(reason) => Err(Error::Failed { scenario, reason: reason.to_string() }),
        None => Ok(()),
    }
}

/// Adds the fields of `more` (an object) to `out` (an object).
fn extend(out: &mut Value, more: Value) {
    if let (Some(out), Value::Object(more)) = (out.as_object_mut(), more) {
        out.extend(more);
    }
}

/// Refuses a run that needs more connections than the open-file limit allows.
fn check_files(connections: usize) -> Result<(), Error> {
    let limit = measure::raise_nofile();
    match connections as u64 + 64 > limit {
        true => Err(Error::Usage(format!(
            "{connections} connections need more than the open-file limit ({limit}); raise it (ulimit -n)"
        ))),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn also_pids_are_named() {
        assert_eq!(named_pid("redis=4242"), Ok(("redis".to_string(), 4242)));
        assert_eq!(named_pid("node-b=7"), Ok(("node-b".to_string(), 7)));
        for bad in ["redis", "=1", "redis=x", "a b=1", "redis=-1"] {
            assert!(named_pid(bad).is_err(), "{bad}");
        }
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let argv = ["bench", "rpc", "--also-pid", "redis=1", "--also-pid", "b=2"];
        let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap();
        assert_eq!(cli.bench.common.also_pids, vec![("redis".to_string(), 1), ("b".to_string(), 2)]);
    }
}
