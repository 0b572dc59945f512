//! The Redis broker's running parts: commands bounded by a timeout (a failed connection marks
//! Redis down), the supervisor (ping, reconnect, the position check) and the pub/sub readers that
//! deliver fan-out messages to the listener.

use super::*;

impl Inner {
    /// The arguments of `presence.lua` that say whether and where to signal.
    pub(super) fn signal_args(&self, inv: &mut ::redis::ScriptInvocation<'_>, channel: &str, signal: bool) {
        inv.arg(if signal { "1" } else { "0" })
            .arg(key(channel, "pub"))
            .arg(if matches!(self.target, Target::Cluster(..)) { "SPUBLISH" } else { "PUBLISH" });
    }

    pub(super) fn listener(&self) -> Option<Arc<dyn Listener>> {
        self.listener.get().and_then(Weak::upgrade)
    }

    /// The command connection, or `Unavailable` at once while Redis is down.
    pub(super) fn conn(&self) -> Result<Conn, BrokerError> {
        match (self.up.load(Ordering::Acquire), &*self.conn.read()) {
            (true, Some(c)) => Ok(c.clone()),
            _ => Err(BrokerError::Unavailable("redis is unreachable".into())),
        }
    }

    pub(super) fn down(&self, why: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %why, "redis is unreachable");
        }
        *self.conn.write() = None;
        self.wake.notify_one();
    }

    /// Runs a command with the timeout; a failure of the connection (not a reply that is an
    /// error) marks Redis down.
    pub(super) async fn run<T>(
        &self,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    self.down(&e);
                }
                Err(unavailable(format!("redis: {e}")))
            }
            Err(_) => {
                self.down(&"a command timed out");
                Err(unavailable("redis did not answer in time"))
            }
        }
    }

    /// Pings Redis every [`REDIS_PING_PERIOD`] (reconnecting while it is down) and checks the
    /// channels' positions every [`REDIS_POSITION_CHECK_PERIOD`].
    pub(super) async fn supervise(self: Arc<Self>) {
        let mut ping = tokio::time::interval(REDIS_PING_PERIOD);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(REDIS_POSITION_CHECK_PERIOD);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut relist = tokio::time::interval(REDIS_RELIST_PERIOD);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        relist.tick().await;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = ping.tick() => self.ping().await,
                _ = self.wake.notified() => self.ping().await,
                _ = check.tick() => self.check_positions().await,
                _ = relist.tick() => self.relist().await,
            }
        }
    }

    pub(super) async fn ping(&self) {
        let current = self.conn.read().clone();
        match current {
            Some(mut c) => {
                let at = Instant::now();
                let pong = tokio::time::timeout(
                    REDIS_COMMAND_TIMEOUT,
                    ::redis::cmd("PING").query_async::<()>(&mut c),
                )
                .await;
                match pong {
                    Ok(Ok(())) => {
                        self.latency_us.store(at.elapsed().as_micros() as u64, Ordering::Relaxed);
                        if !self.up.swap(true, Ordering::AcqRel) {
                            tracing::info!("redis is reachable again");
                        }
                    }
                    Ok(Err(e)) => self.down(&e),
                    Err(_) => self.down(&"a ping timed out"),
                }
            }
            None => {
                let at = Instant::now();
                let conn = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, self.target.connect()).await;
                if let Ok(Ok(c)) = conn {
                    self.latency_us.store(at.elapsed().as_micros() as u64, Ordering::Relaxed);
                    *self.conn.write() = Some(c);
                    self.up.store(true, Ordering::Release);
                    tracing::info!("redis is reachable again");
                    self.pubsub_wake.notify_one();
                    // Whatever waited for Redis (a gap whose history read failed) reads now.
                    let channels: Vec<Box<str>> = self.interest.lock().keys().cloned().collect();
                    if let Some(l) = self.listener() {
                        for c in &channels {
                            l.lagged(c);
                        }
                    }
                }
            }
        }
    }

    /// Reads the position of every channel with local interest (keeping its meta alive) and
    /// calls `lagged` for those ahead of what pub/sub delivered.
    pub(super) async fn check_positions(&self) {
        let channels: Vec<(Box<str>, Retention)> =
            self.interest.lock().iter().map(|(c, i)| (c.clone(), i.retention)).collect();
        if channels.is_empty() || !self.up.load(Ordering::Acquire) {
            return;
        }
        // Pipelined on the multiplexed connection, a bounded number in flight at a time.
        let reads = channels.into_iter().map(|(c, r)| async move {
            let position = self.take_interest(&c, r).await;
            (c, position)
        });
        let positions: Vec<_> =
            futures_util::stream::iter(reads).buffer_unordered(POSITION_CHECKS_IN_FLIGHT).collect().await;
        let mut behind = Vec::new();
        {
            let mut interest = self.interest.lock();
            for (channel, position) in positions {
                let Ok((epoch, offset)) = position else { continue };
                let Some(i) = interest.get_mut(&*channel) else { continue };
                // Behind what the previous check read: a full period to arrive, so a message in
                // flight is not taken for a lost one.
                let previous = i.checked.replace((epoch, offset));
                let lost = previous.is_some_and(|(epoch, offset)| {
                    i.seen.as_ref().is_none_or(|(e, o)| **e != *epoch || *o < offset)
                });
                if lost {
                    behind.push(channel);
                }
            }
        }
        let Some(listener) = self.listener() else { return };
        for channel in behind {
            listener.lagged(&channel);
        }
    }

    /// Tells the listener of every channel under each watched prefix, as if each had just been
    /// published to: after creation notices may have been lost (pub/sub came back), and every
    /// [`REDIS_RELIST_PERIOD`]. The listener takes a channel it knows as nothing new.
    pub(super) async fn relist(&self) {
        let prefixes: Vec<Box<str>> = self.watched.lock().keys().cloned().collect();
        for prefix in prefixes {
            let Ok(channels) = self.streams(&prefix, RELIST_MAX).await else { return };
            let Some(l) = self.listener() else { return };
            // Only while still watched: a pattern that ended meanwhile is told nothing.
            if self.watched.lock().contains_key(&prefix) {
                for c in &channels {
                    l.published(c);
                }
            }
        }
    }

    /// The channels whose meta exists and whose name starts with `prefix`, sorted, at most
    /// `max + 1`: a `SCAN` of every master's keys (`MATCH rpchub:{PREFIX*}:meta`).
    pub(super) async fn streams(&self, prefix: &str, max: usize) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn()?;
        let pattern = format!("{PREFIX}{}*}}:meta", glob_escape(prefix));
        let masters = match &conn {
            Conn::One(_) => vec![None],
            Conn::Cluster(_) => self.masters(&mut conn).await?.into_iter().map(Some).collect(),
        };
        let mut found = std::collections::BTreeSet::new();
        'masters: for master in masters {
            let mut cursor = 0u64;
            loop {
                let mut scan = ::redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
                let (next, keys): (u64, Vec<String>) = match (&mut conn, &master) {
                    (Conn::Cluster(c), Some((host, port))) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        let v = self.run(c.route_command(scan, routing)).await?;
                        ::redis::from_redis_value(v).map_err(|e| unavailable(format!("redis: {e}")))?
                    }
                    (c, _) => self.run(scan.query_async(c)).await?,
                };
                for k in keys {
                    if let Some(c) = k.strip_prefix(PREFIX).and_then(|k| k.strip_suffix("}:meta"))
                        && c.starts_with(prefix)
                    {
                        found.insert(c.to_string());
                    }
                }
                if found.len() > max {
                    break 'masters;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(found.into_iter().take(max.saturating_add(1)).collect())
    }

    /// The addresses of a cluster's masters (`CLUSTER NODES`), for commands each must answer.
    async fn masters(&self, conn: &mut Conn) -> Result<Vec<(String, u16)>, BrokerError> {
        let Conn::Cluster(c) = conn else { return Ok(Vec::new()) };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let v = self.run(c.route_command(::redis::cmd("CLUSTER").arg("NODES").clone(), routing)).await?;
        let nodes: String = ::redis::from_redis_value(v).map_err(|e| unavailable(format!("redis: {e}")))?;
        let masters: Vec<(String, u16)> = nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let flags = fields.get(2)?;
                if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                    return None;
                }
                let addr = fields.get(1)?.split(['@', ',']).next()?;
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_string(), port.parse().ok()?))
            })
            .collect();
        if masters.is_empty() {
            return Err(unavailable("redis cluster: CLUSTER NODES names no master"));
        }
        Ok(masters)
    }

    async fn relist_owned(self: Arc<Self>) {
        self.relist().await;
    }

    /// Runs `interest.lua`: the channel's position, its meta made when missing and kept.
    pub(super) async fn take_interest(
        &self,
        channel: &str,
        r: Retention,
    ) -> Result<(String, u64), BrokerError> {
        let mut conn = self.conn()?;
        let mut inv = self.interest_script.prepare_invoke();
        inv.key(key(channel, "meta"))
            .key(key(channel, "stream"))
            .key(key(channel, "state"))
            .arg(new_epoch())
            .arg(ttl_ms(r));
        self.run(inv.invoke_async::<(String, u64)>(&mut conn)).await
    }

    /// Keeps a pub/sub connection: subscribes it to every channel of local interest, delivers
    /// its messages, and after a reconnection tells the listener every such channel may have
    /// lagged.
    pub(super) async fn fan_in(self: Arc<Self>, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut first = true;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let Target::One(one) = &self.target else { return };
            let client = &one.0;
            let pubsub = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, client.get_async_pubsub()).await;
            let Ok(Ok(pubsub)) = pubsub else {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(REDIS_PING_PERIOD) => continue,
                    _ = self.pubsub_wake.notified() => continue,
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let channels: Vec<Box<str>> = {
                let mut subs = self.subs.lock().await;
                let channels: Vec<Box<str>> = self
                    .interest
                    .lock()
                    .iter()
                    .filter(|(_, i)| i.count > 0)
                    .map(|(c, _)| c.clone())
                    .collect();
                if !channels.is_empty() {
                    let names: Vec<String> = channels.iter().map(|c| key(c, "pub")).collect();
                    match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.subscribe(names)).await {
                        Ok(Ok(())) => {}
                        _ => continue,
                    }
                }
                let namespaces: HashSet<Box<str>> =
                    self.watched.lock().keys().filter_map(|p| namespace_of(p)).map(Into::into).collect();
                // Read cursor moves, on every node at all times.
                let mut names: Vec<String> = vec![CURSORS.to_string()];
                names.extend(namespaces.iter().map(|ns| notice_of(ns)));
                match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.subscribe(names)).await {
                    Ok(Ok(())) => {}
                    _ => continue,
                }
                subs.subscribed = channels.iter().cloned().collect();
                subs.notices = namespaces;
                subs.sink = Some(Sink::One(sink.clone()));
                channels
            };
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            if !first {
                tracing::info!(channels = channels.len(), "redis pub/sub is back; rechecking its channels");
                if let Some(l) = self.listener() {
                    for c in &channels {
                        l.lagged(c);
                    }
                }
                // Creation notices may have been lost too.
                tokio::spawn(self.clone().relist_owned());
            }
            first = false;
            let mut ping = tokio::time::interval(REDIS_PING_PERIOD);
            ping.tick().await;
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    msg = stream.next() => match msg {
                        Some(msg) => self.arrived(msg.get_channel_name(), msg.get_payload_bytes()),
                        None => break,
                    },
                    _ = ping.tick() => {
                        let pong = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.ping::<Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            let mut subs = self.subs.lock().await;
            subs.sink = None;
            subs.subscribed.clear();
            subs.notices.clear();
        }
    }

    /// The cluster's pub/sub: one RESP3 cluster connection, whose `SSUBSCRIBE`s go to each
    /// channel's shard and are made again by the client after a reconnection (after which every
    /// channel of local interest is rechecked).
    pub(super) async fn fan_in_cluster(self: Arc<Self>, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
        let conn = loop {
            let conn = match self.target.cluster(Some(tx.clone())) {
                Ok(client) => {
                    tokio::time::timeout(REDIS_COMMAND_TIMEOUT, client.get_async_connection()).await
                }
                Err(e) => {
                    tracing::error!(error = %e, "redis cluster pub/sub cannot be set up");
                    return;
                }
            };
            if let Ok(Ok(mut conn)) = conn {
                // Read cursor moves, on every node at all times (made again by the client after
                // a reconnection, as its other subscriptions).
                match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, conn.subscribe(CURSORS)).await {
                    Ok(Ok(())) => break conn,
                    _ => tracing::warn!("redis cluster pub/sub: the cursor channel could not be subscribed"),
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(REDIS_PING_PERIOD) => {}
            }
        };
        self.subs.lock().await.sink = Some(Sink::Cluster(conn));
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        let mut disconnected = false;
        loop {
            let push = tokio::select! {
                _ = self.stop.cancelled() => return,
                push = pushes.recv() => match push {
                    Some(push) => push,
                    None => return,
                },
            };
            match push.kind {
                PushKind::SMessage | PushKind::Message => {
                    if let [name, payload] = push.data.as_slice()
                        && let (Some(name), Value::BulkString(payload)) = (text(name), payload)
                    {
                        self.arrived(name, payload);
                    }
                }
                PushKind::Disconnection => disconnected = true,
                PushKind::SSubscribe | PushKind::Subscribe if disconnected => {
                    disconnected = false;
                    let channels: Vec<Box<str>> = self.interest.lock().keys().cloned().collect();
                    tracing::info!(
                        channels = channels.len(),
                        "redis cluster pub/sub is back; rechecking its channels"
                    );
                    if let Some(l) = self.listener() {
                        for c in &channels {
                            l.lagged(c);
                        }
                    }
                    tokio::spawn(self.clone().relist_owned());
                }
                _ => {}
            }
        }
    }

    /// One fan-out message (`EPOCH OFFSET TS DATA_AT JSON`), or a creation notice (the new
    /// channel's name).
    pub(super) fn arrived(&self, name: &str, payload: &[u8]) {
        if name.starts_with(NOTICE) {
            let Ok(channel) = std::str::from_utf8(payload) else { return };
            let watched = self.watched.lock().keys().any(|p| channel.starts_with(&**p));
            if watched && let Some(l) = self.listener() {
                l.published(channel);
            }
            return;
        }
        if name == CURSORS {
            match serde_json::from_slice::<CursorMove>(payload) {
                Ok(moved) => {
                    if let Some(l) = self.listener() {
                        l.cursor_moved(&moved);
                    }
                }
                Err(_) => tracing::warn!("a cursor message that does not parse; ignored"),
            }
            return;
        }
        let Some(channel) = channel_of(name) else { return };
        if let Some(signal) = payload.strip_prefix(b"!") {
            if !self.interest.lock().contains_key(channel) {
                return;
            }
            match parse_signal(signal) {
                Some(signal) => {
                    if let Some(l) = self.listener() {
                        l.signalled(channel, &signal);
                    }
                }
                None => tracing::warn!(channel, "a presence message that does not parse; ignored"),
            }
            return;
        }
        let Some((epoch, offset, ts, data_at, json)) = parse_message(payload) else {
            tracing::warn!(channel, "a fan-out message that does not parse; ignored");
            return;
        };
        let (epoch, in_state) = {
            let mut interest = self.interest.lock();
            let Some(i) = interest.get_mut(channel) else { return };
            let epoch = match &i.seen {
                Some((e, _)) if **e == *epoch => e.clone(),
                _ => Arc::<str>::from(epoch),
            };
            if i.seen.as_ref().is_none_or(|(e, o)| *e != epoch || offset > *o) {
                i.seen = Some((epoch.clone(), offset));
            }
            (epoch, i.retention.state)
        };
        let Some(p) =
            Publication::from_encoded(offset, ts, json.into(), data_at).map(|p| p.in_state(in_state))
        else {
            tracing::warn!(channel, "a fan-out message whose publication does not parse; ignored");
            return;
        };
        if let Some(l) = self.listener() {
            l.deliver(channel, &epoch, &Arc::new(p));
        }
    }
}
