//! permessage-deflate (RFC 7692): the offer a client makes in its handshake, messages the server
//! compresses, and client messages it inflates within the message size limit.
//!
//! Both directions run without context takeover (`server_no_context_takeover` and
//! `client_no_context_takeover` in every accepted offer), so a message never depends on an
//! earlier one: nothing is kept per connection between messages (an idle connection holds no
//! compressor), and one publication's compressed bytes serve every subscriber.
//!
//! Why the splice survives compression: a deflate stream is a sequence of blocks that may each
//! end on a byte boundary (a sync flush). A shared frame whose subscribers differ by a spliced
//! id is compressed as three pieces: the bytes before the splice (their own blocks, flushed),
//! a stored block holding the splice as it is (its 5-byte header fixed by the splice's length,
//! the same for every subscriber), and the bytes after it (blocks of a fresh compressor, which
//! never refer back past their own start). Each subscriber's message is then the shared head,
//! its own splice bytes and the shared tail, as for an uncompressed frame.
//!
//! The deflate itself is flate2's (zlib-rs); only the framing of RFC 7692 is here.

use super::frame::{self, Failure};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hyper::header::HeaderMap;
use std::cell::RefCell;

/// The response's `Sec-WebSocket-Extensions` for an accepted offer.
pub const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The compression level (zlib's 1-9): 6, zlib's default; a publication is compressed once for
/// all its subscribers, so the ratio is worth more than the time.
const LEVEL: u32 = 6;

/// The bytes a sync flush ends with, which RFC 7692 7.2.1 takes off the message and the
/// receiver puts back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether the client's `Sec-WebSocket-Extensions` has a permessage-deflate offer this server
/// can honour (the first one that can be, RFC 7692 5): without `server_max_window_bits` below
/// 15 (the window the compressor uses), with only the parameters the RFC defines, each once
/// and with a valid value. Offers it cannot honour are declined, never half-accepted.
pub fn accepts(headers: &HeaderMap) -> bool {
    headers
        .get_all("sec-websocket-extensions")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(acceptable)
}

fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return false;
        }
        seen.push(name);
        let bits = |v: &str| v.len() <= 2 && v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b));
        let ok = match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            // The client may use any window: ours inflates with the largest.
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(v)) => bits(v),
            // The server's window is 15; a smaller one asked for cannot be honoured.
            ("server_max_window_bits", Some(v)) => bits(v) && v == "15",
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

thread_local! {
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    /// The inflater and the 16 KiB it inflates into at a time.
    static INFLATER: RefCell<(Decompress, Box<[u8]>)> = RefCell::new((Decompress::new(false), vec![0; 16 << 10].into()));
}

/// Appends `inputs`, one after the other as one input deflated by a fresh compressor and
/// sync-flushed, to `out`: whole blocks ending on a byte boundary with [`TAIL`].
fn deflate_flushed(inputs: &[&[u8]], out: &mut Vec<u8>) {
    COMPRESSOR.with_borrow_mut(|c| {
        c.reset();
        let last = inputs.len().saturating_sub(1);
        for (k, input) in inputs.iter().enumerate() {
            let flush = if k == last { FlushCompress::Sync } else { FlushCompress::None };
            let mut read = 0;
            loop {
                // A sync flush adds at most a few bytes beyond what deflate's worst case holds.
                out.reserve(input.len() - read + 64);
                let before = c.total_in();
                c.compress_vec(&input[read..], out, flush).expect("deflate takes any input; qed");
                read += (c.total_in() - before) as usize;
                // Done once everything is read and, for the flush, it had room to end.
                if read == input.len() && (flush == FlushCompress::None || out.len() < out.capacity()) {
                    break;
                }
            }
        }
    });
    debug_assert!(out.ends_with(&TAIL), "a sync flush ends with an empty stored block");
}

