//! A broker for tests that breaks the delivery promises a shared broker may break, on purpose
//! and on cue: it drops, repeats and reorders deliveries, loses streams (a new epoch), and can
//! make history reads slow. It wraps a [`MemoryBroker`], so offsets, history and idempotency are
//! the real ones; only what reaches the listener, and when, is tampered with.
//!
//! No real broker can be made to lose a chosen pub/sub message; this one can, which is what a
//! test of the hub's gap and duplicate handling needs. [`FaultyBroker::settle`] plays the part of
//! a shared broker's periodic position check: it hands over what it still holds and tells the
//! listener to check every channel it delivered to.
//!
//! It can also be switched down ([`FaultyBroker::set_down`]), as a shared broker is when it
//! cannot be reached: [`Broker::state`] says [`BrokerState::Down`], publish, subscribe and
//! history fail with [`BrokerError::Unavailable`], and deliveries are lost. Publications can
//! still be made behind the node's back meanwhile ([`FaultyBroker::inner`], as other nodes would),
//! and switched up again it says every channel it knows of may have lagged, as a shared broker
//! does when its connection is back.

use super::memory::MemoryBroker;
use super::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};

/// What to break, each in parts per thousand of deliveries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Deliveries dropped.
    pub drop: u32,
    /// Deliveries made twice.
    pub repeat: u32,
    /// Deliveries held back and made after the channel's next one.
    pub reorder: u32,
    /// How long every history read waits first.
    pub history_delay: Duration,
    /// Seed of the fault sequence (the same seed breaks the same deliveries).
    pub seed: u64,
}

/// What was broken so far.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Deliveries dropped.
    pub dropped: AtomicU64,
    /// Deliveries made twice.
    pub repeated: AtomicU64,
    /// Deliveries reordered.
    pub reordered: AtomicU64,
    /// Streams lost ([`FaultyBroker::lose`]).
    pub lost: AtomicU64,
    /// Calls refused and deliveries lost while down ([`FaultyBroker::set_down`]).
    pub unavailable: AtomicU64,
}

struct State {
    faults: Faults,
    rng: u64,
    /// Per channel, a delivery held back to be made after the next one.
    held: HashMap<Box<str>, (Arc<str>, Arc<Publication>)>,
    /// Channels delivered to, for [`FaultyBroker::settle`].
    seen: Vec<Box<str>>,
}

/// The fault-injecting broker.
pub struct FaultyBroker {
    inner: Arc<MemoryBroker>,
    state: Mutex<State>,
    listener: OnceLock<Weak<dyn Listener>>,
    /// The inner broker's listener, which it holds weakly: kept alive here.
    relay: Arc<dyn Listener>,
    /// Switched down: calls fail, deliveries are lost.
    down: AtomicBool,
    /// What was broken.
    pub counts: FaultCounts,
}

impl std::fmt::Debug for FaultyBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBroker")
            .field("faults", &self.state.lock().faults)
            .field("counts", &self.counts)
            .finish()
    }
}

/// Passes the inner broker's deliveries through the faults.
struct Relay(Weak<FaultyBroker>);

impl Listener for Relay {
    fn deliver(&self, channel: &str, epoch: &Arc<str>, p: &Arc<Publication>) {
        if let Some(b) = self.0.upgrade() {
            b.relay(channel, epoch, p);
        }
    }

    fn lagged(&self, channel: &str) {
        if let Some(l) = self.0.upgrade().and_then(|b| b.listener()) {
            l.lagged(channel);
        }
    }

    fn published(&self, channel: &str) {
        if let Some(l) = self.0.upgrade().and_then(|b| b.listener()) {
            l.published(channel);
        }
    }

    fn signalled(&self, channel: &str, signal: &PresenceSignal) {
        if let Some(l) = self.0.upgrade().and_then(|b| b.listener()) {
            l.signalled(channel, signal);
        }
    }

    fn cursor_moved(&self, moved: &CursorMove) {
        if let Some(l) = self.0.upgrade().and_then(|b| b.listener()) {
            l.cursor_moved(moved);
        }
    }
}

