//! A lean client WebSocket for the connections that mostly receive (fan-out subscribers, idle
//! and storm clients).
//!
//! Why not tokio-tungstenite here: on this 2-core class of machine the bench shares the CPU with
//! the server it measures, and per-message costs of a general client (a waker per message, an
//! owned buffer per message, a UTF-8 check) take CPU the server then lacks. Here one read takes
//! whatever the socket holds and messages are handed out as slices of one buffer. Still checked
//! on every frame: the framing, that the server did not mask, and control frames (a ping is
//! answered, a close ends the connection). The upgrade is a hand-written HTTP/1.1 request whose
//! `Sec-WebSocket-Accept` answer is verified. With `compress`, the upgrade offers
//! permessage-deflate (RFC 7692) and compressed messages are inflated (flate2) before they are
//! handed out, each on its own: the server must answer with `server_no_context_takeover`.

use super::client::Target;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

// Opcodes (RFC 6455 section 5.2): the same numbers as the server's `transport::frame`.
/// Continuation frame.
const OP_CONT: u8 = 0x0;
/// Text frame.
const OP_TEXT: u8 = 0x1;
/// Binary frame.
const OP_BINARY: u8 = 0x2;
/// Connection close.
const OP_CLOSE: u8 = 0x8;
/// Ping.
const OP_PING: u8 = 0x9;
/// Pong.
const OP_PONG: u8 = 0xA;

/// Close codes this client sends (RFC 6455 section 7.4.1).
mod code {
    /// Normal closure.
    pub(super) const NORMAL: u16 = 1000;
}

/// Largest message accepted from the server.
const MAX_MESSAGE: usize = 16 << 20;
/// Largest HTTP answer head to an upgrade.
const MAX_HEAD: usize = 16 << 10;

/// What [`Socket::fill`] answers when the server ended the connection without a close frame.
pub(crate) const EOF: &str = "connection closed";

/// One client connection after the upgrade.
pub(crate) struct Socket {
    sock: TcpStream,
    /// Received bytes not yet handed out; always starts at a frame boundary.
    buf: Vec<u8>,
    read_size: usize,
    /// A fragmented message being put together.
    partial: Option<Vec<u8>>,
    /// Pongs to send once the current batch is handled.
    replies: Vec<u8>,
    /// State of the xorshift that makes masking keys.
    mask: u32,
    /// With permessage-deflate: the inflater, and the message it inflated last.
    inflater: Option<Box<flate2::Decompress>>,
    inflated: Vec<u8>,
    /// Bytes read since [`Socket::take_wire`] last asked.
    wire: u64,
}

/// A subscription once both its id and its snapshot have arrived.
pub(crate) struct Subscribed {
    /// The subscription id.
    pub(crate) id: Value,
    /// The channel offset the snapshot reached: live publications continue after it.
    pub(crate) offset: u64,
    /// The snapshot's epoch, `recovered` flag and the offsets of the publications it holds.
    pub(crate) epoch: String,
    pub(crate) recovered: bool,
    pub(crate) offsets: Vec<u64>,
}

