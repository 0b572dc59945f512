//! Every default of the configuration, in one place, each with the reason for its value.
//!
//! `Config::default()` is built from these; `rpchub.example.toml` shows the same values and a test
//! keeps the two in step.

use std::time::Duration;

/// Listen address: loopback, so a fresh install is not exposed until someone decides to.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7410";

/// Broker: the embedded one, so a single process needs nothing else.
pub const DEFAULT_BROKER: &str = "memory";

/// Largest client message (after reassembling fragments), in bytes. JSON-RPC calls are small; a
/// bound this low keeps a flood of big frames cheap to refuse (Centrifugo and Hyperliquid use
/// similar limits).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;

/// Messages shorter than this go uncompressed on a connection with permessage-deflate
/// (`compression_min_bytes`): deflate's block overhead and a compressor's setup cost more than
/// a short message saves.
pub const DEFAULT_COMPRESSION_MIN_BYTES: usize = 256;

/// Largest body of `POST /api/publish`: a batch of 1,000 publications (the most one request may
/// carry) of up to a client message (4 KiB) each. Only requests with a valid token get this far,
/// and the body must still arrive at `limits.request_min_rate`.
pub const DEFAULT_MAX_PUBLISH_BODY_BYTES: usize = 4 << 20;

/// Publications one `POST /api/publish` batch may carry.
pub const MAX_PUBLISH_BATCH: usize = 1000;

/// Messages a client connection may have queued (not yet taken by its socket) before it is
/// dropped as a slow consumer. 256 is what Centrifugo and most exchange gateways allow.
pub const DEFAULT_OUTBOUND_QUEUE_MESSAGES: usize = 256;

/// Bytes a client connection may have queued before it is dropped as a slow consumer: the
/// message bound alone would let 256 large snapshots pile up.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 8 << 20;

/// The reader of a connection stops reading its calls while the answers waiting for its client
/// exceed `limits.outbound_queue_bytes` divided by this (2 MiB by default). Answers are not
/// counted by the slow-consumer rule, so this bounds them instead: with a quarter, what a
/// connection's answers hold (about twice this plus the calls in flight: one share queued, one in
/// the writer's hands) stays within what its publications may hold.
pub const ANSWER_SHARE_OF_OUTBOUND_QUEUE: usize = 4;

/// How often the server pings an idle client. 54 s and 60 s are the classic pair (9/10 of the
/// pong wait), below the 60 s idle timeout of most load balancers.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(54);

/// A client that sends nothing (no pong, no message) for this long is disconnected.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(60);

/// WebSocket upgrades per minute from one client IP address.
pub const DEFAULT_UPGRADES_PER_MINUTE: u32 = 100;

/// Concurrent WebSocket connections; beyond it upgrades are refused with 429.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Concurrent TCP connections that are not WebSockets; beyond it a new connection is closed at
/// once. A tenth of the WebSockets: plain requests are short, and upgrades leave this count.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 10_000;

/// Descriptors kept out of `max_connections` and `max_http_connections` for everything else the process opens: the
/// listener, the broker's and the backend's connections, log files. Without them, a node full
/// of clients could not reach its broker, and `accept` would fail with EMFILE.
pub const DESCRIPTOR_RESERVE: u64 = 256;

/// Connections one client address may hold that are not WebSockets: nginx's `limit_conn`. A
/// backend's keep-alive pool is well within it; thousands of half-sent requests are not.
pub const DEFAULT_HTTP_CONNECTIONS_PER_ADDRESS: usize = 256;

/// Time for a request's head, then again for its body (Apache's `RequestReadTimeout`): a
/// slow-loris client is cut off after it, whatever it trickles.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Each this many bytes of a request body extend its deadline by a second (`MinRate` of
/// Apache's `RequestReadTimeout`, whose default this is): a large body on a slow link still
/// arrives, a trickle does not hold a connection.
pub const DEFAULT_REQUEST_MIN_RATE: u32 = 500;

/// An HTTP answer whose socket accepts nothing for this long is dropped (nginx's
/// `send_timeout`): a client that does not read cannot pin the answer's memory.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer to one message, a call or a whole batch: 1 MiB holds a full default history
/// page of maximum-size publications twice over, and a 4 KiB batch cannot make the node write
/// 25 MB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Subscriptions one connection may hold.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1024;

/// JSON-RPC calls per second per connection (a token bucket holding one second's worth).
pub const DEFAULT_CALLS_PER_SECOND: u32 = 200;

/// Calls of one connection handled at the same time (`limits.calls_in_flight`).
pub const DEFAULT_CALLS_IN_FLIGHT: usize = 8;

/// Channels the node keeps state for (history, offsets, subscribers). Bounds the memory that
/// publishers and subscribers can make the node spend on distinct channel names.
pub const DEFAULT_MAX_CHANNELS: usize = 100_000;

