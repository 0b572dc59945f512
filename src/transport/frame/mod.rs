//! RFC 6455 frames as a server sees them: parsing client frames (masked, possibly fragmented,
//! interleaved with control frames) and encoding server frames (unmasked headers).
//!
//! Why our own code and not a crate: the fan-out path needs to queue one pre-encoded frame for
//! thousands of connections with no work per connection but splicing in an id (an owned message
//! per connection is what it avoids), and an idle connection must hold no read buffer at all
//! (see BENCHMARKS.md). tungstenite and soketto own a buffered stream per connection and hand
//! out owned messages; fastwebsockets cannot append frames to a buffer. The
//! parser below is small, has no state besides [`Reassembly`], and is tested against the RFC's
//! rules and by a fuzz target (`fuzz/`).

use std::fmt;

/// Continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Connection close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xA;

/// Close codes this server sends (RFC 6455 section 7.4.1).
pub mod code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the server does not accept (binary messages).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: slow consumer, flood, ping timeout.
    pub const POLICY: u16 = 1008;
    /// A message larger than the server accepts.
    pub const TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL: u16 = 1011;
    /// A condition that should pass: retry later (a shared broker that cannot be reached).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why a connection must be failed: the close code the RFC names and a short reason for the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Close code to send.
    pub code: u16,
    /// Reason text (at most 123 bytes, so it fits a control frame).
    pub reason: &'static str,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

const fn fail(code: u16, reason: &'static str) -> Failure {
    Failure { code, reason }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Last frame of its message.
    pub fin: bool,
    /// Opcode (one of the `OP_*` constants).
    pub opcode: u8,
    /// Masking key (client frames are always masked).
    pub mask: [u8; 4],
    /// Payload length.
    pub len: usize,
    /// Bytes before the payload.
    pub header_len: usize,
    /// RSV1: the first frame of a compressed message (permessage-deflate).
    pub compressed: bool,
}

/// Parses the client frame header at the start of `buf`. `Ok(None)`: more bytes are needed.
/// `max_payload` bounds data frames; a longer one fails with 1009 before its payload is read.
/// `deflate`: the connection negotiated permessage-deflate, so RSV1 may mark the first frame of
/// a data message (never a control or continuation frame, RFC 7692 6.1).
pub fn parse_header(buf: &[u8], max_payload: usize, deflate: bool) -> Result<Option<Header>, Failure> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !deflate) {
        return Err(fail(code::PROTOCOL_ERROR, "reserved bits set without a negotiated extension"));
    }
    let opcode = b0 & 0x0f;
    if compressed && !matches!(opcode, OP_TEXT | OP_BINARY) {
        return Err(fail(code::PROTOCOL_ERROR, "RSV1 is for the first frame of a data message"));
    }
    let fin = b0 & 0x80 != 0;
    if !matches!(opcode, OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(fail(code::PROTOCOL_ERROR, "unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(fail(code::PROTOCOL_ERROR, "client frames must be masked"));
    }
    let len7 = (b1 & 0x7f) as usize;
    let control = opcode >= OP_CLOSE;
    if control && (!fin || len7 > 125) {
        return Err(fail(code::PROTOCOL_ERROR, "control frames must be final and at most 125 bytes"));
    }
    let (len, ext) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes checked above; qed"));
            if n >> 63 != 0 {
                return Err(fail(code::PROTOCOL_ERROR, "payload length has its top bit set"));
            }
            (n, 8)
        }
        n => (n as u64, 0),
    };
    // Control frames (at most 125 bytes, checked above) may come between a message's fragments
    // and do not count toward it.
    if !control && len > max_payload as u64 {
        return Err(fail(code::TOO_BIG, "message too big"));
    }
    let header_len = 2 + ext + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let mask = buf[2 + ext..header_len].try_into().expect("4 bytes checked above; qed");
    Ok(Some(Header { fin, opcode, mask, len: len as usize, header_len, compressed }))
}

/// Removes the client's masking from a payload, in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A server frame header (FIN set, unmasked) for a payload of `len` bytes: the bytes and how
/// many of them are used.
pub fn header_bytes(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// Appends a server frame header (FIN set, unmasked) for a payload of `len` bytes.
pub fn put_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    let (h, n) = header_bytes(opcode, len);
    out.extend_from_slice(&h[..n]);
}

