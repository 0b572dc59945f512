//! Lifecycle hooks: the backend is told of every WebSocket connection and subscription of the
//! node, at least once, without a client ever waiting for it.
//!
//! The events named in `backend.hooks` (`connect`, `disconnect` with its reason, `subscribe`,
//! `unsubscribe` with its reason) are POSTed to `{url}/hooks` as JSON arrays of
//! `{"event","client","user"?,"channel"?,"reason"?,"ts","node","seq"}`. `seq` grows by 1 per
//! event on the node from 1; a restarted node starts again at 1, with a `presence`.
//!
//! - **Never delaying a client.** [`Hooks`] is the subscription service's [`LifecycleHook`]: an
//!   event is serialized and pushed on a bounded queue under a short lock, and one task of the
//!   node (the flusher) posts it later.
//! - **Batched.** The flusher posts at most [`BATCH`] events at once, when that many wait or
//!   when the oldest has waited [`LATE`].
//! - **Retried.** An event leaves the queue only when a POST carrying it was answered 2xx. A
//!   failed POST (refused, timed out after `backend.timeout`, any other status) is made again,
//!   with the queue's oldest events, after a backoff from [`RETRY_FIRST`] doubling to
//!   [`RETRY_MAX`], for as long as the node lives. Events go out in `seq` order.
//! - **Bounded.** Beyond `backend.hooks_queue` events the oldest is dropped. Metrics:
//!   `rpchub_hook_events_total{outcome}` counts `sent` (taken by the backend), `retried` (once
//!   per event per POST made again) and `dropped`; `rpchub_hook_queue` is the queue's length.
//! - **Reconciled.** At start and every `backend.hooks_reconcile`, the node queues
//!   `{"event":"presence","node","seq","ts","clients":[{"client","user"?,"channels":[...]}]}`:
//!   every client it holds, with a channel once per subscription. It is an element of the same
//!   arrays, in the same `seq` order: it describes the node after every event of a lower `seq`,
//!   so a backend that missed events (it was down past the queue's bound, the node crashed)
//!   replaces what it knows of the node with it and applies the later events on top.
//! - **Flushed on shutdown.** [`Hooks::flush`] posts what waits at once, without the batching
//!   delay; the server calls it once the connections have closed (their `disconnect`s queued)
//!   and then [`Hooks::stop`]s the tasks.
//!
//! Events of a client come between its `connect` and its `disconnect`: a subscription that a
//! client's connection did not announce (it went live as the connection ended) is not told.

use super::Backend;
use crate::broker::memory::now_ms;
use crate::session::{Lifecycle, LifecycleHook, Session};
use crate::transport::Ending;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most events in one POST.
pub const BATCH: usize = 100;
/// Longest an event waits for others to share its POST.
pub const LATE: Duration = Duration::from_secs(1);
/// The wait before the first retry of a failed POST.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// The reason of a `disconnect` event: `client` (the client closed or left), `slow_consumer`
/// (it did not read: its queue overflowed or its socket took nothing), `ping_timeout`,
/// `shutdown`, or `kicked` (the server ended it for what it sent: a flood, a message too big,
/// a broken protocol, a binary frame, ...).
pub fn disconnect_reason(ending: Option<Ending>) -> &'static str {
    match Ending::described(ending).1 {
        "client" => "client",
        "slow_consumer" | "write_stalled" => "slow_consumer",
        reason @ ("ping_timeout" | "shutdown") => reason,
        // The server ended it, for what the client sent or anything else it decided.
        _ => "kicked",
    }
}

/// An event waiting to be posted.
#[derive(Debug)]
struct Queued {
    seq: u64,
    /// When it was queued, for [`LATE`].
    at: Instant,
    /// Its JSON object; shared with a POST being made.
    json: Arc<str>,
}

/// What the node holds of a client, for `presence`.
#[derive(Debug)]
struct Client {
    id: String,
    user: Option<String>,
    /// Channel -> live subscriptions to it.
    channels: BTreeMap<String, u32>,
}