/// Appends the compressed message of `prefix`, a splice of `splice_len` bytes and `suffix` to
/// `out`; returns where in `out` the splice goes. With no splice the message is one stream.
pub fn compress_split(prefix: &[u8], splice_len: usize, suffix: &[u8], out: &mut Vec<u8>) -> usize {
    if splice_len == 0 {
        compress_message(&[prefix, suffix], out);
        return out.len();
    }
    if !prefix.is_empty() {
        deflate_flushed(&[prefix], out);
    }
    // A stored block, not the last: BFINAL 0, BTYPE 00, padded to the byte, then LEN, NLEN.
    let len = splice_len as u16;
    out.push(0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    let at = out.len();
    // Even an empty tail is a flushed block, so that the receiver's appended TAIL completes it.
    deflate_flushed(&[suffix], out);
    out.truncate(out.len() - TAIL.len());
    at
}

/// Appends the compressed payload of the message made of `parts` (one after the other) to
/// `out`, as a frame carries it (RFC 7692 7.2.1: without the flush's final 4 bytes).
pub fn compress_message(parts: &[&[u8]], out: &mut Vec<u8>) {
    deflate_flushed(if parts.is_empty() { &[&[]] } else { parts }, out);
    out.truncate(out.len() - TAIL.len());
}

/// The largest frame header (RFC 6455 5.2, server frames: no mask).
const MAX_HEADER: usize = 10;

/// Appends to `out` one frame of `opcode` and RSV1 whose payload is the message made of
/// `parts`, compressed; returns where in `out` the frame starts. The payload is compressed in
/// place after room for the largest header, whose last bytes the real header then fills: up to
/// 8 bytes before the frame are left unused.
pub fn append_compressed_frame(out: &mut Vec<u8>, opcode: u8, parts: &[&[u8]]) -> usize {
    let room = out.len();
    out.resize(room + MAX_HEADER, 0);
    compress_message(parts, out);
    let (mut h, n) = frame::header_bytes(opcode, out.len() - room - MAX_HEADER);
    h[0] |= RSV1;
    let at = room + MAX_HEADER - n;
    out[at..room + MAX_HEADER].copy_from_slice(&h[..n]);
    at
}

/// One whole message's payload compressed, as a frame with RSV1 set: appended to `out`.
pub fn put_compressed_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let room = out.len();
    let at = append_compressed_frame(out, opcode, &[payload]);
    out.drain(room..at);
}

/// The bit of a frame's first byte that marks a compressed message (RFC 7692 6).
pub const RSV1: u8 = 0x40;