/// The share of `limits.max_channels` that anonymous clients (no token) of one address (IPv6 by
/// its /64, as the upgrade limit counts it) may hold with their subscriptions: 1% of 100,000 is
/// 1,000 distinct channels, far more than a person's browser tabs or a public dashboard follow,
/// while filling the node's channel table takes a hundred addresses instead of one.
pub const DEFAULT_ANONYMOUS_CHANNEL_SHARE: f64 = 0.01;

/// Publications kept per channel for snapshots and recovery.
pub const DEFAULT_HISTORY_SIZE: usize = 100;

/// How long a publication stays in history.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);

/// How long shutdown waits for clients to go before it stops anyway.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where instances made or changed by `POST /api/events/websocket/{instance}` are kept, unless
/// `instances_file` says otherwise (relative to the working directory).
pub const DEFAULT_INSTANCES_FILE: &str = "rpchub-instances.json";

/// Longest wait for a backend's JSON answer, or a streamed one's first byte (`backend.timeout`).
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a streamed reply may run (`backend.stream_timeout`).
pub const DEFAULT_BACKEND_STREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Proxied calls per connection at once (`backend.max_in_flight`).
pub const DEFAULT_BACKEND_MAX_IN_FLIGHT: usize = 8;
/// Largest JSON answer, or streamed line, taken from the backend (`backend.max_body_bytes`).
pub const DEFAULT_BACKEND_MAX_BODY_BYTES: usize = 1 << 20;
/// How often each node posts its `presence` reconciliation event (`backend.hooks_reconcile`).
pub const DEFAULT_HOOKS_RECONCILE: Duration = Duration::from_secs(60);
/// Hook events kept while the backend does not take them (`backend.hooks_queue`).
pub const DEFAULT_HOOKS_QUEUE: usize = 10_000;
/// Longest wait for an upstream JSON-RPC node's answer (`upstream.timeout`).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the 101 of `/ws/{instance}` waits for the connection's subscription to be live.
pub const INSTANCE_LIVE_WAIT: Duration = Duration::from_secs(5);

/// Default log filter (`tracing_subscriber::EnvFilter` syntax).
pub const DEFAULT_LOG: &str = "info";

/// Pending connections the kernel may queue for `accept` (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// After the server sends a close frame, how long it waits for the client's close frame before
/// it drops the TCP connection.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the connection registry checks ping deadlines.
pub const PING_SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// How often expired history and idle channels are swept.
pub const HISTORY_SWEEP_PERIOD: Duration = Duration::from_secs(5);

/// Calls rejected by the rate limit, within one second, after which a connection is closed as a
/// flood (policy violation, close code 1008).
pub const FLOOD_REJECTIONS_PER_SECOND: u32 = 200;

/// The Redis broker's bound on every command (and on connecting): past it the command fails with
/// `broker_unavailable` and the broker counts Redis as down until a ping answers again.
pub const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the Redis broker pings Redis (its latency, and whether it is up), and retries the
/// connection while Redis is down.
pub const REDIS_PING_PERIOD: Duration = Duration::from_secs(1);

/// How often the Redis broker checks the position of every channel with local interest against
/// what its pub/sub delivered, which catches a lost message on a quiet channel.
pub const REDIS_POSITION_CHECK_PERIOD: Duration = Duration::from_secs(2);

/// How often the Redis broker lists the channels under every prefix watched for pattern
/// subscriptions, which catches a creation notice lost without the pub/sub connection dropping
/// (a dropped connection is relisted at once when it is back).
pub const REDIS_RELIST_PERIOD: Duration = Duration::from_secs(30);

/// Shortest namespace `heartbeat`.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Longest namespace `heartbeat`.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);

/// Shortest conflation interval (`limits.min_conflate_ms`).
pub const DEFAULT_MIN_CONFLATE_MS: u64 = 10;
/// Longest conflation interval (`limits.max_conflate_ms`).
pub const DEFAULT_MAX_CONFLATE_MS: u64 = 60_000;

/// Default `max_pattern_channels` of a namespace: the channels one pattern subscription may
/// follow.
pub const DEFAULT_MAX_PATTERN_CHANNELS: usize = 1000;
/// The most `max_pattern_channels` may be.
pub const MAX_PATTERN_CHANNELS: usize = 100_000;

/// Default `presence_ttl`: how long a client's presence entry outlives the last refresh of its
/// node. A node refreshes its entries every third of it, so a node that dies without saying
/// goodbye has its clients leave within this long (plus a refresh period of another node's).
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(30);
/// Shortest `presence_ttl`.
pub const MIN_PRESENCE_TTL: Duration = Duration::from_secs(1);

/// How long joins and leaves wait to be sent, so that a client that subscribes and goes again
/// within it (a reconnect loop) costs its channel neither: the two cancel out.
pub const PRESENCE_COALESCE: Duration = Duration::from_millis(50);

/// The most clients a `presence` answer lists (`count` says how many there are).
pub const MAX_PRESENCE_LISTED: usize = 1000;

/// The most read cursors one user holds (`cursor_set` of one more channel is refused).
pub const MAX_CURSORS_PER_USER: usize = 10_000;

/// The most channels one `cursor_get` or `unread` call names.
pub const MAX_CURSOR_CHANNELS: usize = 1000;