/// Everything behind the lock: the queue, the sequence and the clients, together so that an
/// event's `seq`, its place in the queue and its effect on `presence` agree.
#[derive(Debug, Default)]
struct State {
    /// The last `seq` given.
    seq: u64,
    /// In `seq` order.
    queue: VecDeque<Queued>,
    /// By session id: the clients connected and not yet disconnected.
    clients: HashMap<u64, Client>,
}

/// One lifecycle event on the wire.
#[derive(Serialize)]
struct Event<'a> {
    event: &'static str,
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    ts: u64,
    node: &'a str,
    seq: u64,
}

/// The reconciliation event on the wire.
#[derive(Serialize)]
struct Presence<'a> {
    event: &'static str,
    node: &'a str,
    seq: u64,
    ts: u64,
    clients: Vec<PresenceClient<'a>>,
}

/// One client in a `presence`.
#[derive(Serialize)]
struct PresenceClient<'a> {
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    channels: Vec<&'a str>,
}

/// The lifecycle hooks of a node: the queue, and the two tasks that post it and reconcile.
#[derive(Debug)]
pub struct Hooks {
    backend: Arc<Backend>,
    /// Which of `connect`, `disconnect`, `subscribe`, `unsubscribe` are sent.
    wanted: [bool; 4],
    /// `backend.hooks_queue`.
    bound: usize,
    /// Held for a push or a take, never across an await. The only lock of this module, taken
    /// after the caller let go of the session's subscription set; inside it, only the
    /// session's principal is read.
    state: Mutex<State>,
    /// An event was queued (or [`Hooks::flush`] asks for haste): wakes the flusher.
    wake: Notify,
    /// A POST was taken: wakes [`Hooks::flush`].
    progress: Notify,
    /// Set by [`Hooks::flush`]: post what waits without the batching delay.
    hurry: AtomicBool,
    /// Stops both tasks.
    stop: CancellationToken,
}

