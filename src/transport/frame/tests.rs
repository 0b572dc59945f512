//! The RFC's rules, case by case, on the parser alone.

use super::*;

/// A masked client frame, as a browser would send it.
pub(crate) fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![b0];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn parse(bytes: &[u8]) -> Result<Option<Header>, Failure> {
    parse_header(bytes, 4096, false)
}

#[test]
fn parses_every_length_form_and_unmasks() {
    for len in [0usize, 1, 125, 126, 127, 4000, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let f = client_frame(0x81, &payload, [1, 2, 3, 4]);
        let h = parse_header(&f, 100_000, false).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.len), (true, OP_TEXT, len));
        assert_eq!(h.header_len + len, f.len());
        let mut p = f[h.header_len..].to_vec();
        unmask(&mut p, h.mask);
        assert_eq!(p, payload);
        // Every strict prefix of the header asks for more bytes.
        for cut in 0..h.header_len {
            assert_eq!(parse_header(&f[..cut], 100_000, false), Ok(None), "cut {cut}");
        }
    }
}

#[test]
fn rejects_what_the_rfc_forbids_with_its_codes() {
    let m = [9, 9, 9, 9];
    let code_of = |b: Vec<u8>| parse(&b).unwrap_err().code;
    assert_eq!(code_of(client_frame(0x81 | 0x40, b"x", m)), 1002, "RSV1");
    assert_eq!(code_of(client_frame(0x83, b"x", m)), 1002, "opcode 3");
    assert_eq!(code_of(client_frame(0x8B, b"x", m)), 1002, "opcode 11");
    assert_eq!(code_of(vec![0x81, 0x01, b'x']), 1002, "unmasked");
    assert_eq!(code_of(client_frame(0x09, b"x", m)), 1002, "fragmented ping");
    assert_eq!(code_of(client_frame(0x89, &[0u8; 126], m)), 1002, "long ping");
    assert_eq!(code_of(client_frame(0x81, &[b'a'; 4097], m)), 1009, "too big");
    let mut huge = vec![0x81, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&m);
    assert_eq!(code_of(huge), 1002, "length top bit");
    let mut big = vec![0x81, 0x80 | 127];
    big.extend_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(code_of(big), 1009, "a huge declared length is refused before its payload");
}

#[test]
fn reassembles_fragments_around_control_frames() {
    let mut r = Reassembly::default();
    let h = |fin, opcode, len| Header { fin, opcode, mask: [0; 4], len, header_len: 6, compressed: false };
    assert_eq!(r.frame(&h(false, OP_TEXT, 3), b"{\"a", 100), Ok(Event::Partial));
    assert_eq!(r.frame(&h(true, OP_PING, 2), b"hi", 100), Ok(Event::Ping(b"hi")));
    assert_eq!(r.frame(&h(false, OP_CONT, 2), b"\":", 100), Ok(Event::Partial));
    assert_eq!(r.frame(&h(true, OP_CONT, 2), b"1}", 100), Ok(Event::Text("{\"a\":1}")));
    r.finish();
    assert_eq!(r.pending(), 0);
    // A continuation with nothing to continue, and a new message inside one.
    assert_eq!(r.frame(&h(true, OP_CONT, 1), b"x", 100).unwrap_err().code, 1002);
    assert_eq!(r.frame(&h(false, OP_TEXT, 1), b"x", 100), Ok(Event::Partial));
    assert_eq!(r.frame(&h(true, OP_TEXT, 1), b"y", 100).unwrap_err().code, 1002);
}

#[test]
fn fragments_count_toward_the_message_limit() {
    let mut r = Reassembly::default();
    let h = |fin, opcode| Header { fin, opcode, mask: [0; 4], len: 60, header_len: 6, compressed: false };
    assert_eq!(r.frame(&h(false, OP_TEXT), &[b' '; 60], 100), Ok(Event::Partial));
    assert_eq!(r.frame(&h(true, OP_CONT), &[b' '; 60], 100).unwrap_err().code, 1009);
}

#[test]
fn text_must_be_utf8_and_binary_is_taken_as_text_only_when_it_is() {
    let mut r = Reassembly::default();
    let h = |opcode, fin| Header { fin, opcode, mask: [0; 4], len: 2, header_len: 6, compressed: false };
    assert_eq!(r.frame(&h(OP_TEXT, true), &[0xc3, 0x28], 100).unwrap_err().code, 1007);
    assert_eq!(r.frame(&h(OP_BINARY, true), &[0xc3, 0x28], 100).unwrap_err().code, 1003);
    assert!(matches!(r.frame(&h(OP_BINARY, true), b"{}", 100), Ok(Event::Text("{}"))));
    // Fragmented: the first frame's opcode decides.
    assert!(matches!(r.frame(&h(OP_BINARY, false), b"[1", 100), Ok(Event::Partial)));
    assert!(matches!(r.frame(&h(OP_CONT, true), b"]", 100), Ok(Event::Text("[1]"))));
    r.finish();
    assert!(matches!(r.frame(&h(OP_BINARY, false), &[0xc3], 100), Ok(Event::Partial)));
    assert_eq!(r.frame(&h(OP_CONT, true), &[0x28], 100).unwrap_err().code, 1003);
}

#[test]
fn close_payloads() {
    assert_eq!(check_close_payload(b""), Ok(1000));
    assert_eq!(check_close_payload(&1001u16.to_be_bytes()), Ok(1001));
    assert_eq!(check_close_payload(&[3, 0xe8, b'o', b'k']), Ok(1000));
    assert_eq!(check_close_payload(&4000u16.to_be_bytes()), Ok(4000));
    assert_eq!(check_close_payload(&[3]).unwrap_err().code, 1002);
    for bad in [0u16, 999, 1004, 1005, 1006, 1012, 1015, 1016, 2999, 5000] {
        assert_eq!(check_close_payload(&bad.to_be_bytes()).unwrap_err().code, 1002, "{bad}");
    }
    assert_eq!(check_close_payload(&[3, 0xe8, 0xff]).unwrap_err().code, 1007);
}

#[test]
fn server_frames_round_trip_through_the_header_rules() {
    for len in [0usize, 125, 126, 65_535, 65_536] {
        let mut out = Vec::new();
        put_frame(&mut out, OP_TEXT, &vec![b'x'; len]);
        assert_eq!(out.len(), header_len(len) + len);
        assert_eq!(out[0], 0x81);
    }
    let mut out = Vec::new();
    put_close(&mut out, 1008, &"é".repeat(100));
    assert!(out.len() <= 2 + 125);
    assert!(std::str::from_utf8(&out[4..]).is_ok(), "the reason is cut on a character boundary");
}
