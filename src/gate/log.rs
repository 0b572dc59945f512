//! What the gate writes to the log about refusals, bounded: header values are cut to
//! [`MAX_LOGGED_VALUE`] bytes (with their full length said), and each kind of refusal is logged
//! at most [`LINES_PER_SECOND`] times a second, the next line saying how many were left out. A
//! client sending hostile headers as fast as it can thus costs the log a few lines a second, not
//! its bandwidth.

use crate::bucket::TokenBucket;
use parking_lot::Mutex;
use std::fmt;
use std::time::Instant;

/// Longest header value written to the log, in bytes.
pub(super) const MAX_LOGGED_VALUE: usize = 256;
/// Lines a second a kind of refusal may write (and the burst it may write at once).
pub(super) const LINES_PER_SECOND: f64 = 10.0;

/// A header value as the log shows it: at most [`MAX_LOGGED_VALUE`] bytes of it, then
/// `... (N bytes)` when it was longer. Not-text bytes are shown escaped.
#[derive(Debug)]
pub(super) struct Logged<'a>(pub(super) &'a [u8]);

impl fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = &self.0[..self.0.len().min(MAX_LOGGED_VALUE)];
        write!(f, "{}", cut.escape_ascii())?;
        if self.0.len() > MAX_LOGGED_VALUE {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// One kind of refusal's share of the log.
#[derive(Debug)]
pub(crate) struct Throttle {
    state: Mutex<(TokenBucket, u64)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            state: Mutex::new((TokenBucket::new(LINES_PER_SECOND, LINES_PER_SECOND, Instant::now()), 0)),
        }
    }
}

impl Throttle {
    /// `Some(n)` when a line may be written now, `n` being how many were left out since the last
    /// one; `None` when this one is to be left out (and counted).
    pub(crate) fn admit(&self) -> Option<u64> {
        let mut st = self.state.lock();
        if st.0.take(Instant::now()).is_ok() {
            Some(std::mem::take(&mut st.1))
        } else {
            st.1 += 1;
            None
        }
    }
}

/// `" [N similar lines left out]"` after a line that follows suppressed ones, else nothing.
#[derive(Debug)]
pub(crate) struct Suppressed(pub(crate) u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 > 0 { write!(f, " [{} similar lines left out]", self.0) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_and_escaped() {
        assert_eq!(Logged(b"https://a.example").to_string(), "https://a.example");
        let long = vec![b'x'; 100_000];
        let shown = Logged(&long).to_string();
        assert!(shown.len() < MAX_LOGGED_VALUE + 30, "{}", shown.len());
        assert!(shown.ends_with("... (100000 bytes)"), "{shown}");
        assert_eq!(
            Logged(b"a\nb\xff").to_string(),
            "a\\nb\\xff",
            "no line breaks or raw bytes reach the log"
        );
    }

    #[test]
    fn a_burst_writes_a_few_lines_and_counts_the_rest() {
        let t = Throttle::default();
        let admitted = (0..1000).filter_map(|_| t.admit()).count();
        assert!(admitted <= LINES_PER_SECOND as usize + 1, "{admitted}");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(t.admit().is_some_and(|left_out| left_out >= 1000 - admitted as u64 - 1));
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(3).to_string(), " [3 similar lines left out]");
    }
}
