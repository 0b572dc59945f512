//! A frame built once and sent to many connections, each with a few bytes of its own spliced in.
//!
//! A fan-out sends the same event to thousands of connections. What differs between their
//! frames is at most a short run of bytes at one place: a JSON-RPC notification carries the
//! subscriber's subscription id, a Hyperliquid-style frame carries nothing of its own. A
//! [`SharedFrame`] is therefore encoded once as a head (the WebSocket header and everything
//! before the splice point) and a tail (everything after it); each connection's queue holds the
//! frame by reference with its [`Splice`], and its writer writes head, splice and tail.
//!
//! Every connection's splice of one frame has the same length ([`SharedFrame::splice_len`]), so
//! the WebSocket header, which encodes the payload length, is shared too. A frame's producer
//! (a front door's encoding) decides that length; one frame is built per encoding.
//!
//! A frame for connections with permessage-deflate is built compressed the same way, once
//! ([`SharedFrame::build_deflated`]): the splice then sits in a stored block of its own between
//! the compressed head and tail (see [`super::deflate`]).

use super::{deflate, frame};
use crate::metrics::Latency;
use std::cell::RefCell;
use std::time::Instant;

thread_local! {
    /// The uncompressed payload of a frame being built compressed.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Most bytes a [`Splice`] holds: room for a 16-digit id plus a few bytes of framing.
pub const SPLICE_MAX: usize = 22;

/// A connection's own bytes in a shared frame (0 to [`SPLICE_MAX`] of them), held inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Splice {
    len: u8,
    bytes: [u8; SPLICE_MAX],
}

/// The layout the queue relies on: a splice and a frame reference fit in 32 bytes.
const _: () = assert!(std::mem::size_of::<Splice>() == SPLICE_MAX + 1);

impl Splice {
    /// No bytes: frames that are the same for every connection.
    pub const EMPTY: Splice = Splice { len: 0, bytes: [0; SPLICE_MAX] };

    /// A splice of `bytes`; `None` when longer than [`SPLICE_MAX`].
    pub fn new(bytes: &[u8]) -> Option<Splice> {
        if bytes.len() > SPLICE_MAX {
            return None;
        }
        let mut s = Splice { len: bytes.len() as u8, bytes: [0; SPLICE_MAX] };
        s.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(s)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for [`Splice::EMPTY`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Splice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Splice({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Room left in front of a frame for its header (the longest server header has 10 bytes).
const HEADER_ROOM: usize = 10;

/// One text frame shared by many connections, minus each one's [`Splice`].
#[derive(Default)]
pub struct SharedFrame {
    buf: Vec<u8>,
    /// Where the header starts in `buf`.
    start: usize,
    /// Where the splice goes.
    split: usize,
    splice_len: usize,
    /// When the frame's publication was fanned out, and where its writes are timed.
    stamp: Option<(Instant, Latency)>,
}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFrame")
            .field("len", &self.frame_len())
            .field("splice_len", &self.splice_len)
            .finish()
    }
}

/// Writes a [`SharedFrame`]'s payload: bytes, and once, the place of the splice.
#[derive(Debug)]
pub struct FrameWriter<'a> {
    buf: &'a mut Vec<u8>,
    split: Option<usize>,
}

impl FrameWriter<'_> {
    /// The payload written so far, to append to.
    pub fn out(&mut self) -> &mut Vec<u8> {
        self.buf
    }

    /// Appends bytes.
    pub fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Marks where each connection's splice goes (at most once; without it, at the end).
    pub fn splice_here(&mut self) {
        debug_assert!(self.split.is_none(), "one splice per frame");
        self.split = Some(self.buf.len());
    }
}

impl SharedFrame {
    /// An empty frame with room for `payload_len` bytes of payload.
    pub fn with_capacity(payload_len: usize) -> SharedFrame {
        SharedFrame {
            buf: Vec::with_capacity(HEADER_ROOM + payload_len),
            start: 0,
            split: 0,
            splice_len: 0,
            stamp: None,
        }
    }

    /// Times every write of this frame from `at` into `latency` ([`SharedFrame::written`]).
    pub fn stamp(&mut self, at: Instant, latency: Latency) {
        self.stamp = Some((at, latency));
    }

    /// A connection's write of this frame returned at `now`: observed when the frame is stamped.
    pub fn written(&self, now: impl FnOnce() -> Instant) {
        if let Some((at, latency)) = &self.stamp {
            latency.observe(now().saturating_duration_since(*at));
        }
    }

