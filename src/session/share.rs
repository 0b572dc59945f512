//! The share of the node's channels that anonymous clients of one address may hold.
//!
//! Anyone may open connections and subscribe without a token, and every new channel name takes
//! one of the node's `limits.max_channels` slots. So the subscriptions of anonymous sessions are
//! counted per client address (IPv6 by its /64, which one client usually holds whole, as the
//! upgrade limit counts), in distinct channels: a subscription to a channel the address already
//! holds costs nothing more, so many people behind one NAT following the same feeds are not
//! held back. An address may hold `limits.anonymous_channel_share` of `max_channels` (at least
//! one); filling the table then takes that many addresses instead of one connection. Sessions
//! with a token are not counted: their rights come from whoever issued it.
//!
//! A place is a [`ShareHold`], taken before the subscription is made and kept with it; dropping
//! it (the subscription ended, failed, or its connection went) gives the place back. The table
//! holds only addresses with a live or pending anonymous subscription.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// Per address, the channels its anonymous subscriptions hold, each with how many hold it.
#[derive(Debug)]
pub(crate) struct AddressShare {
    /// Distinct channels one address may hold.
    per_address: usize,
    /// One lock for the table: taken once per anonymous subscribe and once per end of one, never
    /// by a publication's delivery.
    table: Mutex<HashMap<IpAddr, HashMap<Arc<str>, u32>>>,
}

/// The address a share is kept for: an IPv4 address (IPv4-mapped IPv6 ones too), or the /64 of
/// an IPv6 address.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl AddressShare {
    /// `share` of `max_channels` per address (rounded down, at least one channel).
    pub(crate) fn new(max_channels: usize, share: f64) -> AddressShare {
        // Rounded down; the nudge keeps a product such as 100 * 0.29 (28.999...) at 29.
        let per_address = ((max_channels as f64 * share + 1e-9) as usize).max(1);
        AddressShare { per_address, table: Mutex::default() }
    }

    /// Distinct channels one address may hold.
    pub(crate) fn per_address(&self) -> usize {
        self.per_address
    }

    /// A place for a subscription of `ip` to `channel`; `None` when the address already holds
    /// its share and `channel` is not among its channels.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr, channel: &str) -> Option<ShareHold> {
        let key = key(ip);
        let mut table = self.table.lock();
        let held = table.entry(key).or_default();
        let channel: Arc<str> = match held.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            // Not empty, as `per_address` is at least one: the table keeps no empty entry.
            None if held.len() >= self.per_address => return None,
            None => channel.into(),
        };
        *held.entry(channel.clone()).or_insert(0) += 1;
        Some(ShareHold { share: self.clone(), key, channel })
    }

    /// Distinct channels `ip`'s address holds now.
    #[cfg(test)]
    pub(crate) fn held(&self, ip: IpAddr) -> usize {
        self.table.lock().get(&key(ip)).map_or(0, HashMap::len)
    }

    /// Addresses in the table.
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> usize {
        self.table.lock().len()
    }
}

/// One anonymous subscription's place in its address's share; dropping it gives the place back.
#[must_use = "the place is given back when this is dropped: keep it with the subscription"]
#[derive(Debug)]
pub(crate) struct ShareHold {
    share: Arc<AddressShare>,
    key: IpAddr,
    channel: Arc<str>,
}

impl Drop for ShareHold {
    fn drop(&mut self) {
        let mut table = self.share.table.lock();
        let Some(held) = table.get_mut(&self.key) else { return };
        if let Some(n) = held.get_mut(&self.channel) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.channel);
            }
        }
        if held.is_empty() {
            table.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_holds_its_share_of_distinct_channels() {
        let share = Arc::new(AddressShare::new(1_000, 0.002));
        assert_eq!(share.per_address(), 2);
        let a = ip("10.0.0.1");
        let one = share.take(a, "c:1").expect("first channel");
        let two = share.take(a, "c:2").expect("second channel");
        let one_again = share.take(a, "c:1").expect("a channel it holds costs nothing");
        assert!(share.take(a, "c:3").is_none(), "a third channel is over the share");
        assert!(share.take(ip("10.0.0.2"), "c:3").is_some(), "addresses are independent");
        drop(one);
        assert!(share.take(a, "c:3").is_none(), "c:1 is still held by its other subscription");
        drop(one_again);
        let three = share.take(a, "c:3").expect("c:1 was let go");
        drop((two, three));
        assert_eq!(share.held(a), 0);
        assert_eq!(share.addresses(), 0, "the table forgets addresses that hold nothing");
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let share = Arc::new(AddressShare::new(100, 0.01));
        assert_eq!(share.per_address(), 1);
        let _held = share.take(ip("2001:db8:1:2::1"), "c:1").unwrap();
        assert!(share.take(ip("2001:db8:1:2:ffff::9"), "c:2").is_none(), "the same /64");
        assert!(share.take(ip("2001:db8:1:3::1"), "c:2").is_some(), "another /64");
        let _v4 = share.take(ip("192.0.2.7"), "c:1").unwrap();
        assert!(share.take(ip("::ffff:192.0.2.7"), "c:9").is_none(), "mapped IPv4 is that IPv4");
    }

    #[test]
    fn a_refused_address_leaves_nothing_behind_and_the_share_is_at_least_one() {
        let share = Arc::new(AddressShare::new(10, 0.001));
        assert_eq!(share.per_address(), 1, "rounded down, but at least one");
        assert_eq!(AddressShare::new(100, 0.29).per_address(), 29, "not 28 for a float's sake");
        assert_eq!(AddressShare::new(100_000, 0.01).per_address(), 1_000);
        let held = share.take(ip("10.0.0.1"), "c:1").unwrap();
        assert!(share.take(ip("10.0.0.1"), "c:2").is_none());
        drop(held);
        assert_eq!(share.addresses(), 0);
    }
}