impl FaultyBroker {
    /// A memory broker of `max_channels` streams behind `faults`.
    pub fn start(max_channels: usize, faults: Faults) -> Arc<FaultyBroker> {
        let b = Arc::new_cyclic(|me| FaultyBroker {
            inner: MemoryBroker::start(max_channels),
            state: Mutex::new(State { faults, rng: faults.seed | 1, held: HashMap::new(), seen: Vec::new() }),
            listener: OnceLock::new(),
            relay: Arc::new(Relay(me.clone())),
            down: AtomicBool::new(false),
            counts: FaultCounts::default(),
        });
        b.inner.set_listener(Arc::downgrade(&b.relay));
        b
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// Switches the broker down (calls fail with [`BrokerError::Unavailable`], deliveries are
    /// lost) or up again; up, it asks the listener to check every channel it delivered to or
    /// lost a delivery of, as a shared broker does when its connection is back.
    pub fn set_down(&self, down: bool) {
        let was = self.down.swap(down, Ordering::SeqCst);
        if was && !down {
            let seen = self.state.lock().seen.clone();
            if let Some(l) = self.listener() {
                for channel in seen {
                    l.lagged(&channel);
                }
            }
        }
    }

    /// The memory broker underneath, which works whether this one is down or not: a test
    /// publishes through it what other nodes would publish while this node cannot reach the
    /// broker (its deliveries are lost while down).
    pub fn inner(&self) -> &Arc<MemoryBroker> {
        &self.inner
    }

    /// `Err` when switched down, counted.
    fn check_up(&self) -> Result<(), BrokerError> {
        if self.down.load(Ordering::SeqCst) {
            self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(BrokerError::Unavailable("the faulty broker is switched down".into()));
        }
        Ok(())
    }

    /// Loses `channel`'s stream: its history and offset are gone, a new epoch starts.
    pub fn lose(&self, channel: &str) {
        self.counts.lost.fetch_add(1, Ordering::Relaxed);
        self.inner.lose(channel);
    }

    /// Makes every delivery still held back, then asks the listener to check every channel it
    /// was delivered to (what a shared broker's periodic position check does).
    pub fn settle(&self) {
        let (held, seen): (Vec<_>, Vec<_>) = {
            let mut st = self.state.lock();
            (st.held.drain().collect(), st.seen.clone())
        };
        let Some(l) = self.listener() else { return };
        for (channel, (epoch, p)) in held {
            l.deliver(&channel, &epoch, &p);
        }
        for channel in seen {
            l.lagged(&channel);
        }
    }

    fn listener(&self) -> Option<Arc<dyn Listener>> {
        self.listener.get().and_then(Weak::upgrade)
    }

    fn relay(&self, channel: &str, epoch: &Arc<str>, p: &Arc<Publication>) {
        let Some(l) = self.listener() else { return };
        let mut out: Vec<(Arc<str>, Arc<Publication>)> = Vec::with_capacity(3);
        {
            let mut st = self.state.lock();
            if !st.seen.iter().any(|c| &**c == channel) {
                st.seen.push(channel.into());
            }
            if self.down.load(Ordering::SeqCst) {
                self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let f = st.faults;
            let roll = next(&mut st.rng) % 1000;
            let earlier = st.held.remove(channel);
            if roll < f.drop as u64 {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            } else if roll < (f.drop + f.repeat) as u64 {
                self.counts.repeated.fetch_add(1, Ordering::Relaxed);
                out.push((epoch.clone(), p.clone()));
                out.push((epoch.clone(), p.clone()));
            } else if roll < (f.drop + f.repeat + f.reorder) as u64 && earlier.is_none() {
                self.counts.reordered.fetch_add(1, Ordering::Relaxed);
                st.held.insert(channel.into(), (epoch.clone(), p.clone()));
            } else {
                out.push((epoch.clone(), p.clone()));
            }
            out.extend(earlier);
        }
        for (e, p) in out {
            l.deliver(channel, &e, &p);
        }
    }
}

/// xorshift64*: a fault sequence that a seed repeats.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl Broker for FaultyBroker {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn set_listener(&self, listener: Weak<dyn Listener>) {
        let _ = self.listener.set(listener);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        publication: NewPublication,
        retention: Retention,
    ) -> BoxFuture<'a, Result<Published, BrokerError>> {
        if let Err(e) = self.check_up() {
            return Box::pin(std::future::ready(Err(e)));
        }
        self.inner.publish(channel, publication, retention)
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        range: HistoryRange,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        let delay = self.state.lock().faults.history_delay;
        Box::pin(async move {
            self.check_up()?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.check_up()?;
            self.inner.history(channel, range, retention).await
        })
    }

    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        if let Err(e) = self.check_up() {
            return Box::pin(std::future::ready(Err(e)));
        }
        self.inner.subscribe(channel, retention)
    }

    fn unsubscribe(&self, channel: &str) {
        self.inner.unsubscribe(channel);
    }

    fn release(&self, channel: &str) {
        self.inner.release(channel);
    }

    fn held(&self) -> Option<usize> {
        self.inner.held()
    }

    fn streams<'a>(&'a self, prefix: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
        self.inner.streams(prefix, max)
    }

    fn keyed_state<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        self.inner.keyed_state(channel, retention)
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.watch(prefix)
    }

    fn unwatch(&self, prefix: &str) {
        self.inner.unwatch(prefix)
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        self.inner.flush()
    }

    fn presence_update<'a>(
        &'a self,
        channel: &'a str,
        join: &'a [PresenceClient],
        leave: &'a [String],
        ttl: Duration,
        signal: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        match self.check_up() {
            Ok(()) => self.inner.presence_update(channel, join, leave, ttl, signal),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
        max: usize,
        signal: bool,
    ) -> BoxFuture<'a, Result<PresencePage, BrokerError>> {
        match self.check_up() {
            Ok(()) => self.inner.presence(channel, max, signal),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn cursor_set<'a>(
        &'a self,
        user: &'a str,
        channel: &'a str,
        offset: u64,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        match self.check_up() {
            Ok(()) => self.inner.cursor_set(user, channel, offset, origin),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn cursor_get<'a>(
        &'a self,
        user: &'a str,
        channels: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<u64>, BrokerError>> {
        match self.check_up() {
            Ok(()) => self.inner.cursor_get(user, channels),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn state(&self) -> BrokerState {
        if self.down.load(Ordering::SeqCst) { BrokerState::Down } else { BrokerState::Up }
    }

    fn latency(&self) -> Option<Duration> {
        // What a shared broker reports once it has made a round trip: a fixed figure here.
        (!self.down.load(Ordering::SeqCst)).then_some(Duration::from_micros(250))
    }
}