    /// Encodes a text frame whose payload `write` produces, with every connection's splice
    /// `splice_len` bytes long (reusing the buffer).
    pub fn build(&mut self, splice_len: usize, write: impl FnOnce(&mut FrameWriter<'_>)) -> &SharedFrame {
        assert!(splice_len <= SPLICE_MAX, "a splice holds at most {SPLICE_MAX} bytes");
        self.buf.clear();
        self.buf.resize(HEADER_ROOM, 0);
        let mut w = FrameWriter { buf: &mut self.buf, split: None };
        write(&mut w);
        self.split = w.split.unwrap_or(self.buf.len());
        self.splice_len = splice_len;
        let payload = self.buf.len() - HEADER_ROOM + splice_len;
        let (header, len) = frame::header_bytes(frame::OP_TEXT, payload);
        self.start = HEADER_ROOM - len;
        self.buf[self.start..HEADER_ROOM].copy_from_slice(&header[..len]);
        self
    }

    /// Like [`SharedFrame::build`], for connections with permessage-deflate: the payload is
    /// compressed (RSV1 set) unless it is shorter than `min_bytes` (RFC 7692 lets any message go
    /// either way), which goes as it is.
    pub fn build_deflated(
        &mut self,
        splice_len: usize,
        min_bytes: usize,
        write: impl FnOnce(&mut FrameWriter<'_>),
    ) -> &SharedFrame {
        assert!(splice_len <= SPLICE_MAX, "a splice holds at most {SPLICE_MAX} bytes");
        PLAIN.with_borrow_mut(|plain| {
            plain.clear();
            let mut w = FrameWriter { buf: plain, split: None };
            write(&mut w);
            let split = w.split.unwrap_or(plain.len());
            let (prefix, suffix) = plain.split_at(split);
            self.buf.clear();
            self.buf.resize(HEADER_ROOM, 0);
            let compressed = plain.len() + splice_len >= min_bytes;
            self.split = if compressed {
                deflate::compress_split(prefix, splice_len, suffix, &mut self.buf)
            } else {
                self.buf.extend_from_slice(prefix);
                let at = self.buf.len();
                self.buf.extend_from_slice(suffix);
                at
            };
            self.splice_len = splice_len;
            let payload = self.buf.len() - HEADER_ROOM + splice_len;
            let (mut header, len) = frame::header_bytes(frame::OP_TEXT, payload);
            if compressed {
                header[0] |= deflate::RSV1;
            }
            self.start = HEADER_ROOM - len;
            self.buf[self.start..HEADER_ROOM].copy_from_slice(&header[..len]);
            // A big payload's scratch is not kept for the thread's life.
            if plain.capacity() > 1 << 20 {
                *plain = Vec::new();
            }
        });
        self
    }

    /// The three parts of the frame for a connection with `splice`, which must be
    /// [`SharedFrame::splice_len`] bytes long.
    pub fn parts<'a>(&'a self, splice: &'a Splice) -> [&'a [u8]; 3] {
        debug_assert_eq!(splice.len(), self.splice_len, "every splice of a frame has its length");
        [&self.buf[self.start..self.split], splice.as_bytes(), &self.buf[self.split..]]
    }

    /// Length of each connection's frame.
    pub fn frame_len(&self) -> usize {
        self.buf.len() - self.start + self.splice_len
    }

    /// Length every splice of this frame has.
    pub fn splice_len(&self) -> usize {
        self.splice_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(bytes: &[u8]) -> (u8, &[u8]) {
        let (len, h) = match bytes[1] {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert_eq!(len, bytes.len() - h, "the header states the payload's length");
        (bytes[0], &bytes[h..])
    }

    #[test]
    fn every_splice_length_makes_a_valid_frame() {
        for body in [10usize, 125, 126, 200, 65_535, 70_000] {
            for n in [0usize, 1, 16, SPLICE_MAX] {
                let splice = Splice::new(&b"abcdefghijklmnopqrstuvwxyz"[..n]).unwrap();
                let mut f = SharedFrame::default();
                f.build(n, |w| {
                    w.put(b"<");
                    w.splice_here();
                    w.put(&vec![b'x'; body]);
                });
                let whole = f.parts(&splice).concat();
                assert_eq!(whole.len(), f.frame_len());
                let (op, p) = payload(&whole);
                assert_eq!(op, 0x81);
                assert_eq!(&p[..1 + n], [b"<".as_slice(), splice.as_bytes()].concat());
                assert_eq!(p.len(), 1 + n + body);
            }
        }
    }

    #[test]
    fn a_deflated_frame_inflates_to_the_plain_one_for_each_splice() {
        use std::io::Read;
        let body = br#"{"coin":"SOL","px":"142.25","sz":"10.5","side":"B"}"#.repeat(20);
        for n in [0usize, 16] {
            let (mut plain, mut z) = (SharedFrame::default(), SharedFrame::default());
            let write = |w: &mut FrameWriter<'_>| {
                w.put(b"{\"subscription\":\"");
                w.splice_here();
                w.put(&body);
            };
            plain.build(n, write);
            z.build_deflated(n, 256, write);
            assert!(z.frame_len() * 4 < plain.frame_len(), "{} vs {}", z.frame_len(), plain.frame_len());
            let splice = Splice::new(&b"0123456789abcdef"[..n]).unwrap();
            let whole = z.parts(&splice).concat();
            let (op, p) = payload(&whole);
            assert_eq!(op, 0x80 | deflate::RSV1 | frame::OP_TEXT);
            let mut all = p.to_vec();
            all.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut out = Vec::new();
            let _ = flate2::read::DeflateDecoder::new(&all[..]).read_to_end(&mut out);
            assert_eq!(out, payload(&plain.parts(&splice).concat()).1);
        }
        // A short one goes uncompressed.
        let mut z = SharedFrame::default();
        z.build_deflated(0, 256, |w| w.put(b"{}"));
        assert_eq!(z.parts(&Splice::EMPTY).concat(), [0x81, 2, b'{', b'}']);
    }

    #[test]
    fn without_a_mark_the_splice_is_at_the_end() {
        let mut f = SharedFrame::default();
        f.build(0, |w| w.put(b"{}"));
        let whole = f.parts(&Splice::EMPTY).concat();
        let (_, p) = payload(&whole);
        assert_eq!(p, b"{}");
        assert!(Splice::new(&[0; SPLICE_MAX + 1]).is_none());
    }
}
