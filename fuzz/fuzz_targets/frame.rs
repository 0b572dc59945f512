//! Client bytes through the frame parser exactly as the connection reader feeds them
//! (`read_loop` in src/transport/ws.rs): header, unmask, reassembly, over one growing buffer.
//!
//! Checks, besides "no panic": a header read from a prefix of the buffer is either "need more"
//! or the same answer as from the whole buffer (so how TCP splits the stream changes nothing);
//! no data frame over the allowance is accepted; no text message over the limit comes out.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rpchub::transport::frame::{self, Event, OP_CLOSE, Reassembly};

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the message limit, so that small limits are explored too.
    let [a, b, rest @ ..] = data else { return };
    let max_message = u16::from_be_bytes([*a & 0x7f, *b]) as usize;
    // The top bit says whether the connection negotiated permessage-deflate.
    let deflate = *a & 0x80 != 0;
    let mut buf = rest.to_vec();
    let mut asm = Reassembly::default();
    let mut at = 0;
    while at < buf.len() {
        let allowance = max_message.saturating_sub(asm.pending());
        let whole = frame::parse_header(&buf[at..], allowance, deflate);
        for cut in 0..(buf.len() - at).min(14) {
            let part = frame::parse_header(&buf[at..at + cut], allowance, deflate);
            assert!(part == Ok(None) || part == whole, "prefix {cut} gave {part:?}, the whole {whole:?}");
        }
        let h = match whole {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => return,
        };
        assert!(h.opcode >= OP_CLOSE || h.len <= allowance, "a data frame over the allowance: {h:?}");
        let total = h.header_len + h.len;
        if buf.len() - at < total {
            return;
        }
        let payload = &mut buf[at + h.header_len..at + total];
        at += total;
        frame::unmask(payload, h.mask);
        match asm.frame(&h, payload, max_message) {
            Ok(Event::Text(t)) => assert!(t.len() <= max_message, "a text of {} bytes", t.len()),
            Ok(Event::Ping(p)) => assert!(p.len() <= 125),
            Ok(Event::Close(_)) | Err(_) => return,
            Ok(Event::Pong | Event::Partial) => {}
        }
        asm.finish();
    }
});
