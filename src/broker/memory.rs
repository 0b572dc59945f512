//! The embedded broker: streams in this process's memory.
//!
//! Each channel's stream sits behind its own mutex; a publish assigns the offset, appends to
//! history and calls the listener all under that lock, which is what makes deliveries come in
//! offset order. Epochs are random per stream, so a restart (or a stream swept away after it
//! went idle) starts a new epoch. A sweeper task trims expired history and forgets idle streams
//! so that memory tracks what is in use; a stream with nothing retained is forgotten as soon as
//! the hub lets go of its channel ([`Broker::release`]), and a history read never makes one.
//!
//! A stream taken out of the map is marked `removed` under its lock; whoever finds the mark
//! after locking a stream it looked up looks the channel up again, so no publication is appended
//! to, and no interest is registered on, a stream that can no longer be reached.

use super::*;
use crate::constants::HISTORY_SWEEP_PERIOD;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::{OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").field("streams", &self.len()).finish()
    }
}

/// One channel's stream.
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Arc<Publication>>,
    /// Idempotency keys of publications still in `history`, with their offsets.
    keys: HashMap<Box<str>, u64>,
    /// A state channel's latest publication of each key.
    state: HashMap<Box<str>, Arc<Publication>>,
    /// Local subscribers that need deliveries.
    interest: usize,
    /// Retention last asked for (the sweeper uses it).
    retention: Retention,
    /// Last publish or read, in Unix ms (idle streams are forgotten).
    touched: u64,
    /// Taken out of the map (swept or released): look the channel up again.
    removed: bool,
}

impl Stream {
    fn new(retention: Retention) -> Stream {
        Stream {
            epoch: new_epoch(),
            offset: 0,
            history: VecDeque::new(),
            keys: HashMap::new(),
            state: HashMap::new(),
            interest: 0,
            retention,
            touched: now_ms(),
            removed: false,
        }
    }

    /// Drops publications beyond the retention: too many or too old.
    fn trim(&mut self, now: u64) {
        let ttl = self.retention.ttl.as_millis() as u64;
        while let Some(front) = self.history.front() {
            if self.history.len() > self.retention.size || front.ts.saturating_add(ttl) <= now {
                let p = self.history.pop_front().expect("front exists; qed");
                if let Some(k) = &p.key {
                    self.keys.remove(k);
                }
            } else {
                break;
            }
        }
    }

    /// Forgets state keys whose latest publication is older than the TTL.
    fn trim_state(&mut self, now: u64) {
        let ttl = self.retention.ttl.as_millis() as u64;
        if !self.state.is_empty() {
            self.state.retain(|_, p| p.ts.saturating_add(ttl) > now);
        }
    }

    /// The state: each key's latest publication, in offset order.
    fn state_page(&self) -> HistoryPage {
        let mut publications: Vec<_> = self.state.values().cloned().collect();
        publications.sort_by_key(|p| p.offset);
        HistoryPage { epoch: self.epoch.clone(), offset: self.offset, publications }
    }

    fn page(&self, range: HistoryRange) -> HistoryPage {
        let h = &self.history;
        let publications: Vec<_> = match range {
            HistoryRange::Newest(limit) => {
                let n = limit.unwrap_or(h.len()).min(h.len());
                h.range(h.len() - n..).cloned().collect()
            }
            HistoryRange::After(offset, limit) => {
                // Offsets in history are consecutive, so the start is arithmetic.
                let first = h.front().map_or(0, |p| p.offset);
                let skip = (offset + 1).saturating_sub(first) as usize;
                h.iter().skip(skip).take(limit.unwrap_or(usize::MAX)).cloned().collect()
            }
        };
        HistoryPage { epoch: self.epoch.clone(), offset: self.offset, publications }
    }
}

fn new_epoch() -> Arc<str> {
    format!("{:012x}", rand::random::<u64>() >> 16).into()
}

/// The embedded broker.
pub struct MemoryBroker {
    streams: RwLock<HashMap<Arc<str>, Arc<Mutex<Stream>>>>,
    listener: OnceLock<Weak<dyn Listener>>,
    max_channels: usize,
    /// Prefixes watched for pattern subscriptions ([`Broker::watch`]), with their counts.
    watched: RwLock<HashMap<Box<str>, usize>>,
    /// True while `watched` holds any: publishes look at it only then.
    watching: std::sync::atomic::AtomicBool,
    /// Every channel's presence.
    presence: Mutex<conversation::Presences>,
    /// Every user's read cursors.
    cursors: Mutex<conversation::Cursors>,
}

