//! `GET /ws/{instance}`: per-instance event streams, server-push only.
//!
//! An instance is a named event source with its own token ([`InstanceConfig`]), from the config
//! file's `[instances.NAME]` tables and from `POST /api/events/websocket/{instance}`, which keeps
//! what it makes in `instances_file` ([`Instances::set`]). A connection of instance NAME follows
//! channel `instance:NAME` through the subscription service (limits, metrics and shutdown as
//! for every door) with a principal of its own that may read that channel and nothing else,
//! whatever the namespace's rules. Each publication whose `event` the instance's `events`
//! filter admits arrives as
//! `{"event":E,"data":D,"instanceData":{"baseUrl":B,"instance":NAME,"epoch":EP,"offset":N}}`
//! (`E` is `null` for a publication without an event name, which passes only an empty filter).
//! `?since=EPOCH:OFFSET` on the upgrade resumes with exactly the publications missed; when the
//! history no longer covers them, a `resync` frame says so first. Client messages are ignored.

use super::Door;
use crate::auth::{Authenticator, Globs, Kind, Principal};
use crate::broker::{Publication, StreamPosition};
use crate::config::{Config, InstanceConfig, Secret};
use crate::hub::{Deflated, Encoding, Event, Filter, Sink};
use crate::metrics::Metrics;
use crate::session::{Session, Subscriptions};
use crate::transport::{Conn, Ending, FrameWriter, Handled, Link, Splice, frame};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The door's label in metrics.
pub const DOOR: &str = "instance";

/// The channel an instance's clients follow.
pub fn channel_of(name: &str) -> String {
    format!("instance:{name}")
}

/// The instances file: `{"version":1,"instances":{NAME: InstanceConfig}}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesFile {
    version: u32,
    instances: BTreeMap<String, InstanceConfig>,
}

/// The instances of a node, and their door.
#[derive(Debug)]
pub struct Instances {
    /// Every instance: the config file's, then the instances file's over them.
    live: RwLock<BTreeMap<String, InstanceConfig>>,
    /// What the instances file holds (the instances the API made or changed); its lock is held
    /// while the file is written, so writes are in order.
    saved: Mutex<BTreeMap<String, InstanceConfig>>,
    file: PathBuf,
    subscriptions: Arc<Subscriptions>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl Instances {
    /// The config file's instances, with the instances file's (if it exists) over them.
    pub fn new(
        config: &Config,
        subscriptions: Arc<Subscriptions>,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Instances>, String> {
        let file = config.instances_file.clone();
        let saved = match std::fs::read(&file) {
            Ok(bytes) => {
                let f: InstancesFile = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("instances_file {}: {e}", file.display()))?;
                if let Some(bad) = f.instances.keys().find(|n| !crate::config::valid_instance_name(n)) {
                    return Err(format!("instances_file {}: {bad:?} is no instance name", file.display()));
                }
                f.instances
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("instances_file {}: {e}", file.display())),
        };
        let mut live = config.instances.clone();
        live.extend(saved.clone());
        if !live.is_empty() {
            tracing::info!(instances = live.len(), from_file = saved.len(), "instances loaded");
        }
        Ok(Arc::new(Instances {
            live: RwLock::new(live),
            saved: Mutex::new(saved),
            file,
            subscriptions,
            auth,
            metrics,
        }))
    }

    /// The instance `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<InstanceConfig> {
        self.live.read().get(name).cloned()
    }

    /// True when a publication with `event` reaches the clients of `name` now.
    fn admits(&self, name: &str, event: Option<&str>) -> bool {
        self.live.read().get(name).is_some_and(|i| i.admits(event))
    }

    /// Creates or replaces the instance `name` and saves it in the instances file (written to a
    /// temporary file first, then renamed over it); in use only once saved.
    pub fn set(&self, name: &str, instance: InstanceConfig) -> Result<(), String> {
        let mut saved = self.saved.lock();
        let mut next = saved.clone();
        next.insert(name.to_string(), instance.clone());
        write_atomically(&self.file, &InstancesFile { version: 1, instances: next.clone() })
            .map_err(|e| format!("cannot write instances_file {}: {e}", self.file.display()))?;
        *saved = next;
        self.live.write().insert(name.to_string(), instance);
        Ok(())
    }

    /// True when `token` opens instance `instance`'s stream: its own token, or an admin one.
    pub fn token_opens(&self, instance: &InstanceConfig, token: &str) -> bool {
        constant_time_eq(instance.token.expose().as_bytes(), token.as_bytes())
            || self.auth.authenticate(token).is_ok_and(|p| p.is_admin())
    }

