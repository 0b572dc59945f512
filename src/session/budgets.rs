//! The call budgets of `POST /rpc`: one per principal (a JWT's subject, a static key), and for
//! anonymous clients one per address (IPv6 by /64), shared by all their requests and
//! connections. Each is a [`CallBudget`] of the principal's rate, like a WebSocket's: a batch
//! is charged one call per entry, refused calls are -32003, and a client that keeps sending far
//! over its rate is a flood, answered 429 and disconnected.
//!
//! Budgets that have refilled and that no request holds are forgotten every
//! [`SWEEP_EVERY`], so the table holds the clients of the last seconds. It is capped: when an
//! attack from very many addresses fills it, the new ones share one overflow budget, so the
//! attack throttles itself and not the clients already known.

use super::CallBudget;
use crate::auth::{Kind, Principal};
use crate::gate::address_key;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Budgets kept at most.
const MAX_TRACKED: usize = 262_144;
/// How often idle budgets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Whose budget.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Whose {
    /// An anonymous client's address.
    Address(IpAddr),
    /// A static key's name.
    Static(String),
    /// A JWT's subject.
    Jwt(String),
}

#[derive(Debug)]
struct Table {
    budgets: HashMap<Whose, Arc<Mutex<CallBudget>>>,
    swept: Instant,
}

/// Every `POST /rpc` budget of the node.
#[derive(Debug)]
pub struct Budgets {
    table: Mutex<Table>,
    overflow: Arc<Mutex<CallBudget>>,
    default_rate: u32,
}

impl Budgets {
    /// Budgets of `default_rate` calls a second unless a principal has its own.
    pub fn new(default_rate: u32) -> Budgets {
        Budgets {
            table: Mutex::new(Table { budgets: HashMap::new(), swept: Instant::now() }),
            overflow: Arc::new(Mutex::new(CallBudget::new(Some(default_rate)))),
            default_rate,
        }
    }

    /// The budget a request of `principal` from `remote` is charged to.
    pub fn of(&self, principal: &Principal, remote: IpAddr) -> Arc<Mutex<CallBudget>> {
        let rate = principal.call_rate(self.default_rate);
        let key = match principal.kind {
            // Unlimited: nothing to share or remember.
            _ if rate.is_none() => return Arc::new(Mutex::new(CallBudget::new(None))),
            Kind::Anonymous | Kind::Admin => Whose::Address(address_key(remote)),
            Kind::StaticKey => Whose::Static(principal.subject.clone()),
            // A user the backend names is charged like a JWT's subject: one budget per user.
            Kind::Jwt | Kind::Backend => Whose::Jwt(principal.subject.clone()),
        };
        let now = Instant::now();
        let mut t = self.table.lock();
        if now.saturating_duration_since(t.swept) >= SWEEP_EVERY || t.budgets.len() >= MAX_TRACKED {
            t.budgets.retain(|_, b| Arc::strong_count(b) > 1 || !b.lock().is_idle_at(now));
            t.swept = now;
        }
        if let Some(b) = t.budgets.get(&key) {
            return b.clone();
        }
        if t.budgets.len() >= MAX_TRACKED {
            return self.overflow.clone();
        }
        t.budgets.entry(key).or_insert_with(|| Arc::new(Mutex::new(CallBudget::new(rate)))).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Verdict;

    fn anonymous() -> Principal {
        Principal::anonymous()
    }

    #[test]
    fn requests_of_one_client_share_a_budget_and_others_have_their_own() {
        let budgets = Budgets::new(5);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = budgets.of(&anonymous(), a);
        assert!((0..5).all(|_| first.lock().charge() == Verdict::Allow));
        let second = budgets.of(&anonymous(), a);
        assert_eq!(second.lock().charge(), Verdict::Reject, "the same address's next request");
        let other = budgets.of(&anonymous(), "10.0.0.2".parse().unwrap());
        assert_eq!(other.lock().charge(), Verdict::Allow, "another address");
        let v6 = budgets.of(&anonymous(), "2001:db8::1".parse().unwrap());
        assert!((0..5).all(|_| v6.lock().charge() == Verdict::Allow));
        let same64 = budgets.of(&anonymous(), "2001:db8::2:3".parse().unwrap());
        assert_eq!(same64.lock().charge(), Verdict::Reject, "an IPv6 client is its /64");
    }

    #[test]
    fn a_principal_is_charged_wherever_it_calls_from() {
        let budgets = Budgets::new(2);
        let mut key = anonymous();
        key.kind = Kind::StaticKey;
        key.subject = "bot".into();
        key.rate = Some(3);
        let from_a = budgets.of(&key, "10.0.0.1".parse().unwrap());
        assert!((0..3).all(|_| from_a.lock().charge() == Verdict::Allow), "the key's own rate");
        let from_b = budgets.of(&key, "10.0.0.9".parse().unwrap());
        assert_eq!(from_b.lock().charge(), Verdict::Reject);
    }
}