/// Inflates a client's compressed message `data` into `out` (cleared first), failing with 1009
/// as soon as it would exceed `max` bytes (having inflated at most 16 KiB past the limit, never
/// the rest) and with 1007 when it is not a deflate stream.
pub fn inflate(data: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), Failure> {
    const BAD: Failure = Failure { code: frame::code::INVALID_PAYLOAD, reason: "invalid compressed message" };
    const BIG: Failure = Failure { code: frame::code::TOO_BIG, reason: "message too big" };
    out.clear();
    INFLATER.with_borrow_mut(|(d, chunk)| {
        d.reset(false);
        let mut ended = false;
        for input in [data, &TAIL[..]] {
            if ended {
                // The client ended the stream with a final block: nothing of its own may follow.
                return if input.len() == TAIL.len() && input == TAIL { Ok(()) } else { Err(BAD) };
            }
            let mut read = 0;
            loop {
                let (in_before, out_before) = (d.total_in(), d.total_out());
                let status = d.decompress(&input[read..], chunk, FlushDecompress::Sync).map_err(|_| BAD)?;
                let consumed = (d.total_in() - in_before) as usize;
                let made = (d.total_out() - out_before) as usize;
                read += consumed;
                if out.len() + made > max {
                    return Err(BIG);
                }
                out.extend_from_slice(&chunk[..made]);
                if status == Status::StreamEnd {
                    if read < input.len() {
                        return Err(BAD);
                    }
                    ended = true;
                    break;
                }
                if read == input.len() && made < chunk.len() {
                    break;
                }
                if consumed == 0 && made == 0 {
                    return Err(BAD);
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// What a receiver does (RFC 7692 7.2.2): append the tail, inflate the whole with a fresh
    /// decoder (here flate2's, with miniz-style streaming through `read`).
    fn receive(payload: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut all = payload.to_vec();
        all.extend_from_slice(&TAIL);
        let mut out = Vec::new();
        let mut r = flate2::read::DeflateDecoder::new(&all[..]);
        // The stream has no final block: reading stops with the input, which is all there is.
        let _ = r.read_to_end(&mut out);
        out
    }

    fn offer(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append("sec-websocket-extensions", HeaderValue::from_static(v));
        h
    }

    #[test]
    fn offers_are_accepted_when_they_can_be_honoured() {
        for ok in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=15; client_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate",
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            "Permessage-Deflate; Client_Max_Window_Bits=\"12\"",
        ] {
            assert!(accepts(&offer(ok)), "{ok}");
        }
        for no in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; unknown_param",
        ] {
            assert!(!accepts(&offer(no)), "{no}");
        }
        assert!(!accepts(&HeaderMap::new()));
    }

    #[test]
    fn a_split_message_inflates_to_prefix_splice_suffix_for_every_splice() {
        let body = br#"{"channel":"l2Book:BTC","data":{"levels":[[{"px":"67000.5","sz":"1.25","n":3}]]}}"#
            .repeat(40);
        for (prefix, splice_len, suffix) in [
            (&br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":""#[..], 16, &body[..]),
            (&b""[..], 4, &body[..]),
            (&b"head"[..], 3, &b""[..]),
            (&body[..], 0, &b""[..]),
            (&b""[..], 0, &b""[..]),
        ] {
            let mut out = Vec::new();
            let at = compress_split(prefix, splice_len, suffix, &mut out);
            for splice in [vec![b'a'; splice_len], vec![b'9'; splice_len]] {
                let message = [&out[..at], &splice[..], &out[at..]].concat();
                assert_eq!(receive(&message), [prefix, &splice[..], suffix].concat());
                let mut ours = Vec::new();
                inflate(&message, 1 << 20, &mut ours).unwrap();
                assert_eq!(ours, [prefix, &splice[..], suffix].concat());
            }
            if !body.is_empty() && suffix.len() == body.len() {
                assert!(
                    out.len() * 4 < body.len(),
                    "compressible JSON compresses: {} of {}",
                    out.len(),
                    body.len()
                );
            }
        }
    }

    #[test]
    fn inflating_stops_at_the_limit_and_refuses_what_is_not_deflate() {
        let mut z = Vec::new();
        compress_split(&vec![b'x'; 1 << 20], 0, &[], &mut z);
        assert!(z.len() < 2048, "a megabyte of one byte compresses to little: {}", z.len());
        let mut out = Vec::new();
        assert_eq!(inflate(&z, 1000, &mut out).unwrap_err().code, 1009);
        assert!(out.len() <= 1000, "inflated no further than the limit: {}", out.len());
        inflate(&z, 1 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 1 << 20);
        assert_eq!(inflate(&[0xff, 0xff, 0xff, 0x00], 1000, &mut out).unwrap_err().code, 1007);
        // A final block followed by more bytes is not a message either.
        let mut fin = Vec::new();
        let mut e = flate2::write::DeflateEncoder::new(&mut fin, Compression::default());
        std::io::Write::write_all(&mut e, b"hello").unwrap();
        e.finish().unwrap();
        inflate(&fin, 100, &mut out).unwrap();
        assert_eq!(out, b"hello");
        fin.extend_from_slice(b"more");
        assert_eq!(inflate(&fin, 100, &mut out).unwrap_err().code, 1007);
    }

    #[test]
    fn a_compressed_frame_has_rsv1_and_its_length() {
        let mut f = Vec::new();
        put_compressed_frame(&mut f, frame::OP_TEXT, &b"{\"a\":1}".repeat(100));
        assert_eq!(f[0], 0x80 | RSV1 | frame::OP_TEXT);
        let len = (f[1] & 0x7f) as usize;
        assert_eq!(len, f.len() - 2);
        assert_eq!(receive(&f[2..]), b"{\"a\":1}".repeat(100));
    }

    #[test]
    fn a_message_in_parts_compresses_as_the_whole_and_its_frame_is_appended_at_its_header() {
        let whole =
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"".iter().chain(&[b'z'; 900]).chain(b"\"}").copied();
        let whole: Vec<u8> = whole.collect();
        let parts: [&[u8]; 4] = [&whole[..10], &[], &whole[10..500], &whole[500..]];
        let mut z = Vec::new();
        compress_message(&parts, &mut z);
        assert_eq!(receive(&z), whole);
        let mut one = Vec::new();
        compress_message(&[&whole], &mut one);
        assert_eq!(z, one, "the same stream, parts or not");
        // The frame: its header right before the payload, wherever that starts in the buffer.
        let mut f = vec![1, 2, 3];
        let at = append_compressed_frame(&mut f, frame::OP_TEXT, &parts);
        assert_eq!(&f[..3], [1, 2, 3], "what was there stays");
        let frame = &f[at..];
        assert_eq!(frame[0], 0x80 | RSV1 | frame::OP_TEXT);
        let (len, header) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            n => (n as usize, 2),
        };
        assert_eq!(len, frame.len() - header);
        assert_eq!(receive(&frame[header..]), whole);
        let big: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        f.clear();
        let at = append_compressed_frame(&mut f, frame::OP_TEXT, &[&big]);
        assert_eq!(f[at + 1], 126, "a 16-bit length");
        assert_eq!(u16::from_be_bytes([f[at + 2], f[at + 3]]) as usize, f.len() - at - 4);
        assert_eq!(receive(&f[at + 4..]), big);
        compress_message(&[], &mut Vec::new());
        // Appended after what was there, with no room left between.
        let mut two = b"xy".to_vec();
        put_compressed_frame(&mut two, frame::OP_TEXT, &whole);
        assert_eq!((&two[..2], two[2]), (&b"xy"[..], 0x80 | RSV1 | frame::OP_TEXT));
        let header = if two[3] == 126 { 4 } else { 2 };
        assert_eq!(receive(&two[2 + header..]), whole);
    }
}