impl Hooks {
    /// The hooks of `backend`, if it asks for any, with their tasks started on the current
    /// runtime. The first `presence` is queued at once.
    pub fn start(backend: &Arc<Backend>) -> Option<Arc<Hooks>> {
        let config = backend.config();
        if config.hooks.is_empty() {
            return None;
        }
        let hooks = Arc::new(Hooks {
            backend: backend.clone(),
            wanted: ["connect", "disconnect", "subscribe", "unsubscribe"].map(|e| config.hooks(e)),
            bound: config.hooks_queue.max(1),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            progress: Notify::new(),
            hurry: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        // Before any connection: the node's first event says whom it holds (nobody).
        hooks.presence();
        tokio::spawn(hooks.clone().flusher());
        tokio::spawn(hooks.clone().reconciler());
        Some(hooks)
    }

    /// Posts what waits now, and waits until every event queued before the call was taken
    /// (or dropped), at most `within`; false if some were still waiting then.
    pub async fn flush(&self, within: Duration) -> bool {
        let target = self.state.lock().seq;
        self.hurry.store(true, Ordering::Release);
        self.wake.notify_one();
        let deadline = Instant::now() + within;
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if self.state.lock().queue.front().is_none_or(|e| e.seq > target) {
                return true;
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return false;
            }
        }
    }

    /// Stops posting and reconciling (the node is shutting down); what waits is lost.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Events waiting to be posted.
    pub fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Gives the next `seq`.
    fn next_seq(st: &mut State) -> u64 {
        st.seq += 1;
        st.seq
    }

    /// Queues `json`, the event of `seq` (the last given), dropping the oldest beyond the bound.
    fn enqueue(&self, st: &mut State, seq: u64, json: String) {
        let metrics = &self.backend.metrics.backend;
        while st.queue.len() >= self.bound {
            st.queue.pop_front();
            metrics.hook_events("dropped", 1);
        }
        st.queue.push_back(Queued { seq, at: Instant::now(), json: json.into() });
        metrics.hook_queue.set(st.queue.len() as i64);
        if st.queue.len() == 1 || st.queue.len() >= BATCH {
            self.wake.notify_one();
        }
    }

    /// Queues event `event` of `client`, if the backend asked for it.
    fn push(
        &self,
        st: &mut State,
        event: &'static str,
        client: &Client,
        channel: Option<&str>,
        reason: Option<&'static str>,
    ) {
        let wanted = match event {
            "connect" => self.wanted[0],
            "disconnect" => self.wanted[1],
            "subscribe" => self.wanted[2],
            _ => self.wanted[3],
        };
        if !wanted {
            return;
        }
        let seq = Self::next_seq(st);
        let e = Event {
            event,
            client: &client.id,
            user: client.user.as_deref(),
            channel,
            reason,
            ts: now_ms(),
            node: self.backend.node_id(),
            seq,
        };
        let json = serde_json::to_string(&e).expect("an event serializes; qed");
        self.enqueue(st, seq, json);
    }

    /// Queues a `presence` of every client the node holds.
    fn presence(&self) {
        let mut st = self.state.lock();
        let seq = Self::next_seq(&mut st);
        let clients = st
            .clients
            .values()
            .map(|c| PresenceClient {
                client: &c.id,
                user: c.user.as_deref(),
                channels: c
                    .channels
                    .iter()
                    .flat_map(|(ch, n)| std::iter::repeat_n(ch.as_str(), *n as usize))
                    .collect(),
            })
            .collect();
        let p = Presence { event: "presence", node: self.backend.node_id(), seq, ts: now_ms(), clients };
        let json = serde_json::to_string(&p).expect("a presence serializes; qed");
        self.enqueue(&mut st, seq, json);
    }

    /// The user of `session` as the backend is told it.
    fn user(session: &Session) -> Option<String> {
        let p = session.principal();
        p.is_authenticated().then(|| p.subject.clone())
    }

    /// Resolves when a POST is due (false: stopped): [`BATCH`] events wait, or the oldest has
    /// waited [`LATE`], or a flush asks for haste.
    async fn due(&self) -> bool {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let oldest = {
                let st = self.state.lock();
                match st.queue.front() {
                    Some(_) if st.queue.len() >= BATCH || self.hurry.load(Ordering::Acquire) => {
                        return true;
                    }
                    front => front.map(|e| e.at + LATE),
                }
            };
            match oldest {
                Some(at) if at <= Instant::now() => return true,
                Some(at) => tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.stop.cancelled() => return false,
                },
                None => tokio::select! {
                    _ = woken => {}
                    _ = self.stop.cancelled() => return false,
                },
            }
        }
    }

    /// Posts the queue, oldest first, until stopped.
    async fn flusher(self: Arc<Self>) {
        let metrics = &self.backend.metrics.backend;
        let mut backoff = RETRY_FIRST;
        // Every event up to this `seq` has been in a POST that failed.
        let mut failed_upto = 0;
        loop {
            if !self.due().await {
                return;
            }
            let batch: Vec<(u64, Arc<str>)> = {
                let st = self.state.lock();
                let batch: Vec<_> = st.queue.iter().take(BATCH).map(|e| (e.seq, e.json.clone())).collect();
                let again = batch.iter().filter(|(seq, _)| *seq <= failed_upto).count();
                if again > 0 {
                    metrics.hook_events("retried", again as u64);
                }
                batch
            };
            let Some(&(last, _)) = batch.last() else { continue };
            let outcome = tokio::select! {
                r = self.post(&batch) => r,
                _ = self.stop.cancelled() => return,
            };
            match outcome {
                Ok(()) => {
                    let taken = {
                        let mut st = self.state.lock();
                        let before = st.queue.len();
                        while st.queue.front().is_some_and(|e| e.seq <= last) {
                            st.queue.pop_front();
                        }
                        metrics.hook_queue.set(st.queue.len() as i64);
                        before - st.queue.len()
                    };
                    metrics.hook_events("sent", taken as u64);
                    if backoff > RETRY_FIRST {
                        tracing::info!("the backend takes lifecycle hook events again");
                    }
                    backoff = RETRY_FIRST;
                    self.progress.notify_waiters();
                }
                Err(why) => {
                    if backoff == RETRY_FIRST {
                        tracing::warn!(
                            queued = self.queued(),
                            "lifecycle hook events not taken ({why}); retrying, the oldest dropped \
                             beyond backend.hooks_queue ({})",
                            self.bound
                        );
                    }
                    failed_upto = failed_upto.max(last);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One POST of `batch` as a JSON array; `Ok` when answered 2xx within `backend.timeout`.
    async fn post(&self, batch: &[(u64, Arc<str>)]) -> Result<(), String> {
        let mut body = Vec::with_capacity(2 + batch.iter().map(|(_, j)| j.len() + 1).sum::<usize>());
        body.push(b'[');
        for (i, (_, json)) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(json.as_bytes());
        }
        body.push(b']');
        // No client's headers: a batch speaks of many clients.
        let req = self.backend.post_with("/hooks", body, &[]);
        let config = self.backend.config();
        let answer = tokio::time::timeout(config.timeout, async {
            let resp = req.send().await.map_err(|e| super::unreachable("the backend", &e))?;
            let status = resp.status();
            // Read (within the bound) so that the connection goes back to the pool.
            let _ = super::read_bounded(resp, config.max_body_bytes).await;
            match status.is_success() {
                true => Ok(()),
                false => Err(format!("the backend answered HTTP {}", status.as_u16())),
            }
        });
        answer
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?} (backend.timeout)", config.timeout)))
    }

    /// Queues a `presence` every `backend.hooks_reconcile` (the first was queued at start),
    /// until stopped.
    async fn reconciler(self: Arc<Self>) {
        let period = self.backend.config().hooks_reconcile;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.presence(),
                _ = self.stop.cancelled() => return,
            }
        }
    }
}

