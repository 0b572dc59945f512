//! `serve --demo`: a market simulator, so that a new user sees data at once.
//!
//! Three coins (BTC, ETH, SOL) follow a random walk. Each publishes a few trades a second to
//! `trades:{COIN}`, each a list of one `{"coin","side","px","sz","time","hash","tid","users"}`
//! (event `trade`), and its order book twice a second to `l2Book:{COIN}` as
//! `{"coin","time","levels":[bids,asks]}` with levels `{"px","sz","n"}` (event `book`): the
//! Hyperliquid API's shapes and field names, so its clients read them on `/ws`. Prices and sizes
//! are strings, as exchanges send them. `ticker:{COIN}` is a state channel (`mode = "state"`):
//! key `mid` is set every second to the mid price, key `last` to each trade's
//! `{"px","sz","side"}`, so its snapshot is the coin's current ticker with its checksum.

use crate::broker::NewPublication;
use crate::broker::memory::now_ms;
use crate::hub::Hub;
use crate::shutdown::Shutdown;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Ticks per second of the simulator.
const TICKS_PER_SECOND: u64 = 10;

struct Coin {
    name: &'static str,
    mid: f64,
    tick: f64,
    decimals: usize,
    size: f64,
}

/// A small deterministic generator (xorshift64*): the simulator needs variety, not secrecy.
struct Walk(u64);

impl Walk {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Starts the simulator; it stops with the server.
pub(crate) fn spawn(hub: Arc<Hub>, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut coins = [
            Coin { name: "BTC", mid: 97_000.0, tick: 1.0, decimals: 0, size: 0.05 },
            Coin { name: "ETH", mid: 3_400.0, tick: 0.1, decimals: 1, size: 0.8 },
            Coin { name: "SOL", mid: 190.0, tick: 0.01, decimals: 2, size: 25.0 },
        ];
        let mut rng = Walk(now_ms() | 1);
        let mut tid: u64 = now_ms() * 10;
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / TICKS_PER_SECOND));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.triggered() => return,
            }
            n += 1;
            for c in coins.iter_mut() {
                c.mid = (c.mid * (1.0 + (rng.unit() - 0.5) * 0.0008)).max(c.tick * 10.0);
                // About three trades a second per coin.
                if rng.unit() < 0.3 {
                    tid += 1;
                    let side = if rng.unit() < 0.5 { "B" } else { "A" };
                    let px = c.mid + (rng.unit() - 0.5) * c.tick * 4.0;
                    let sz = c.size * (0.1 + rng.unit() * 2.0);
                    // A list of trades, as the Hyperliquid API sends them.
                    let trade = json!([{
                        "coin": c.name, "side": side, "px": fmt(px, c.decimals), "sz": fmt(sz, 4),
                        "time": now_ms(), "hash": format!("0x{:064x}", tid), "tid": tid,
                        "users": ["0x0000000000000000000000000000000000000001", "0x0000000000000000000000000000000000000002"],
                    }]);
                    publish(&hub, format!("trades:{}", c.name), "trade", trade).await;
                    let last = json!({"px": fmt(px, c.decimals), "sz": fmt(sz, 4), "side": side});
                    publish_key(&hub, format!("ticker:{}", c.name), "last", last).await;
                }
                if n.is_multiple_of(TICKS_PER_SECOND) {
                    publish_key(&hub, format!("ticker:{}", c.name), "mid", json!(fmt(c.mid, c.decimals)))
                        .await;
                }
                if n.is_multiple_of(TICKS_PER_SECOND / 2) {
                    publish(&hub, format!("l2Book:{}", c.name), "book", book(c, &mut rng)).await;
                }
            }
        }
    });
}

fn book(c: &Coin, rng: &mut Walk) -> Value {
    let level = |i: usize, sign: f64, rng: &mut Walk| {
        let px = c.mid + sign * c.tick * (1.0 + i as f64 * 2.0);
        json!({"px": fmt(px, c.decimals), "sz": fmt(c.size * (0.5 + rng.unit() * 5.0), 4), "n": 1 + (rng.unit() * 6.0) as u32})
    };
    let bids: Vec<Value> = (0..5).map(|i| level(i, -1.0, rng)).collect();
    let asks: Vec<Value> = (0..5).map(|i| level(i, 1.0, rng)).collect();
    json!({"coin": c.name, "time": now_ms(), "levels": [bids, asks]})
}

fn fmt(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

/// Sets `key` of state channel `channel` to `data`.
async fn publish_key(hub: &Hub, channel: String, key: &str, data: Value) {
    let data = serde_json::value::to_raw_value(&data).expect("a JSON value serializes; qed");
    let p =
        NewPublication { data, event: Some("ticker".into()), idempotency_key: None, key: Some(key.into()) };
    if let Err(e) = hub.publish(&channel, p).await {
        tracing::warn!(%channel, "demo publish failed: {e}");
    }
}

async fn publish(hub: &Hub, channel: String, event: &str, data: Value) {
    let data = serde_json::value::to_raw_value(&data).expect("a JSON value serializes; qed");
    let p = NewPublication { data, event: Some(event.into()), idempotency_key: None, key: None };
    if let Err(e) = hub.publish(&channel, p).await {
        tracing::warn!(%channel, "demo publish failed: {e}");
    }
}