impl Socket {
    /// Connects from `src` and upgrades with `GET path` (and the bearer token, if any).
    pub(crate) async fn open(
        target: &Target,
        src: Option<Ipv4Addr>,
        read_size: usize,
        compress: bool,
    ) -> Result<Socket, String> {
        let mut sock = target.tcp(src).await?;
        let key = generate_key();
        let (host, path) = target.host_and_path();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(t) = target.token() {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if compress {
            req.push_str("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.map_err(|e| format!("send upgrade: {e}"))?;
        let mut buf = Vec::with_capacity(read_size.max(4096));
        let head_len = loop {
            if let Some(p) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err("upgrade answer too long".into());
            }
            if sock.read_buf(&mut buf).await.map_err(|e| format!("read upgrade answer: {e}"))? == 0 {
                return Err("closed during upgrade".into());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let status = head.split(' ').nth(1).unwrap_or("?");
        if status != "101" {
            return Err(format!("upgrade refused: HTTP {status}"));
        }
        let accept = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("sec-websocket-accept").then(|| value.trim().to_string())
        });
        if accept != Some(derive_accept_key(key.as_bytes())) {
            return Err("upgrade answer with a wrong Sec-WebSocket-Accept".into());
        }
        let extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_ascii_lowercase())
        });
        let inflater = match extensions {
            None => None,
            Some(e)
                if compress
                    && e.starts_with("permessage-deflate")
                    && e.contains("server_no_context_takeover") =>
            {
                Some(Box::new(flate2::Decompress::new(false)))
            }
            Some(e) => return Err(format!("upgrade answer with extensions this client cannot take: {e}")),
        };
        let wire = buf.len() as u64;
        buf.drain(..head_len);
        Ok(Socket {
            sock,
            buf,
            read_size,
            partial: None,
            replies: Vec::new(),
            mask: rand::random::<u32>() | 1,
            inflater,
            inflated: Vec::new(),
            wire,
        })
    }

    /// Bytes read since the last call (the first: since the connection opened).
    pub(crate) fn take_wire(&mut self) -> u64 {
        std::mem::take(&mut self.wire)
    }

    /// Sends `subscribe` for `channel` (id 1) and reads until both its answer and the snapshot
    /// have arrived, in either order. Later messages stay buffered for [`Socket::drain`].
    pub(crate) async fn subscribe(&mut self, channel: &str) -> Result<Subscribed, String> {
        self.subscribe_since(channel, None).await
    }

    /// [`Socket::subscribe`], recovering from `since` (epoch, offset) when given.
    pub(crate) async fn subscribe_since(
        &mut self,
        channel: &str,
        since: Option<(&str, u64)>,
    ) -> Result<Subscribed, String> {
        let params = match since {
            None => json!([channel]),
            Some((epoch, offset)) => json!({"channel": channel, "since": {"epoch": epoch, "offset": offset}}),
        };
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": params});
        self.send_text(req.to_string().as_bytes()).await?;
        let (mut id, mut snapshot) = (None, None);
        let mut failure = None;
        loop {
            self.drain(|m| {
                failure = read_subscribing(m, &mut id, &mut snapshot).err();
                failure.is_none() && (id.is_none() || snapshot.is_none())
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            if let (Some(id), Some(snap)) = (&id, snapshot.take()) {
                if *id != snap.id {
                    return Err(format!("snapshot for subscription {}, expected {id}", snap.id));
                }
                return Ok(snap);
            }
            self.fill().await?;
        }
    }

    /// Sends one masked text frame.
    pub(crate) async fn send_text(&mut self, text: &[u8]) -> Result<(), String> {
        let frame = self.frame(OP_TEXT, text);
        self.sock.write_all(&frame).await.map_err(|e| format!("send: {e}"))
    }

    /// Closes cleanly: sends close 1000 and reads (discarding) until the server's close frame or
    /// the end of the connection. The caller bounds the wait.
    pub(crate) async fn close(&mut self) -> Result<(), String> {
        let frame = self.frame(OP_CLOSE, &code::NORMAL.to_be_bytes());
        self.sock.write_all(&frame).await.map_err(|e| format!("send close: {e}"))?;
        loop {
            match self.drain(|_| true) {
                Err(e) if e.starts_with("close ") => return Ok(()),
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            match self.fill().await {
                Err(e) if e == EOF => return Ok(()),
                other => other?,
            }
        }
    }

    /// A client frame: FIN, `opcode`, masked `payload`.
    fn frame(&mut self, opcode: u8, payload: &[u8]) -> Vec<u8> {
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let key = self.mask.to_be_bytes();
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    /// Waits for data and appends what one read returns; Err([`EOF`]) when the server ended the
    /// connection.
    pub(crate) async fn fill(&mut self) -> Result<(), String> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        match self.sock.read_buf(&mut self.buf).await {
            Ok(0) => Err(EOF.into()),
            Ok(n) => {
                self.wire += n as u64;
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Hands each complete message in the buffer to `on_message` until it returns false (the
    /// rest stays buffered), queues pongs for pings, and keeps an incomplete frame for the next
    /// read. Err on a close frame (`close CODE REASON`) or a framing error.
    pub(crate) fn drain(&mut self, mut on_message: impl FnMut(&[u8]) -> bool) -> Result<(), String> {
        let mut at = 0;
        let result = loop {
            let b = &self.buf[at..];
            if b.len() < 2 {
                break Ok(());
            }
            let (fin, opcode, compressed) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[0] & 0x40 != 0);
            if b[0] & 0x30 != 0 || (compressed && (self.inflater.is_none() || opcode >= OP_CLOSE)) {
                break Err(format!("reserved bits 0x{:02x} on a frame", b[0] & 0x70));
            }
            if b[1] & 0x80 != 0 {
                break Err("masked frame from the server".to_string());
            }
            let (len, header) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes; qed")) as usize, 10)
                }
                126 | 127 => break Ok(()),
                n => (n as usize, 2),
            };
            if len > MAX_MESSAGE {
                break Err(format!("frame of {len} bytes"));
            }
            if b.len() < header + len {
                break Ok(());
            }
            let payload = &b[header..header + len];
            at += header + len;
            let more = match opcode {
                OP_TEXT | OP_BINARY if fin && compressed => {
                    let d = self.inflater.as_mut().expect("checked above; qed");
                    if let Err(e) = inflate(d, payload, &mut self.inflated) {
                        break Err(e);
                    }
                    on_message(&self.inflated)
                }
                OP_TEXT | OP_BINARY if compressed => {
                    break Err("fragmented compressed messages are not taken".into());
                }
                OP_TEXT | OP_BINARY if fin => on_message(payload),
                OP_TEXT | OP_BINARY => {
                    self.partial = Some(payload.to_vec());
                    true
                }
                OP_CONT => match self.partial.as_mut() {
                    None => break Err("continuation frame without a start".to_string()),
                    Some(p) => {
                        p.extend_from_slice(payload);
                        match fin {
                            true => on_message(&self.partial.take().expect("just extended; qed")),
                            false => true,
                        }
                    }
                },
                OP_PING => {
                    let payload = payload.to_vec();
                    let pong = self.frame(OP_PONG, &payload);
                    self.replies.extend_from_slice(&pong);
                    true
                }
                OP_PONG => true,
                OP_CLOSE => {
                    let code = payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                    break Err(format!("close {code} {reason}").trim_end().to_string());
                }
                other => break Err(format!("unknown opcode {other}")),
            };
            if !more {
                break Ok(());
            }
        };
        self.buf.drain(..at);
        result
    }

    /// Receives until the connection ends: hands each message to `on_message` with the time its
    /// read returned (µs on the bench clock; all of one read had arrived by then), answers pings,
    /// and tells `on_read` the bytes of each read. Returns why it ended.
    pub(crate) async fn receive(
        &mut self,
        mut on_message: impl FnMut(&[u8], u64) -> bool,
        mut on_read: impl FnMut(u64),
    ) -> String {
        loop {
            let now = super::measure::now_us();
            if let Err(e) = self.drain(|m| on_message(m, now)) {
                return e;
            }
            if let Err(e) = self.flush_replies().await {
                return e;
            }
            if let Err(e) = self.fill().await {
                return e;
            }
            on_read(self.take_wire());
        }
    }

    /// Sends the pongs queued by [`Socket::drain`], if any.
    pub(crate) async fn flush_replies(&mut self) -> Result<(), String> {
        if self.replies.is_empty() {
            return Ok(());
        }
        let replies = std::mem::take(&mut self.replies);
        self.sock.write_all(&replies).await.map_err(|e| format!("send pong: {e}"))
    }
}

/// Inflates one compressed message (RFC 7692 7.2.2: its payload and the 4 bytes a sync flush
/// ends with) into `out`. The server's messages never refer to earlier ones
/// (`server_no_context_takeover`), so the inflater goes on from one to the next unreset.
fn inflate(d: &mut flate2::Decompress, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    for input in [payload, &[0, 0, 0xff, 0xff][..]] {
        let mut read = 0;
        loop {
            out.reserve((input.len() - read) * 4 + 4096);
            let before = d.total_in();
            d.decompress_vec(&input[read..], out, flate2::FlushDecompress::Sync)
                .map_err(|e| format!("invalid compressed message: {e}"))?;
            read += (d.total_in() - before) as usize;
            if out.len() > MAX_MESSAGE {
                return Err("compressed message inflates too far".into());
            }
            if read == input.len() && out.len() < out.capacity() {
                break;
            }
        }
    }
    Ok(())
}

/// Takes one message that arrived while subscribing: the answer to id 1 (the subscription id,
/// or an error) or the snapshot notification (its subscription id, offset, epoch, `recovered`
/// and publications).
fn read_subscribing(
    m: &[u8],
    id: &mut Option<Value>,
    snapshot: &mut Option<Subscribed>,
) -> Result<(), String> {
    let v: Value = serde_json::from_slice(m).map_err(|e| format!("bad JSON while subscribing: {e}"))?;
    if v.get("id") == Some(&json!(1)) {
        if let Some(e) = v.get("error") {
            return Err(format!("subscribe error: {e}"));
        }
        *id = Some(v.get("result").cloned().ok_or("subscribe answer without a result")?);
    } else if v["method"] == "subscription" && v["params"]["result"]["type"] == "snapshot" {
        let r = &v["params"]["result"];
        let offset = r["offset"].as_u64().ok_or("snapshot without an offset")?;
        let offsets = r["publications"].as_array().map_or(Ok(Vec::new()), |ps| {
            ps.iter().map(|p| p["offset"].as_u64().ok_or("snapshot publication without an offset")).collect()
        })?;
        *snapshot = Some(Subscribed {
            id: v["params"]["subscription"].clone(),
            offset,
            epoch: r["epoch"].as_str().unwrap_or_default().to_string(),
            recovered: r["recovered"] == true,
            offsets,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribing_takes_either_order() {
        let answer = br#"{"jsonrpc":"2.0","id":1,"result":"00ff"}"#;
        let snap = br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"00ff","result":{"type":"snapshot","channel":"c","epoch":"e","offset":9,"recovered":false,"publications":[]}}}"#;
        let (mut id, mut s) = (None, None);
        read_subscribing(snap, &mut id, &mut s).unwrap();
        assert!(id.is_none());
        read_subscribing(answer, &mut id, &mut s).unwrap();
        let s = s.unwrap();
        assert_eq!((id.unwrap(), s.id, s.offset, s.epoch.as_str()), (json!("00ff"), json!("00ff"), 9, "e"));
        assert!(!s.recovered && s.offsets.is_empty());
        let back = br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"01","result":{"type":"snapshot","channel":"c","epoch":"e","offset":11,"recovered":true,"publications":[{"offset":10,"ts":1,"data":1},{"offset":11,"ts":1,"data":2}]}}}"#;
        let mut s = None;
        read_subscribing(back, &mut None, &mut s).unwrap();
        let s = s.unwrap();
        assert!(s.recovered);
        assert_eq!(s.offsets, [10, 11]);
        let refused = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"no"}}"#;
        assert!(read_subscribing(refused, &mut None, &mut None).is_err());
    }
}
