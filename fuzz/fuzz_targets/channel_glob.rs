//! Channel names and permission patterns from fuzz strings: `rpchub::channel::validate_channel`,
//! `rpchub::auth::Globs::new` and `Globs::matches`.
//!
//! Checks, besides "no panic": a name is valid exactly when it is 1..=255 allowed bytes; a
//! compiled pattern keeps its text; a pattern without glob syntax matches exactly itself; a
//! valid pattern followed by `*` still matches what the pattern does.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rpchub::auth::Globs;
use rpchub::channel::{MAX_CHANNEL_LEN, validate_channel};

const ALLOWED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/=,+-";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // "pattern\nname": the part before the first newline is the pattern, the rest the name.
    let (pattern, name) = text.split_once('\n').unwrap_or((text, text));

    let valid = (1..=MAX_CHANNEL_LEN).contains(&name.len()) && name.bytes().all(|b| ALLOWED.contains(&b));
    assert_eq!(validate_channel(name).is_ok(), valid, "{name:?}");

    let Ok(globs) = Globs::new(&[pattern]) else { return };
    assert_eq!(globs.patterns(), [pattern]);
    let matched = globs.matches(name);
    if !pattern.contains(['*', '?', '[', ']', '{', '}', '\\']) {
        assert_eq!(matched, pattern == name, "literal {pattern:?} on {name:?}");
    }
    if pattern.len() < 1024 {
        let starred = Globs::new(&[format!("{pattern}*")]).expect("a valid pattern with * appended is valid");
        assert!(!matched || starred.matches(name), "{pattern:?}* lost {name:?}");
    }
});
