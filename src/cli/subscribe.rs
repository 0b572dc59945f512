//! `rpchub subscribe URL CHANNEL...`: follows channels on one connection and prints every event
//! as one JSON line, across disconnects and server restarts.
//!
//! The printed lines are the promise: after a reconnect each channel is subscribed again with
//! `since` = the last position printed for it, so the server's snapshot carries exactly what
//! was missed (printed as publication lines, in order) and nothing printed before is printed
//! again. When the server cannot recover (`recovered:false`: the history no longer reaches
//! back, or the epoch changed), one `warning:` line on stderr names what was lost and the
//! command goes on from the new snapshot. A refusal that trying again cannot fix (401, 403, a
//! JSON-RPC error on `subscribe` such as an unknown or forbidden channel) ends the command
//! with its reason; anything else (the connection cut, the server restarting) is retried with
//! backoff.

use super::conn::{Conn, Refused, error_line};
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

/// The first wait before reconnecting; it doubles after each failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Each wait is drawn within this fraction either side, so clients cut at the same moment do
/// not all come back at the same moment.
const JITTER: f64 = 0.2;

/// JSON-RPC error codes on `subscribe` that are worth retrying: the server is busy or its
/// broker is away, not refusing the caller. Every other error ends the command.
const TEMPORARY_CODES: [i64; 2] = [-32003, -32008];

/// Closed reasons after which subscribing again cannot help.
const FINAL_REASONS: [&str; 1] = ["pattern_too_broad"];

/// A position in a channel's stream: the last one printed.
#[derive(Debug, Clone)]
struct Position {
    epoch: String,
    offset: u64,
    /// The index of the channel argument (a name or a pattern) whose subscription delivered
    /// the channel.
    arg: usize,
}

/// What the command follows and how far it has printed.
#[derive(Debug)]
struct Follower {
    url: String,
    token: Option<String>,
    /// The CHANNEL arguments, names or patterns.
    args: Vec<String>,
    /// Per channel name, the last position printed.
    printed: HashMap<String, Position>,
}

/// Why a connection's session ended.
enum End {
    /// The connection was lost: reconnect.
    Lost(anyhow::Error),
    /// A refusal that retrying cannot fix: exit with it.
    Fatal(anyhow::Error),
    /// Stdout was closed (`| head`): exit quietly.
    StdoutClosed,
}

/// Runs `rpchub subscribe` until SIGINT or SIGTERM (exit 0) or a fatal refusal.
pub(crate) async fn run(
    url: &str,
    channels: Vec<String>,
    since: Option<String>,
    token: Option<String>,
) -> Result<()> {
    let mut f = Follower { url: url.to_string(), token, args: channels, printed: HashMap::new() };
    if let Some(s) = since {
        if f.args.len() != 1 || f.args[0].contains('*') {
            bail!(
                "--since takes one channel name (a position is per channel); subscribe to the others separately"
            );
        }
        let (epoch, offset) =
            s.rsplit_once(':').ok_or_else(|| anyhow!("--since {s}: expected EPOCH:OFFSET"))?;
        let offset = offset.parse().map_err(|_| anyhow!("--since {s}: the offset is not a number"))?;
        f.printed.insert(f.args[0].clone(), Position { epoch: epoch.to_string(), offset, arg: 0 });
    }
    tokio::select! {
        r = f.follow() => r,
        _ = rpchub::shutdown::signal() => Ok(()),
    }
}