impl LifecycleHook for Hooks {
    fn event(&self, e: &Lifecycle<'_>) {
        let mut st = self.state.lock();
        let st = &mut *st;
        match *e {
            Lifecycle::Connected { session } => {
                let client = Client {
                    id: self.backend.client_id(session),
                    user: Self::user(session),
                    channels: BTreeMap::new(),
                };
                self.push(st, "connect", &client, None, None);
                st.clients.insert(session.id, client);
            }
            Lifecycle::Disconnected { session, ending } => {
                let Some(mut client) = st.clients.remove(&session.id) else { return };
                client.user = Self::user(session);
                self.push(st, "disconnect", &client, None, Some(disconnect_reason(ending)));
            }
            Lifecycle::Subscribed { session, channel } => {
                let Some(mut client) = st.clients.remove(&session.id) else { return };
                client.user = Self::user(session);
                *client.channels.entry(channel.to_string()).or_insert(0) += 1;
                self.push(st, "subscribe", &client, Some(channel), None);
                st.clients.insert(session.id, client);
            }
            Lifecycle::Unsubscribed { session, channel, reason } => {
                let Some(mut client) = st.clients.remove(&session.id) else { return };
                client.user = Self::user(session);
                if let Some(n) = client.channels.get_mut(channel) {
                    *n -= 1;
                    if *n == 0 {
                        client.channels.remove(channel);
                    }
                }
                self.push(st, "unsubscribe", &client, Some(channel), Some(reason.as_str()));
                st.clients.insert(session.id, client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::code;

    #[test]
    fn every_ending_has_a_disconnect_reason() {
        let cases = [
            (None, "client"),
            (Some(Ending::Gone), "client"),
            (Some(Ending::Close(code::NORMAL, "")), "client"),
            (Some(Ending::Close(code::GOING_AWAY, "")), "client"),
            (Some(Ending::Close(code::GOING_AWAY, "server shutting down")), "shutdown"),
            (Some(Ending::Close(code::POLICY, "ping timeout")), "ping_timeout"),
            (Some(Ending::Abort(code::POLICY, "slow consumer")), "slow_consumer"),
            (Some(Ending::Abort(code::POLICY, "write stalled")), "slow_consumer"),
            (Some(Ending::Close(code::POLICY, "rate limit exceeded")), "kicked"),
            (Some(Ending::Close(code::TOO_BIG, "message too big")), "kicked"),
            (Some(Ending::Close(code::UNSUPPORTED_DATA, "binary")), "kicked"),
            (Some(Ending::Close(code::INTERNAL, "stream lost; reconnect with since")), "kicked"),
        ];
        for (ending, reason) in cases {
            assert_eq!(disconnect_reason(ending), reason, "{ending:?}");
        }
    }
}
