//! Channel names: `namespace:rest` or a bare name, 1..=255 bytes of `[A-Za-z0-9_.:@/=,+-]`,
//! plus one `#` before the user of a user channel (`notifications:#alice`: USER is the rest of
//! the name, at least one byte, without `:`); whether the namespace has user channels is the
//! configuration's to say ([`crate::config::Config::check_channel`]). Every byte allowed needs
//! no escaping in JSON, so names are spliced into frames as they are.

/// Longest channel name in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// True for the bytes a channel name may contain.
pub fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'=' | b',' | b'+' | b'-')
}

/// Checks a channel name; the error says what is wrong with it.
pub fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("channel name is empty".into());
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(format!("channel name is {} bytes; the limit is {MAX_CHANNEL_LEN}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| *c != '#' && (!c.is_ascii() || !is_channel_byte(*c as u8))) {
        return Err(format!("channel name contains {c:?}; allowed are letters, digits and _.:@/=,+-"));
    }
    if let Some((_, user)) = name.split_once('#')
        && (user.is_empty() || user.contains([':', '#']))
    {
        return Err(format!(
            "channel name {name:?}: '#' comes once, before the user of a user channel \
             (notifications:#alice), and the user is at least one byte without ':'"
        ));
    }
    Ok(())
}

/// The user a user channel belongs to (`alice` for `notifications:#alice`), if the name is
/// one's.
pub fn user_of(name: &str) -> Option<&str> {
    name.split_once('#').map(|(_, user)| user).filter(|u| !u.is_empty())
}

/// The namespace of a channel: the part before the first `:`, or `""` for a bare name.
pub fn namespace(name: &str) -> &str {
    name.split_once(':').map_or("", |(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["trades:SOL", "l2Book:BTC", "conversation:conv-123", "a", "x:y:z", "a.b@c/d=e,f+g_h"] {
            assert_eq!(validate_channel(ok), Ok(()), "{ok}");
        }
        assert!(validate_channel(&"a".repeat(255)).is_ok());
        assert_eq!(validate_channel("notifications:#alice"), Ok(()));
        assert_eq!(user_of("notifications:#alice"), Some("alice"));
        assert_eq!(user_of("conversation:c1"), None);
        for bad in [
            "",
            "has space",
            "quote\"",
            "back\\slash",
            "ünï",
            "new\nline",
            "star*",
            "n:#",
            "n:#a#b",
            "n:#a:b",
        ] {
            assert!(validate_channel(bad).is_err(), "{bad:?}");
        }
        assert!(validate_channel(&"a".repeat(256)).unwrap_err().contains("255"));
        assert_eq!(namespace("trades:SOL"), "trades");
        assert_eq!(namespace("bare"), "");
    }
}

/// Properties of [`validate_channel`] over generated names.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// The allowed bytes, written out independently of [`is_channel_byte`].
    const ALLOWED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/=,+-";

    /// Mostly allowed characters, sometimes any character, around the length limit.
    fn mostly_valid() -> impl Strategy<Value = String> {
        let ch = prop_oneof![
            20 => prop::sample::select(ALLOWED).prop_map(char::from),
            1 => any::<char>(),
        ]
        .boxed();
        let names = |len| prop::collection::vec(ch.clone(), len).prop_map(|cs| cs.into_iter().collect());
        prop_oneof![names(0..8), names(250..260), names(0..300)]
    }

    proptest! {
        #[test]
        fn accepts_every_name_of_allowed_bytes(name in "[A-Za-z0-9_.:@/=,+-]{1,255}") {
            prop_assert_eq!(validate_channel(&name), Ok(()));
        }

        #[test]
        fn accepts_exactly_1_to_255_allowed_bytes(name in prop_oneof![mostly_valid(), ".{0,300}"]) {
            // One '#' may come before a user channel's user: at least one byte, no ':'.
            let (head, user) = match name.split_once('#') {
                Some((h, u)) => (h, Some(u)),
                None => (name.as_str(), None),
            };
            let user_ok = user.is_none_or(|u| {
                !u.is_empty() && !u.contains(':') && u.bytes().all(|b| ALLOWED.contains(&b))
            });
            let valid = (1..=MAX_CHANNEL_LEN).contains(&name.len())
                && head.bytes().all(|b| ALLOWED.contains(&b))
                && user_ok;
            match validate_channel(&name) {
                Ok(()) => prop_assert!(valid, "accepted {name:?}"),
                Err(e) => prop_assert!(!valid && !e.is_empty(), "refused {name:?}: {e}"),
            }
        }
    }
}