impl Follower {
    /// Connects, follows, and reconnects with backoff until a fatal end.
    async fn follow(&mut self) -> Result<()> {
        let mut failures = 0u32;
        loop {
            let mut subscribed = false;
            let end = match Conn::connect(&self.url, self.token.as_deref()).await {
                Ok(conn) => self.session(conn, &mut subscribed).await,
                Err(e) => match e.downcast_ref::<Refused>() {
                    Some(r) if !r.is_temporary() => End::Fatal(e),
                    _ => End::Lost(e),
                },
            };
            match end {
                End::Fatal(e) => return Err(e),
                End::StdoutClosed => return Ok(()),
                End::Lost(e) => {
                    if subscribed {
                        failures = 0;
                    }
                    let wait = backoff(failures);
                    failures = failures.saturating_add(1);
                    eprintln!("rpchub: {e:#}; reconnecting in {} ms", wait.as_millis());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One connection: subscribes to every argument, then prints events until it ends.
    /// `subscribed` turns true once every subscription was accepted (the backoff resets).
    async fn session(&mut self, mut conn: Conn, subscribed: &mut bool) -> End {
        // Request id -> argument index, then subscription id -> argument index.
        let mut pending: HashMap<u64, usize> = HashMap::new();
        let mut subs: HashMap<String, usize> = HashMap::new();
        for arg in 0..self.args.len() {
            match conn.send_request("subscribe", Some(self.params(arg))).await {
                Ok(id) => pending.insert(id, arg),
                Err(e) => return End::Lost(e),
            };
        }
        loop {
            let msg = match conn.next().await {
                Ok(Some(m)) => m,
                Ok(None) => return End::Lost(anyhow!(conn.ended())),
                Err(e) => return End::Lost(e),
            };
            if let Some(id) = msg.get("id").and_then(Value::as_u64) {
                let Some(arg) = pending.remove(&id) else { continue };
                if let Some(err) = msg.get("error") {
                    let line = format!("subscribe {}: {}", self.args[arg], error_line(err));
                    let code = err["code"].as_i64().unwrap_or(0);
                    return if TEMPORARY_CODES.contains(&code) {
                        End::Lost(anyhow!(line))
                    } else {
                        End::Fatal(anyhow!(line))
                    };
                }
                match msg["result"].as_str() {
                    Some(sub) => subs.insert(sub.to_string(), arg),
                    None => {
                        return End::Fatal(anyhow!("subscribe {}: unexpected answer {msg}", self.args[arg]));
                    }
                };
                *subscribed = pending.is_empty();
                continue;
            }
            if msg["method"] != "subscription" {
                continue;
            }
            let params = &msg["params"];
            let event = &params["result"];
            let Some(&arg) = params["subscription"].as_str().and_then(|s| subs.get(s)) else {
                // One the server made unasked (a user channel's `auto_subscribe`): printed, not
                // followed across reconnects (the server makes it again at connect).
                if print(event).is_err() {
                    return End::StdoutClosed;
                }
                continue;
            };
            if event["type"] == "closed" {
                // The server ended this subscription: say so, and take it up again from
                // where the printing stopped, as after a reconnect.
                if print(event).is_err() {
                    return End::StdoutClosed;
                }
                let reason = event["reason"].as_str().unwrap_or("");
                if FINAL_REASONS.contains(&reason) {
                    return End::Fatal(anyhow!(
                        "{}: the server closed the subscription: {reason}",
                        self.args[arg]
                    ));
                }
                subs.retain(|_, a| *a != arg);
                match conn.send_request("subscribe", Some(self.params(arg))).await {
                    Ok(id) => pending.insert(id, arg),
                    Err(e) => return End::Lost(e),
                };
                continue;
            }
            if self.on_event(arg, event).is_err() {
                return End::StdoutClosed;
            }
        }
    }

    /// The `subscribe` params of argument `arg`: with `since` the last printed position, for a
    /// pattern a map of them by channel.
    fn params(&self, arg: usize) -> Value {
        let name = &self.args[arg];
        let pos = |p: &Position| json!({"epoch": p.epoch, "offset": p.offset});
        let mut params = json!({"channel": name});
        if name.contains('*') {
            let since: serde_json::Map<String, Value> =
                self.printed.iter().filter(|(_, p)| p.arg == arg).map(|(c, p)| (c.clone(), pos(p))).collect();
            if !since.is_empty() {
                params["since"] = Value::Object(since);
            }
        } else if let Some(p) = self.printed.get(name) {
            params["since"] = pos(p);
        }
        params
    }

    /// Prints one event of argument `arg`'s subscription and moves its channel's position.
    fn on_event(&mut self, arg: usize, event: &Value) -> std::io::Result<()> {
        let Some(channel) = event["channel"].as_str().map(str::to_string) else { return print(event) };
        match event["type"].as_str() {
            Some("snapshot") => {
                let epoch = event["epoch"].as_str().unwrap_or_default().to_string();
                let previous = self.printed.get(&channel).cloned();
                if let Some(p) = &previous
                    && event["recovered"] != true
                {
                    eprintln!("warning: {channel}: {}", missed(p, event));
                }
                print(event)?;
                // Its publications, each as a line of its own, so every publication is one
                // publication line whether it came live or in a snapshot.
                let same_epoch = previous.as_ref().is_some_and(|p| p.epoch == epoch);
                let after = previous.as_ref().filter(|_| same_epoch).map_or(0, |p| p.offset);
                for p in event["publications"].as_array().into_iter().flatten() {
                    if p["offset"].as_u64().is_some_and(|o| o <= after) {
                        continue;
                    }
                    let mut line = json!({"type": "publication", "channel": channel});
                    if let (Value::Object(line), Value::Object(p)) = (&mut line, p) {
                        line.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    print(&line)?;
                }
                let offset = event["offset"].as_u64().unwrap_or(0);
                self.printed.insert(channel, Position { epoch, offset, arg });
            }
            Some("gap") => {
                print(event)?;
                if let (Some(p), Some(to)) = (self.printed.get_mut(&channel), event["to"].as_u64()) {
                    p.offset = p.offset.max(to);
                }
            }
            _ => match (self.printed.get_mut(&channel), event["offset"].as_u64()) {
                // A publication (or a conflated one, or an event name of its own): printed
                // once, in offset order.
                (Some(p), Some(offset)) if event.get("data").is_some() => {
                    if offset > p.offset {
                        p.offset = offset;
                        print(event)?;
                    }
                }
                _ => print(event)?,
            },
        }
        Ok(())
    }
}

/// Writes `v` as one line and flushes it, so a pipe sees each event as it comes.
fn print(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()
}

/// What a `recovered:false` snapshot after `from` says was lost, in words.
fn missed(from: &Position, snapshot: &Value) -> String {
    let epoch = snapshot["epoch"].as_str().unwrap_or("?");
    let first = snapshot["earliest"]["offset"]
        .as_u64()
        .or_else(|| snapshot["publications"][0]["offset"].as_u64())
        .unwrap_or_else(|| snapshot["offset"].as_u64().unwrap_or(0) + 1);
    if epoch != from.epoch {
        format!(
            "not recovered: the epoch changed from {} to {epoch} (the channel's history was lost, e.g. a server \
             restart); any publications after {}:{} are lost, going on with epoch {epoch} from offset {first}",
            from.epoch, from.epoch, from.offset
        )
    } else if first > from.offset + 1 {
        format!(
            "not recovered: offsets {}..={} of epoch {epoch} are no longer in history and were missed",
            from.offset + 1,
            first - 1
        )
    } else {
        format!(
            "not recovered from {}:{}; the server sent the retained history instead",
            from.epoch, from.offset
        )
    }
}

/// The wait before attempt `failures + 1`: 100 ms doubling to 5 s, with +-20 % jitter.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(1u32 << failures.min(16)).min(BACKOFF_MAX);
    let unit = f64::from(rand::random::<u32>()) / f64::from(u32::MAX);
    base.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        for (failures, base) in [(0, 100), (1, 200), (2, 400), (5, 3200), (6, 5000), (40, 5000)] {
            let d = backoff(failures).as_millis() as f64;
            assert!(d >= base as f64 * 0.8 - 1.0 && d <= base as f64 * 1.2 + 1.0, "{failures}: {d}");
        }
    }

    #[test]
    fn what_was_missed_is_named() {
        let from = Position { epoch: "a".into(), offset: 10, arg: 0 };
        let new_epoch =
            json!({"epoch": "b", "offset": 2, "recovered": false, "publications": [{"offset": 1}]});
        assert!(missed(&from, &new_epoch).contains("from a to b"), "{}", missed(&from, &new_epoch));
        let trimmed =
            json!({"epoch": "a", "offset": 90, "recovered": false, "earliest": {"epoch": "a", "offset": 41}});
        assert!(missed(&from, &trimmed).contains("offsets 11..=40"), "{}", missed(&from, &trimmed));
    }
}