impl MemoryBroker {
    /// A broker holding at most `max_channels` streams, with its sweeper running on the current
    /// tokio runtime (it stops when the broker is dropped).
    pub fn start(max_channels: usize) -> Arc<MemoryBroker> {
        let broker = Arc::new(MemoryBroker {
            streams: RwLock::new(HashMap::new()),
            listener: OnceLock::new(),
            max_channels,
            watched: RwLock::new(HashMap::new()),
            watching: std::sync::atomic::AtomicBool::new(false),
            presence: Mutex::default(),
            cursors: Mutex::default(),
        });
        let weak = Arc::downgrade(&broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HISTORY_SWEEP_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(b) => b.sweep(now_ms()),
                    None => return,
                }
            }
        });
        broker
    }

    fn stream(&self, channel: &str, retention: Retention) -> Result<Arc<Mutex<Stream>>, BrokerError> {
        if let Some(s) = self.streams.read().get(channel) {
            return Ok(s.clone());
        }
        let mut map = self.streams.write();
        if let Some(s) = map.get(channel) {
            return Ok(s.clone());
        }
        if map.len() >= self.max_channels {
            return Err(BrokerError::Full(self.max_channels));
        }
        let s = Arc::new(Mutex::new(Stream::new(retention)));
        map.insert(channel.into(), s.clone());
        Ok(s)
    }

    /// Runs `f` on the channel's stream (created if needed) under its lock, after marking it used
    /// and trimming what its retention no longer covers; `f` also gets the time in Unix ms.
    fn with_stream<T>(
        &self,
        channel: &str,
        retention: Retention,
        f: impl FnOnce(&mut Stream, u64) -> T,
    ) -> Result<T, BrokerError> {
        loop {
            let stream = self.stream(channel, retention)?;
            let mut st = stream.lock();
            if st.removed {
                continue;
            }
            let now = touch(&mut st, retention);
            return Ok(f(&mut st, now));
        }
    }

    /// Like [`MemoryBroker::with_stream`] for a stream that exists; `None` (and nothing created)
    /// when the channel has none.
    fn with_existing<T>(
        &self,
        channel: &str,
        retention: Retention,
        f: impl FnOnce(&mut Stream) -> T,
    ) -> Option<T> {
        loop {
            let stream = self.streams.read().get(channel)?.clone();
            let mut st = stream.lock();
            if st.removed {
                continue;
            }
            touch(&mut st, retention);
            return Some(f(&mut st));
        }
    }

    /// Trims expired history and forgets streams that are empty, unwatched and idle for their TTL.
    pub fn sweep(&self, now: u64) {
        let mut idle = Vec::new();
        for (name, s) in self.streams.read().iter() {
            let mut st = s.lock();
            st.trim(now);
            st.trim_state(now);
            if is_idle(&st, now) {
                idle.push(name.clone());
            }
        }
        if idle.is_empty() {
            return;
        }
        let mut map = self.streams.write();
        for name in idle {
            // Checked again: a publish or subscribe may have come in between.
            if map.get(&name).is_some_and(|s| take_out(&mut s.lock(), |st| is_idle(st, now))) {
                map.remove(&name);
            }
        }
    }

    /// Loses `channel`'s stream as a shared broker may (evicted, expired, flushed): its history
    /// and offset are gone and it starts again in a new epoch. Interest is kept.
    pub fn lose(&self, channel: &str) {
        if let Some(s) = self.streams.read().get(channel) {
            let mut st = s.lock();
            let interest = st.interest;
            *st = Stream::new(st.retention);
            st.interest = interest;
        }
    }

    /// Streams held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.streams.read().len()
    }

    /// True when no stream is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Marks the stream and the time it was used, with the retention asked for, and trims what that
/// no longer covers; returns the time in Unix ms.
fn touch(st: &mut Stream, retention: Retention) -> u64 {
    let now = now_ms();
    st.retention = retention;
    st.touched = now;
    st.trim(now);
    now
}

