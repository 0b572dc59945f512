//! Properties of the parser over generated input (the fuzz target `frame` explores further).

use super::tests::client_frame;
use super::*;
use proptest::prelude::*;

/// Feeds `bytes` through the parser as the connection reader does (`read_loop` in ws.rs):
/// header, unmask, reassembly, repeated over the buffer. Returns the complete messages and
/// pings seen, and the failure that ended the stream, if one did.
fn drive(mut bytes: Vec<u8>, max_message: usize) -> (Vec<String>, Vec<Vec<u8>>, Option<Failure>) {
    let (mut texts, mut pings) = (Vec::new(), Vec::new());
    let mut asm = Reassembly::default();
    let mut at = 0;
    while at < bytes.len() {
        let allowance = max_message.saturating_sub(asm.pending());
        let h = match parse_header(&bytes[at..], allowance, false) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(f) => return (texts, pings, Some(f)),
        };
        assert!(h.opcode >= OP_CLOSE || h.len <= allowance, "a data frame over the allowance is refused");
        let total = h.header_len + h.len;
        if bytes.len() - at < total {
            break;
        }
        let payload = &mut bytes[at + h.header_len..at + total];
        at += total;
        unmask(payload, h.mask);
        match asm.frame(&h, payload, max_message) {
            Ok(Event::Text(t)) => texts.push(t.to_string()),
            Ok(Event::Ping(p)) => pings.push(p.to_vec()),
            Ok(Event::Close(_)) => break,
            Ok(Event::Pong | Event::Partial) => {}
            Err(f) => return (texts, pings, Some(f)),
        }
        asm.finish();
    }
    (texts, pings, None)
}

/// A data frame's first byte: FIN or not, with an opcode.
fn b0(fin: bool, opcode: u8) -> u8 {
    if fin { 0x80 | opcode } else { opcode }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        max in 0usize..300,
    ) {
        let (texts, _, failure) = drive(bytes, max);
        if let Some(f) = failure {
            prop_assert!(matches!(f.code, 1002 | 1003 | 1007 | 1009), "{f}");
        }
        prop_assert!(texts.iter().all(|t| t.len() <= max));
    }

    #[test]
    fn structured_garbage_never_panics(
        frames in prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..200), any::<[u8; 4]>()),
            0..8,
        ),
        max in 0usize..300,
    ) {
        // Well-formed framing around arbitrary first bytes and payloads reaches deeper.
        let bytes: Vec<u8> = frames.iter().flat_map(|(b0, p, m)| client_frame(*b0, p, *m)).collect();
        let _ = drive(bytes, max);
    }

    #[test]
    fn a_valid_client_frame_round_trips(
        opcode in prop::sample::select(&[OP_TEXT, OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_CLOSE][..]),
        fin in any::<bool>(),
        len in prop_oneof![0usize..130, 65_530usize..65_542],
        mask in any::<[u8; 4]>(),
        seed in any::<u8>(),
    ) {
        let control = opcode >= OP_CLOSE;
        let (fin, len) = if control { (true, len % 126) } else { (fin, len) };
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let f = client_frame(b0(fin, opcode), &payload, mask);
        let h = parse_header(&f, 1 << 20, false).unwrap().expect("a whole header");
        prop_assert_eq!((h.fin, h.opcode, h.len, h.mask), (fin, opcode, len, mask));
        prop_assert_eq!(h.header_len + len, f.len());
        for cut in 0..h.header_len {
            prop_assert_eq!(parse_header(&f[..cut], 1 << 20, false), Ok(None));
        }
        let mut p = f[h.header_len..].to_vec();
        unmask(&mut p, h.mask);
        prop_assert_eq!(p, payload);
    }

    #[test]
    fn a_fragmented_text_message_round_trips_around_pings(
        text in ".{0,300}",
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ping in prop::collection::vec(any::<u8>(), 0..126),
        mask in any::<[u8; 4]>(),
    ) {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
        at.sort_unstable();
        at.dedup();
        let mut bounds = vec![0];
        bounds.extend(at.into_iter().filter(|&a| a > 0 && a < text.len()));
        bounds.push(text.len());
        let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &text.as_bytes()[w[0]..w[1]]).collect();
        let mut bytes = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let opcode = if i == 0 { OP_TEXT } else { OP_CONT };
            bytes.extend(client_frame(b0(i + 1 == pieces.len(), opcode), piece, mask));
            bytes.extend(client_frame(0x80 | OP_PING, &ping, mask));
        }
        let (texts, pings, failure) = drive(bytes, 1 << 20);
        prop_assert_eq!(failure, None);
        prop_assert_eq!(pings, vec![ping; pieces.len()]);
        prop_assert_eq!(texts, vec![text]);
    }

    #[test]
    fn control_frames_do_not_count_toward_the_message_limit(
        text in "[a-z]{2,64}",
        ping in prop::collection::vec(any::<u8>(), 0..126),
        mask in any::<[u8; 4]>(),
    ) {
        // A message exactly at the limit, with a ping between its two fragments.
        let (a, b) = text.as_bytes().split_at(1);
        let mut bytes = client_frame(OP_TEXT, a, mask);
        bytes.extend(client_frame(0x80 | OP_PING, &ping, mask));
        bytes.extend(client_frame(0x80 | OP_CONT, b, mask));
        let (texts, pings, failure) = drive(bytes, text.len());
        prop_assert_eq!(failure, None);
        prop_assert_eq!(texts, vec![text]);
        prop_assert_eq!(pings, vec![ping]);
    }

    #[test]
    fn a_declared_length_over_the_limit_is_1009(
        opcode in prop_oneof![Just(OP_TEXT), Just(OP_BINARY), Just(OP_CONT)],
        fin in any::<bool>(),
        max in prop_oneof![0usize..200, 0usize..1 << 20],
        over in prop_oneof![1u64..100, 1u64..(1 << 62)],
        form in 0u8..3,
        with_mask in any::<bool>(),
    ) {
        let len = (max as u64).saturating_add(over).min(u64::MAX >> 1);
        // Any length form that can hold `len`, minimal or not: all must be refused.
        let form = match form {
            0 if len <= 125 => 0,
            0 | 1 if len <= 0xffff => 1,
            _ => 2,
        };
        let mut bytes = vec![b0(fin, opcode)];
        match form {
            0 => bytes.push(0x80 | len as u8),
            1 => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&len.to_be_bytes());
            }
        }
        if with_mask {
            bytes.extend_from_slice(&[1, 2, 3, 4]);
        }
        prop_assert_eq!(parse_header(&bytes, max, false).map_err(|f| f.code), Err(code::TOO_BIG));
    }
}