/// Bytes a server frame header takes for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Appends a whole server frame.
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    put_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and a reason (cut to fit a control frame).
pub fn put_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    put_header(out, OP_CLOSE, 2 + cut);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..cut]);
}

/// Checks a close frame's payload from the client. Returns the code to echo.
pub fn check_close_payload(payload: &[u8]) -> Result<u16, Failure> {
    match payload.len() {
        0 => Ok(code::NORMAL),
        1 => Err(fail(code::PROTOCOL_ERROR, "close payload of one byte")),
        _ => {
            let c = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(fail(code::PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(fail(code::INVALID_PAYLOAD, "close reason is not UTF-8"));
            }
            Ok(c)
        }
    }
}

/// What one complete client frame means to the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message (UTF-8 checked).
    Text(&'a str),
    /// A ping with its payload (to echo in a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// The client's close frame; the code to echo.
    Close(u16),
    /// A fragment of a message that continues; nothing to do yet.
    Partial,
}

/// The message being reassembled from fragments, if any. Kept empty (no allocation) between
/// messages.
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: Vec<u8>,
    active: bool,
    /// The message in progress came as binary.
    binary: bool,
    /// The message in progress is compressed (inflated when it is whole).
    compressed: bool,
    /// A compressed message, inflated (released with `finish`).
    inflated: Vec<u8>,
}

impl Reassembly {
    /// Bytes already collected of the message in progress; 0 if none.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Interprets one complete frame (payload already unmasked). `max_message` bounds the whole
    /// reassembled message, compressed as it came and inflated.
    pub fn frame<'a>(
        &'a mut self,
        h: &Header,
        payload: &'a [u8],
        max_message: usize,
    ) -> Result<Event<'a>, Failure> {
        match h.opcode {
            OP_TEXT | OP_BINARY => {
                if self.active {
                    return Err(fail(code::PROTOCOL_ERROR, "new message before the previous one ended"));
                }
                // A binary message that is UTF-8 is taken as text (web3.py and `websocat -b` send
                // JSON as binary); the answers are text.
                let binary = h.opcode == OP_BINARY;
                if h.fin && h.compressed {
                    super::deflate::inflate(payload, max_message, &mut self.inflated)?;
                    return message(&self.inflated, binary);
                }
                if h.fin {
                    return message(payload, binary);
                }
                self.active = true;
                self.binary = binary;
                self.compressed = h.compressed;
                self.partial.extend_from_slice(payload);
                Ok(Event::Partial)
            }
            OP_CONT => {
                if !self.active {
                    return Err(fail(code::PROTOCOL_ERROR, "continuation frame without a message"));
                }
                if self.partial.len() + payload.len() > max_message {
                    return Err(fail(code::TOO_BIG, "message too big"));
                }
                self.partial.extend_from_slice(payload);
                if !h.fin {
                    return Ok(Event::Partial);
                }
                self.active = false;
                // Hand the message out; the buffer is released by `finish` after use.
                if self.compressed {
                    super::deflate::inflate(&self.partial, max_message, &mut self.inflated)?;
                    return message(&self.inflated, self.binary);
                }
                message(&self.partial, self.binary)
            }
            OP_CLOSE => check_close_payload(payload).map(Event::Close),
            OP_PING => Ok(Event::Ping(payload)),
            OP_PONG => Ok(Event::Pong),
            _ => Err(fail(code::PROTOCOL_ERROR, "unknown opcode")),
        }
    }

    /// Releases a finished reassembled message's buffer (call after handling a `Text` event).
    pub fn finish(&mut self) {
        if !self.active {
            self.partial = Vec::new();
        }
        self.inflated = Vec::new();
    }
}

/// A whole message: text, or binary whose payload is UTF-8 (taken as text). A text message that
/// is not UTF-8 breaks RFC 6455 (1007); a binary one is data the server does not take (1003).
fn message(payload: &[u8], binary: bool) -> Result<Event<'_>, Failure> {
    match std::str::from_utf8(payload) {
        Ok(s) => Ok(Event::Text(s)),
        Err(_) if binary => {
            Err(fail(code::UNSUPPORTED_DATA, "binary messages are accepted only as UTF-8 JSON; send text"))
        }
        Err(_) => Err(fail(code::INVALID_PAYLOAD, "text message is not UTF-8")),
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