/// Marks `st` removed if `going` says it may go (its caller then takes it out of the map, under
/// the map's write lock held all along).
fn take_out(st: &mut Stream, going: impl FnOnce(&Stream) -> bool) -> bool {
    st.removed = going(st);
    st.removed
}

/// Nothing retained and nobody on this node watching: nothing a later use could miss but the
/// offset, and a new epoch says that.
fn is_unused(st: &Stream) -> bool {
    st.history.is_empty() && st.state.is_empty() && st.interest == 0
}

fn is_idle(st: &Stream, now: u64) -> bool {
    is_unused(st) && st.touched + st.retention.ttl.as_millis() as u64 <= now
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn set_listener(&self, listener: Weak<dyn Listener>) {
        let _ = self.listener.set(listener);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        p: NewPublication,
        retention: Retention,
    ) -> BoxFuture<'a, Result<Published, BrokerError>> {
        let result = self.with_stream(channel, retention, |st, now| {
            if let Some(&offset) = p.idempotency_key.as_ref().and_then(|k| st.keys.get(k.as_str())) {
                let position = StreamPosition { epoch: st.epoch.to_string(), offset };
                return Published { position, duplicate: true };
            }
            st.offset += 1;
            // Keys only matter while their publication is in history.
            let key = p.idempotency_key.filter(|_| retention.size > 0).map(String::into_boxed_str);
            let state_key = retention.state.then(|| p.key.as_deref().unwrap_or(""));
            let publication =
                Arc::new(Publication::keyed(st.offset, now, state_key, p.event.as_deref(), &p.data, key));
            if let Some(k) = state_key {
                if publication.is_deletion() {
                    st.state.remove(k);
                } else {
                    st.state.insert(k.into(), publication.clone());
                }
            }
            if retention.size > 0 {
                if let Some(k) = &publication.key {
                    let offset = st.offset;
                    st.keys.insert(k.clone(), offset);
                }
                st.history.push_back(publication.clone());
                st.trim(now);
            }
            let watched = self.watching.load(std::sync::atomic::Ordering::Acquire)
                && self.watched.read().keys().any(|w| channel.starts_with(&**w));
            if (st.interest > 0 || watched)
                && let Some(listener) = self.listener.get().and_then(Weak::upgrade)
            {
                if watched {
                    listener.published(channel);
                }
                if st.interest > 0 {
                    listener.deliver(channel, &st.epoch, &publication);
                }
            }
            Published {
                position: StreamPosition { epoch: st.epoch.to_string(), offset: st.offset },
                duplicate: false,
            }
        });
        Box::pin(std::future::ready(result))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        range: HistoryRange,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        let page = self
            .with_existing(channel, retention, |st| st.page(range))
            .unwrap_or_else(|| HistoryPage { epoch: NO_EPOCH.into(), offset: 0, publications: Vec::new() });
        Box::pin(std::future::ready(Ok(page)))
    }

    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let result = self.with_stream(channel, retention, |st, _| st.interest += 1);
        Box::pin(std::future::ready(result))
    }

    fn unsubscribe(&self, channel: &str) {
        if let Some(s) = self.streams.read().get(channel) {
            let mut st = s.lock();
            st.interest = st.interest.saturating_sub(1);
            st.touched = now_ms();
        }
    }

    fn release(&self, channel: &str) {
        let now = now_ms();
        let unused = |st: &mut Stream| {
            st.trim(now);
            is_unused(st)
        };
        // Most channels let go of hold publications: tell those apart without the write lock.
        if !self.streams.read().get(channel).is_some_and(|s| unused(&mut s.lock())) {
            return;
        }
        let mut map = self.streams.write();
        // Checked again: a publish or subscribe may have come in between.
        if map.get(channel).is_some_and(|s| take_out(&mut s.lock(), is_unused)) {
            map.remove(channel);
        }
    }

    fn held(&self) -> Option<usize> {
        Some(self.len())
    }

    fn keyed_state<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        let page = self
            .with_existing(channel, retention, |st| {
                st.trim_state(now_ms());
                st.state_page()
            })
            .unwrap_or_else(|| HistoryPage { epoch: NO_EPOCH.into(), offset: 0, publications: Vec::new() });
        Box::pin(std::future::ready(Ok(page)))
    }

    fn streams<'a>(&'a self, prefix: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
        let mut names: Vec<String> = self
            .streams
            .read()
            .keys()
            .filter(|c| c.starts_with(prefix))
            .take(max.saturating_add(1))
            .map(|c| c.to_string())
            .collect();
        names.sort();
        Box::pin(std::future::ready(Ok(names)))
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut w = self.watched.write();
        *w.entry(prefix.into()).or_default() += 1;
        self.watching.store(true, std::sync::atomic::Ordering::Release);
        Box::pin(std::future::ready(Ok(())))
    }

    fn unwatch(&self, prefix: &str) {
        let mut w = self.watched.write();
        if let Some(n) = w.get_mut(prefix) {
            *n -= 1;
            if *n == 0 {
                w.remove(prefix);
            }
        }
        self.watching.store(!w.is_empty(), std::sync::atomic::Ordering::Release);
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn presence_update<'a>(
        &'a self,
        channel: &'a str,
        join: &'a [PresenceClient],
        leave: &'a [String],
        ttl: Duration,
        signal: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let changes = self.presence.lock().update(channel, join, leave, ttl.as_millis() as u64, now_ms());
        if signal {
            self.signal(channel, &changes);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
        max: usize,
        signal: bool,
    ) -> BoxFuture<'a, Result<PresencePage, BrokerError>> {
        let (page, gone) = self.presence.lock().read(channel, max, now_ms());
        if signal {
            self.signal(channel, &gone);
        }
        Box::pin(std::future::ready(Ok(page)))
    }

    fn cursor_set<'a>(
        &'a self,
        user: &'a str,
        channel: &'a str,
        offset: u64,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        let set = self.cursors.lock().set(user, channel, offset, crate::constants::MAX_CURSORS_PER_USER);
        let result = match set {
            Ok((stored, changed)) => {
                if changed && let Some(l) = self.listener.get().and_then(Weak::upgrade) {
                    let moved = CursorMove {
                        user: user.into(),
                        channel: channel.into(),
                        offset: stored,
                        origin: origin.into(),
                    };
                    l.cursor_moved(&moved);
                }
                Ok(stored)
            }
            Err(cap) => Err(BrokerError::Full(cap)),
        };
        Box::pin(std::future::ready(result))
    }

    fn cursor_get<'a>(
        &'a self,
        user: &'a str,
        channels: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<u64>, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.cursors.lock().get(user, channels))))
    }
}

