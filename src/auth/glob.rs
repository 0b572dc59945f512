//! Channel permission patterns: `trades:*`, `conversation:conv-?`, `l2Book:{BTC,ETH}`.
//!
//! Patterns are globset globs over the whole channel name: `*` matches any run of characters
//! (including `:` and `/`), `?` one character, `[..]` a class, `{a,b}` alternatives.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A compiled list of patterns; matches when any pattern does.
#[derive(Clone, Debug)]
pub struct Globs {
    set: GlobSet,
    patterns: Vec<String>,
}

impl Default for Globs {
    fn default() -> Self {
        Globs { set: GlobSet::empty(), patterns: Vec::new() }
    }
}

impl PartialEq for Globs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Globs {
    /// Compiles `patterns`; the error names the bad pattern and why.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Globs, String> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let p = p.as_ref();
            if p.is_empty() || p.len() > 1024 {
                return Err(format!("channel pattern {p:?} must be 1 to 1024 characters"));
            }
            let g = GlobBuilder::new(p)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("channel pattern {p:?}: {}", e.kind()))?;
            b.add(g);
        }
        let set = b.build().map_err(|e| format!("channel patterns: {e}"))?;
        Ok(Globs { set, patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect() })
    }

    /// True if a pattern matches the whole channel name.
    pub fn matches(&self, channel: &str) -> bool {
        !self.patterns.is_empty() && self.set.is_match(channel)
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let g = Globs::new(&["conversation:a", "trades:*", "l2Book:{BTC,ETH}", "x:?"]).unwrap();
        for yes in ["conversation:a", "trades:SOL", "trades:", "trades:a/b:c", "l2Book:BTC", "x:1"] {
            assert!(g.matches(yes), "{yes}");
        }
        for no in ["conversation:b", "conversation:ab", "l2Book:SOL", "x:12", "trade:SOL", "xtrades:SOL"] {
            assert!(!g.matches(no), "{no}");
        }
        assert!(!Globs::default().matches("anything"));
        assert!(Globs::new(&["a{b"]).unwrap_err().contains("a{b"));
        assert!(Globs::new(&[""]).is_err());
    }
}