    /// The principal of a connection of instance `name`: it may read `instance:{name}`.
    pub fn principal(name: &str) -> Principal {
        let channels = Globs::new(&[channel_of(name)]).expect("a valid name is a literal pattern; qed");
        Principal {
            kind: Kind::StaticKey,
            subject: channel_of(name),
            channels,
            publish: Globs::default(),
            rate: None,
            expires_at: None,
        }
    }
}

/// Writes `f` as JSON to `path` through a temporary file beside it (owner-only on Unix: it
/// holds tokens).
fn write_atomically(path: &std::path::Path, f: &InstancesFile) -> std::io::Result<()> {
    use std::io::Write;
    let text = serde_json::to_vec_pretty(f).expect("instances serialize; qed");
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut out = opts.open(&tmp)?;
    out.write_all(&text)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// What one upgrade to `/ws/{instance}` opens: the [`Door`] the server's upgrade runs it
/// through.
#[derive(Debug)]
pub struct Opening {
    /// The node's instances.
    pub instances: Arc<Instances>,
    /// The instance.
    pub name: String,
    /// The server's base URL as the client reached it.
    pub base_url: String,
    /// Where to resume from.
    pub since: Option<StreamPosition>,
    /// Told once the connection's subscription is live (dropped if it fails): the 101 waits for
    /// it, so that every publication accepted after the 101 reaches the client.
    pub live: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Door for Opening {
    fn name(&self) -> &'static str {
        DOOR
    }

    fn connect(&self, session: Arc<Session>) -> Arc<dyn Conn> {
        self.instances.metrics.connection_opened(DOOR);
        self.instances.subscriptions.connected(&session);
        let encoding = Arc::new(InstanceEncoding {
            head: instance_head(&self.base_url, &self.name),
            epoch: OnceLock::new(),
        });
        let conn = Arc::new(InstanceConn {
            instances: self.instances.clone(),
            session,
            name: self.name.clone(),
            encoding,
            following: AtomicBool::new(false),
        });
        tokio::spawn(conn.clone().follow(self.since.clone(), self.live.lock().take()));
        conn
    }
}

/// `"instanceData":{"baseUrl":B,"instance":NAME` (left open for the position).
fn instance_head(base_url: &str, name: &str) -> String {
    let base = serde_json::to_string(base_url).expect("a str serializes; qed");
    format!(r#""instanceData":{{"baseUrl":{base},"instance":"{name}""#)
}

/// The frames of one connection: its `instanceData` is its own.
#[derive(Debug)]
struct InstanceEncoding {
    head: String,
    /// The channel's epoch, known once the subscription's history is read.
    epoch: OnceLock<Arc<str>>,
}

impl InstanceEncoding {
    fn epoch(&self) -> &str {
        self.epoch.get().map_or("", |e| e)
    }

    /// One publication's frame payload.
    fn publication(&self, p: &Publication, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"event":"#);
        out.extend_from_slice(p.event_json().unwrap_or("null").as_bytes());
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(p.data().as_bytes());
        out.push(b',');
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(format!(r#","epoch":"{}","offset":{}}}}}"#, self.epoch(), p.offset).as_bytes());
    }

    /// `{"event":NAME,"data":DATA,"instanceData":{..}}` for the server's own events.
    fn notice(&self, event: &str, data: serde_json::Value, out: &mut Vec<u8>) {
        out.extend_from_slice(format!(r#"{{"event":"{event}","data":{data},{}}}}}"#, self.head).as_bytes());
    }
}

impl Encoding for InstanceEncoding {
    fn splice_len(&self) -> usize {
        0
    }

    fn sends_snapshot(&self) -> bool {
        false
    }

    fn encode(&self, event: &Event<'_>, w: &mut FrameWriter<'_>) {
        let out = w.out();
        match event {
            Event::Publication { publication, .. } => self.publication(publication, out),
            // Not sent (`sends_snapshot`); written like the `resync` notice for completeness.
            Event::Snapshot { page, recovered, .. } => self.notice(
                "resync",
                serde_json::json!({"recovered": recovered, "epoch": &*page.epoch, "offset": page.offset}),
                out,
            ),
            Event::Closed { reason, .. } => self.notice("closed", serde_json::json!({"reason": reason}), out),
            Event::Heartbeat { offset, .. } => {
                self.notice("heartbeat", serde_json::json!({"offset": offset}), out)
            }
            Event::Presence { join, who, .. } => {
                self.notice(if *join { "join" } else { "leave" }, serde_json::json!({"info": who}), out)
            }
            Event::Gap { from, to, reason, .. } => {
                self.notice("gap", serde_json::json!({"from": from, "to": to, "reason": reason}), out)
            }
        }
    }
}

/// One `/ws/{instance}` connection.
#[derive(Debug)]
struct InstanceConn {
    instances: Arc<Instances>,
    session: Arc<Session>,
    name: String,
    encoding: Arc<InstanceEncoding>,
    /// Set once the subscription is live: from then on, a connection without it has lost its
    /// stream and is closed.
    following: AtomicBool,
}

/// A text frame of `payload`, appended to `out`.
/// Appends `payload` as a text frame, compressed when the connection deflates messages of at
/// least `deflate_min` bytes (the snapshot goes out as several frames in one piece, which the
/// outbox would queue as they are).
fn push_frame(out: &mut Vec<u8>, payload: &[u8], deflate_min: Option<usize>) {
    if deflate_min.is_some_and(|min| payload.len() >= min) {
        return crate::transport::deflate::put_compressed_frame(out, frame::OP_TEXT, payload);
    }
    let (h, n) = frame::header_bytes(frame::OP_TEXT, payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// The event name of `p`, if it has one.
fn event_of(p: &Publication) -> Option<String> {
    p.event_json().and_then(|j| serde_json::from_str(j).ok())
}

impl InstanceConn {
    /// Subscribes the connection to its channel: the publications missed since `since` first
    /// (or a `resync` notice when they cannot be had), then the live ones.
    async fn follow(
        self: Arc<Self>,
        since: Option<StreamPosition>,
        live: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let outbox = self.link().outbox.clone();
        let channel = channel_of(&self.name);
        let asked = since.is_some();
        let pending =
            match self.instances.subscriptions.prepare(&self.session, &channel, since, Some(0), None).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(instance = %self.name, "cannot follow {channel}: {e}");
                    if e.is_broker_unavailable() {
                        return outbox.end(Ending::Close(frame::code::TRY_AGAIN_LATER, "broker unavailable"));
                    }
                    return outbox.end(Ending::Close(frame::code::INTERNAL, "cannot follow the instance"));
                }
            };
        let (page, recovered) = pending.page();
        let _ = self.encoding.epoch.set(page.epoch.clone());
        let mut first = Vec::new();
        let mut payload = Vec::new();
        if asked && !recovered {
            let data = serde_json::json!({"recovered": false, "epoch": &*page.epoch, "offset": page.offset});
            self.encoding.notice("resync", data, &mut payload);
            push_frame(&mut first, &payload, outbox.deflate_min());
        }
        for p in &page.publications {
            if self.instances.admits(&self.name, event_of(p).as_deref()) {
                payload.clear();
                self.encoding.publication(p, &mut payload);
                push_frame(&mut first, &payload, outbox.deflate_min());
            }
        }
        let (instances, name) = (self.instances.clone(), self.name.clone());
        let filter = Filter::new(move |p| instances.admits(&name, event_of(p).as_deref()));
        // A connection's own encoding (its instanceData is its own): compressed for it alone.
        let encoding: Arc<dyn Encoding> = match outbox.deflate_min() {
            Some(min_bytes) => Arc::new(Deflated { inner: self.encoding.clone(), min_bytes }),
            None => self.encoding.clone(),
        };
        let splice = Splice::new(&[]).expect("an empty splice fits; qed");
        let sink = Sink::new(outbox.clone(), encoding, splice).with_filter(filter);
        let parts: [&[u8]; 1] = [&first];
        let answer: &[&[u8]] = if first.is_empty() { &[] } else { &parts };
        // Fails only when the connection is closing: nothing more goes out then anyway.
        if pending.go_live(sink, answer).is_ok() {
            self.following.store(true, Ordering::Release);
        }
        outbox.nudge_writer();
        if let Some(tx) = live {
            let _ = tx.send(());
        }
    }
}

impl Conn for InstanceConn {
    fn link(&self) -> &Link {
        self.session.link().expect("a WebSocket session has a link; qed")
    }

    /// Server-push only: whatever the client sends is ignored.
    fn on_text(&self, _text: &str) -> Handled {
        Handled::Done
    }

    /// The hub ended the subscription (the `closed` frame is queued): the connection closes
    /// with 1011, and the client reconnects with `since`.
    fn tick(&self) {
        self.instances.subscriptions.tick(&self.session);
        if self.following.load(Ordering::Acquire) && self.session.subscription_count() == 0 {
            self.link().outbox.end(Ending::Close(frame::code::INTERNAL, "stream lost; reconnect with since"));
        }
    }

    fn on_end(&self, ending: Option<Ending>) {
        self.instances.metrics.connection_closed(DOOR, ending.and_then(|e| e.label()));
        self.instances.subscriptions.disconnected(&self.session, ending);
    }
}

/// The body of `POST /api/events/websocket/{instance}`: each field optional; a missing one
/// keeps the instance's value (or the default for a new instance, which needs `token`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstanceUpdate {
    enabled: Option<bool>,
    events: Option<Vec<String>>,
    media_base64: Option<bool>,
    token: Option<String>,
}

impl InstanceUpdate {
    /// `current` changed by this update; `Err` says what is wrong with it.
    pub fn apply(self, current: Option<InstanceConfig>) -> Result<InstanceConfig, String> {
        if let Some(t) = &self.token
            && (t.is_empty() || t.len() > 1024)
        {
            return Err("\"token\" must be 1 to 1024 characters".into());
        }
        if let Some(events) = &self.events
            && (events.len() > 1024 || events.iter().any(|e| e.is_empty() || e.len() > 255))
        {
            return Err("\"events\" is a list of at most 1024 event names of 1 to 255 characters".into());
        }
        let mut i = match (current, self.token) {
            (Some(mut i), token) => {
                if let Some(t) = token {
                    i.token = Secret(t);
                }
                i
            }
            (None, Some(t)) => {
                InstanceConfig { token: Secret(t), enabled: true, events: Vec::new(), media_base64: false }
            }
            (None, None) => {
                return Err("a new instance needs \"token\": the token its clients connect with".into());
            }
        };
        if let Some(e) = self.enabled {
            i.enabled = e;
        }
        if let Some(e) = self.events {
            i.events = e;
        }
        if let Some(m) = self.media_base64 {
            i.media_base64 = m;
        }
        Ok(i)
    }
}

/// An instance as the API answers it: everything but its token.
pub fn public_view(name: &str, i: &InstanceConfig) -> serde_json::Value {
    serde_json::json!({"instance": name, "enabled": i.enabled, "events": i.events, "mediaBase64": i.media_base64})
}

/// `?since=EPOCH:OFFSET` of an upgrade's query; `Err` says what is wrong.
pub fn since_of(query: Option<&str>) -> Result<Option<StreamPosition>, String> {
    let Some(q) = query else { return Ok(None) };
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        if k == "since" {
            let (epoch, offset) =
                v.rsplit_once(':').ok_or("since must be EPOCH:OFFSET (from instanceData)")?;
            let offset = offset.parse().map_err(|_| "since must be EPOCH:OFFSET, OFFSET a number")?;
            return Ok(Some(StreamPosition { epoch: epoch.to_string(), offset }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_and_updates() {
        assert_eq!(since_of(None), Ok(None));
        assert_eq!(since_of(Some("token=x")), Ok(None));
        let p = since_of(Some("token=x&since=ab%3Acd:12")).unwrap().unwrap();
        assert_eq!((p.epoch.as_str(), p.offset), ("ab:cd", 12));
        assert!(since_of(Some("since=12")).is_err() && since_of(Some("since=a:b")).is_err());

        let parse = |s: &str| serde_json::from_str::<InstanceUpdate>(s);
        assert!(parse(r#"{"other":1}"#).is_err() && parse(r#"{"enabled":1}"#).is_err());
        assert!(parse("{}").unwrap().apply(None).is_err(), "a new instance needs a token");
        let made = parse(r#"{"token":"t","events":["a"]}"#).unwrap().apply(None).unwrap();
        assert_eq!((made.enabled, made.events.clone(), made.media_base64), (true, vec!["a".into()], false));
        let changed = parse(r#"{"mediaBase64":true}"#).unwrap().apply(Some(made)).unwrap();
        assert_eq!((changed.token.expose(), changed.media_base64, changed.events.len()), ("t", true, 1));
        assert!(parse(r#"{"token":""}"#).unwrap().apply(None).is_err());
        assert!(parse(r#"{"token":"t","events":[""]}"#).unwrap().apply(None).is_err());
        assert!(!public_view("n", &changed).to_string().contains("\"t\""), "no token in the view");
    }
}
