//! Subscription ids: unique within the process, unpredictable-looking, always 16 hex digits (so
//! a front door that puts them into every frame puts the same number of bytes there).

/// Length of every subscription id (hex digits).
pub const SUB_ID_LEN: usize = 16;

/// A subscription id: 16 hex digits, unique within this process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubId(pub [u8; SUB_ID_LEN]);

impl SubId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ids are hex digits; qed")
    }

    /// Parses an id a client sent back.
    pub fn parse(s: &str) -> Option<SubId> {
        let bytes: [u8; SUB_ID_LEN] = s.as_bytes().try_into().ok()?;
        bytes.iter().all(u8::is_ascii_hexdigit).then_some(SubId(bytes))
    }
}

impl std::fmt::Debug for SubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes unique, unpredictable-looking ids: a counter passed through a bijection keyed at start.
#[derive(Debug)]
pub struct SubIdGen {
    next: std::sync::atomic::AtomicU64,
    key: u64,
}

impl Default for SubIdGen {
    fn default() -> Self {
        SubIdGen { next: std::sync::atomic::AtomicU64::new(1), key: rand::random() }
    }
}

impl SubIdGen {
    /// A new id.
    pub fn next(&self) -> SubId {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // xor and multiplication by an odd constant are both bijections on u64: no repeats.
        let mixed = (n ^ self.key).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ self.key;
        let mut id = [0u8; SUB_ID_LEN];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in id.iter_mut().enumerate() {
            *b = HEX[((mixed >> (60 - 4 * i)) & 0xf) as usize];
        }
        SubId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_parse_back() {
        let g = SubIdGen::default();
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| g.next()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = g.next();
        assert_eq!(SubId::parse(id.as_str()), Some(id));
        assert_eq!(SubId::parse("xyz"), None);
        assert_eq!(SubId::parse("zzzzzzzzzzzzzzzz"), None);
    }
}