impl MemoryBroker {
    /// Tells the listener of presence changes, with no lock held.
    fn signal(&self, channel: &str, changes: &[PresenceSignal]) {
        if changes.is_empty() {
            return;
        }
        if let Some(l) = self.listener.get().and_then(Weak::upgrade) {
            for c in changes {
                l.signalled(channel, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn retention(size: usize) -> Retention {
        Retention { size, ttl: Duration::from_secs(300), state: false }
    }

    fn new_pub(n: u64, key: Option<&str>) -> NewPublication {
        NewPublication {
            data: RawValue::from_string(n.to_string()).unwrap(),
            event: None,
            idempotency_key: key.map(String::from),
            key: None,
        }
    }

    fn publish(b: &MemoryBroker, ch: &str, n: u64, key: Option<&str>, size: usize) -> Published {
        b.publish(ch, new_pub(n, key), retention(size)).now_or_never().unwrap().unwrap()
    }

    fn history(b: &MemoryBroker, ch: &str, range: HistoryRange) -> HistoryPage {
        b.history(ch, range, retention(3)).now_or_never().unwrap().unwrap()
    }

    fn offsets(p: &HistoryPage) -> Vec<u64> {
        p.publications.iter().map(|p| p.offset).collect()
    }

    #[tokio::test]
    async fn offsets_count_from_one_and_history_keeps_the_newest() {
        let b = MemoryBroker::start(10);
        for n in 1..=5 {
            assert_eq!(publish(&b, "a", n, None, 3).position.offset, n);
        }
        let page = history(&b, "a", HistoryRange::Newest(None));
        assert_eq!((page.offset, offsets(&page)), (5, vec![3, 4, 5]));
        assert_eq!(offsets(&history(&b, "a", HistoryRange::Newest(Some(2)))), vec![4, 5]);
        assert_eq!(offsets(&history(&b, "a", HistoryRange::After(3, None))), vec![4, 5]);
        assert_eq!(offsets(&history(&b, "a", HistoryRange::After(0, Some(1)))), vec![3]);
        assert_eq!(offsets(&history(&b, "a", HistoryRange::After(5, None))), Vec::<u64>::new());
        assert_eq!(offsets(&history(&b, "a", HistoryRange::After(9, None))), Vec::<u64>::new());
        // Channels are independent and epochs differ.
        assert_eq!(publish(&b, "b", 1, None, 3).position.offset, 1);
        assert_ne!(history(&b, "b", HistoryRange::Newest(None)).epoch, page.epoch);
    }

    #[tokio::test]
    async fn a_repeated_key_publishes_nothing_while_in_history() {
        let b = MemoryBroker::start(10);
        let first = publish(&b, "a", 1, Some("k"), 2);
        let again = publish(&b, "a", 2, Some("k"), 2);
        assert_eq!((again.position.clone(), again.duplicate), (first.position.clone(), true));
        assert_eq!(history(&b, "a", HistoryRange::Newest(None)).offset, 1);
        // Two more publications push it out of history; the key is free again.
        publish(&b, "a", 3, None, 2);
        publish(&b, "a", 4, None, 2);
        let later = publish(&b, "a", 5, Some("k"), 2);
        assert_eq!((later.position.offset, later.duplicate), (4, false));
    }

    #[tokio::test]
    async fn channel_limit_and_idle_sweep() {
        let b = MemoryBroker::start(2);
        publish(&b, "a", 1, None, 0);
        publish(&b, "b", 1, None, 0);
        let e = b.publish("c", new_pub(1, None), retention(0)).now_or_never().unwrap().unwrap_err();
        assert!(matches!(e, BrokerError::Full(2)));
        // Nothing retained, nobody interested: gone once idle for the TTL.
        b.subscribe("a", retention(0)).now_or_never().unwrap().unwrap();
        b.sweep(now_ms() + 301_000);
        assert_eq!(b.len(), 1, "a is watched and stays; b is swept");
        b.unsubscribe("a");
        b.sweep(now_ms() + 301_000);
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn reads_make_no_stream_and_release_forgets_only_what_keeps_nothing() {
        let b = MemoryBroker::start(10);
        let page = history(&b, "unknown", HistoryRange::After(3, None));
        assert_eq!((&*page.epoch, page.offset, page.publications.len()), (NO_EPOCH, 0, 0));
        assert!(b.is_empty(), "a read makes no stream");
        b.subscribe("watched", retention(3)).now_or_never().unwrap().unwrap();
        b.release("watched");
        assert_eq!(b.len(), 1, "a stream someone watches stays");
        publish(&b, "kept", 1, None, 3);
        b.release("kept");
        assert_eq!(b.len(), 2, "a stream that retains a publication stays for its TTL");
        b.unsubscribe("watched");
        let epoch = history(&b, "watched", HistoryRange::Newest(None)).epoch;
        b.release("watched");
        assert_eq!(b.len(), 1, "nothing retained, nobody watching: forgotten at once");
        let again = publish(&b, "watched", 1, None, 3).position;
        assert_ne!(*again.epoch, *epoch, "its next use starts a new epoch, as a lost stream does");
        assert_eq!(b.held(), Some(2));
    }

    #[tokio::test]
    async fn ttl_expires_history_and_idle_streams_start_a_new_epoch() {
        let b = MemoryBroker::start(10);
        b.subscribe("watched", retention(10)).now_or_never().unwrap().unwrap();
        publish(&b, "watched", 1, None, 10);
        publish(&b, "idle", 1, None, 10);
        let idle_epoch = history(&b, "idle", HistoryRange::Newest(None)).epoch;
        let watched_epoch = history(&b, "watched", HistoryRange::Newest(None)).epoch;
        b.sweep(now_ms() + 301_000);
        let w = history(&b, "watched", HistoryRange::Newest(None));
        assert_eq!(
            (w.offset, w.publications.len(), w.epoch),
            (1, 0, watched_epoch),
            "the data goes, the offset stays"
        );
        let i = history(&b, "idle", HistoryRange::Newest(None));
        assert_eq!(i.offset, 0, "an idle stream is forgotten");
        assert_ne!(i.epoch, idle_epoch, "so its epoch changes");
    }
}
