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

/// Properties of [`Globs`] over generated patterns and names.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Patterns made mostly of glob syntax, to reach the parser's error paths.
    fn globby() -> impl Strategy<Value = String> {
        prop_oneof![".{0,40}", r"([a-c:]|\*|\?|\[|\]|\{|\}|,|!|\^|-|\\){0,24}"]
    }

    /// A channel-like string without glob metacharacters (`*?[]{}\`).
    fn literal() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:@/=,+-]{1,64}"
    }

    proptest! {
        #[test]
        fn arbitrary_patterns_never_panic(
            patterns in prop::collection::vec(globby(), 0..4),
            names in prop::collection::vec(".{0,40}", 0..4),
        ) {
            match Globs::new(&patterns) {
                Ok(g) => {
                    prop_assert_eq!(g.patterns(), &patterns[..]);
                    for n in &names {
                        let _ = g.matches(n);
                    }
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }

        #[test]
        fn a_literal_pattern_matches_exactly_itself(
            p in literal(),
            other in prop_oneof![literal(), ".{0,64}"],
            extra in "[A-Za-z0-9]",
        ) {
            let g = Globs::new(&[&p]).unwrap();
            prop_assert!(g.matches(&p));
            prop_assert_eq!(g.matches(&other), other == p);
            let (longer, earlier) = (format!("{p}{extra}"), format!("{extra}{p}"));
            prop_assert!(!g.matches(&longer));
            prop_assert!(!g.matches(&earlier));
            prop_assert!(!g.matches(&p[..p.len() - 1]));
        }

        #[test]
        fn a_prefix_star_matches_everything_it_starts(
            prefix in "[A-Za-z0-9_.:@/=,+-]{0,64}",
            rest in ".{0,64}|\\PC{0,8}\n.{0,8}",
        ) {
            let g = Globs::new(&[format!("{prefix}*")]).unwrap();
            let name = format!("{prefix}{rest}");
            prop_assert!(g.matches(&name), "{prefix:?}* on {name:?}");
            if let Some(c) = prefix.chars().last() {
                let short = &prefix[..prefix.len() - c.len_utf8()];
                prop_assert!(!g.matches(short));
            }
        }
    }
}
