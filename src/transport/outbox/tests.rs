//! The outbox's rules: the slow-consumer bounds, order through partial writes, endings.

use super::*;
use crate::transport::shared::SharedFrame;

#[test]
fn messages_count_only_while_the_socket_is_full() {
    let o = Outbox::new(3, 1 << 20);
    for _ in 0..10 {
        assert_eq!(o.push(&[b"abc"]), Push::Queued, "the writer has not run yet: no verdict");
    }
    o.set_socket_full(true);
    assert!(o.is_ending(), "ten queued while the socket is full: slow");
    let o = Outbox::new(3, 1 << 20);
    o.set_socket_full(true);
    o.set_socket_full(false);
    for _ in 0..10 {
        assert_eq!(o.push(&[b"abc"]), Push::Queued);
    }
}

#[test]
fn overflow_is_reported_once_and_drops_the_queue() {
    let o = Outbox::new(3, 1 << 20);
    o.set_socket_full(true);
    for _ in 0..3 {
        assert_eq!(o.push(&[b"abc"]), Push::Queued);
    }
    assert_eq!(o.push(&[b"abc"]), Push::Overflow);
    assert_eq!(o.push(&[b"abc"]), Push::Closed);
    assert!(o.is_ending());
    let mut b = Batch::default();
    assert!(matches!(o.take(&mut b), Take::End(Ending::Abort(1008, _))));
    assert!(b.is_empty());
}

#[test]
fn inline_writes_keep_order_and_exclude_the_writer_task() {
    let o = Outbox::new(100, 1 << 20);
    assert_eq!(o.push(&[b"a,"]), Push::Queued);
    let mut inline = Batch::default();
    assert!(o.take_inline(&mut inline));
    assert_eq!(inline.to_vec(), b"a,");
    // A delivery meanwhile waits; the writer task does not take it while the reader writes.
    assert_eq!(o.push(&[b"b,"]), Push::Queued);
    let mut task = Batch::default();
    assert!(matches!(o.take(&mut task), Take::Idle));
    // The socket took one byte only: the rest goes back in front of "b,".
    inline.advance(1);
    o.finish_inline(&mut inline);
    assert!(inline.is_empty());
    assert!(matches!(o.take(&mut task), Take::Data));
    assert_eq!(task.to_vec(), b",b,");
    // While the task holds a batch, the reader does not write inline.
    assert_eq!(o.push(&[b"c,"]), Push::Queued);
    assert!(!o.take_inline(&mut inline));
    task.clear(0);
    assert!(matches!(o.take(&mut task), Take::Data));
    task.clear(0);
    assert!(matches!(o.take(&mut task), Take::Idle));
    assert_eq!(o.push(&[b"d"]), Push::Queued);
    assert!(o.take_inline(&mut inline));
    inline.advance(1);
    o.finish_inline(&mut inline);
    assert!(inline.is_empty());
    assert!(matches!(o.take(&mut task), Take::Idle));
}

/// A shared frame with a 16-byte splice in the middle, as a JSON-RPC notification has.
fn shared(event: &str) -> Arc<SharedFrame> {
    let mut f = SharedFrame::with_capacity(event.len());
    f.build(16, |w| {
        w.put(b"[");
        w.splice_here();
        w.put(event.as_bytes());
    });
    Arc::new(f)
}

/// Splices that differ per connection.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> Splice {
        self.0 += 1;
        Splice::new(format!("{:016x}", self.0).as_bytes()).unwrap()
    }
}

fn whole(f: &SharedFrame, id: &Splice) -> Vec<u8> {
    f.parts(id).concat()
}

#[test]
fn shared_and_copied_messages_keep_their_order_through_partial_writes() {
    let mut ids = Ids(0);
    let (a, b) = (ids.next(), ids.next());
    let f1 = shared("1");
    let f2 = shared("[2,2]");
    let o = Outbox::new(100, 1 << 20);
    assert_eq!(o.push_answer(&[b"answer,"]), Push::Queued);
    assert_eq!(o.push_shared(&f1, a), Push::Queued);
    assert_eq!(o.push(&[b"snap", b"shot,"]), Push::Queued);
    assert_eq!(o.push_shared(&f2, a), Push::Queued);
    assert_eq!(o.queued_messages(), 4);
    let expected = [b"answer,".to_vec(), whole(&f1, &a), b"snapshot,".to_vec(), whole(&f2, &a)].concat();
    // Every split point: written up to there inline, the rest taken by the writer task, with
    // a message queued in between.
    for cut in 0..=expected.len() {
        let o2 = Outbox::new(100, 1 << 20);
        assert_eq!(o2.push_answer(&[b"answer,"]), Push::Queued);
        assert_eq!(o2.push_shared(&f1, a), Push::Queued);
        assert_eq!(o2.push(&[b"snap", b"shot,"]), Push::Queued);
        assert_eq!(o2.push_shared(&f2, a), Push::Queued);
        let mut inline = Batch::default();
        assert!(o2.take_inline(&mut inline));
        assert_eq!(inline.to_vec(), expected);
        inline.advance(cut);
        assert_eq!(o2.push_shared(&f1, b), Push::Queued);
        o2.finish_inline(&mut inline);
        let mut task = Batch::default();
        let rest = match o2.take(&mut task) {
            Take::Data => task.to_vec(),
            _ => Vec::new(),
        };
        assert_eq!(rest, [&expected[cut..], &whole(&f1, &b)].concat(), "cut at {cut}");
    }
    // Each shared frame was dropped with the queues that held it.
    drop(o);
    assert_eq!(Arc::strong_count(&f1), 1);
    assert_eq!(Arc::strong_count(&f2), 1);
}

#[test]
fn shared_frames_count_in_full_against_the_byte_bound() {
    let id = Ids(0).next();
    let f = shared("\"0123456789\"");
    let o = Outbox::new(100, 2 * f.frame_len() + 1);
    assert_eq!(o.push_shared(&f, id), Push::Queued);
    let mut b = Batch::default();
    assert!(matches!(o.take(&mut b), Take::Data));
    assert_eq!(b.to_vec(), whole(&f, &id));
    // Taken but not yet written: the queue is empty again, so two more fit, a third does not.
    assert_eq!(o.push_shared(&f, id), Push::Queued);
    assert_eq!(o.push_shared(&f, id), Push::Queued);
    assert_eq!(o.push_shared(&f, id), Push::Overflow);
    assert!(o.is_ending());
    assert_eq!(Arc::strong_count(&f), 2, "the dropped queue let go; the batch taken holds one");
    drop(b);
    assert_eq!(Arc::strong_count(&f), 1, "an aborted outbox lets go of its frames");
}

#[tokio::test]
async fn a_batch_of_many_frames_reaches_the_socket_whole_and_in_order() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    let (mut client, server) = (client.unwrap(), accepted.unwrap().0);
    let mut ids = Ids(0);
    let o = Outbox::new(1 << 20, 1 << 30);
    let mut expected = Vec::new();
    // More pieces than one writev takes, and more bytes than the socket buffers hold.
    for i in 0..3000 {
        let id = ids.next();
        // Two frames larger than a write gathers, one shared and one copied.
        let pad = if i == 1000 { 150_000 } else { i % 300 };
        let f = shared(&format!("[{i},\"{}\"]", "x".repeat(pad)));
        assert_eq!(o.push_shared(&f, id), Push::Queued);
        expected.extend_from_slice(&whole(&f, &id));
        if i % 7 == 0 || i == 2000 {
            let copied = format!("copied {i}{};", "y".repeat(if i == 2000 { 100_000 } else { 0 }));
            assert_eq!(o.push(&[copied.as_bytes()]), Push::Queued);
            expected.extend_from_slice(copied.as_bytes());
        }
    }
    let mut batch = Batch::default();
    assert!(matches!(o.take(&mut batch), Take::Data));
    assert_eq!(batch.len(), expected.len());
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let mut chunk = vec![0; 1 << 16];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stream ended early");
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, expected);
    });
    while !batch.is_done() {
        match batch.write_to(&server) {
            Ok(n) => assert!(n > 0),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => server.writable().await.unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
    reader.await.unwrap();
}

#[test]
fn byte_bound_counts_too() {
    let o = Outbox::new(100, 10);
    assert_eq!(o.push(&[b"12345", b"678"]), Push::Queued);
    assert_eq!(o.push(&[b"123"]), Push::Overflow);
}

#[test]
fn taking_resets_the_count() {
    let o = Outbox::new(2, 1 << 20);
    o.set_socket_full(true);
    let mut b = Batch::default();
    for round in 0..5 {
        assert_eq!(o.push(&[b"a"]), Push::Queued, "round {round}");
        assert_eq!(o.push(&[b"b"]), Push::Queued);
        assert!(matches!(o.take(&mut b), Take::Data));
        assert_eq!(b.to_vec(), b"ab");
        b.clear(0);
    }
}

#[test]
fn close_lets_queued_data_go_first() {
    let o = Outbox::new(10, 1 << 20);
    assert_eq!(o.push(&[b"x"]), Push::Queued);
    o.end(Ending::Close(1001, "server shutting down"));
    o.end(Ending::Abort(1008, "ignored: the first ending wins"));
    assert_eq!(o.push(&[b"y"]), Push::Closed);
    let mut b = Batch::default();
    assert!(matches!(o.take(&mut b), Take::Data));
    assert_eq!(b.to_vec(), b"x");
    b.clear(0);
    assert!(matches!(o.take(&mut b), Take::End(Ending::Close(1001, _))));
}

#[test]
fn answers_are_not_counted_by_the_slow_consumer_rule() {
    let o = Outbox::new(2, 10);
    o.set_socket_full(true);
    // Far over both bounds, while the socket is full: answers to the client's own calls.
    for _ in 0..5 {
        assert_eq!(o.push_answer(&[b"0123456789ab"]), Push::Queued);
    }
    assert!(!o.is_ending());
    assert!(o.backlogged(100, 60), "the reader stops reading calls at its byte bound");
    assert!(!o.backlogged(100, 61));
    // Publications meanwhile meet the rule on their own: two fit, a third is over.
    assert_eq!(o.push(&[b"12345"]), Push::Queued);
    assert_eq!(o.push(&[b"123"]), Push::Queued);
    assert_eq!(o.push(&[b"1"]), Push::Overflow);
}

#[test]
fn what_an_inline_write_leaves_is_not_counted_again() {
    let o = Outbox::new(100, 10);
    assert_eq!(o.push(&[b"12345678"]), Push::Queued);
    let mut inline = Batch::default();
    assert!(o.take_inline(&mut inline));
    inline.advance(1);
    o.finish_inline(&mut inline);
    // Seven bytes went back to the queue; a publication of nine is still within the bound.
    assert_eq!(o.push(&[b"123456789"]), Push::Queued);
    assert!(o.backlogged(100, 7), "the reader waits for them to drain");
}

#[test]
fn each_stretch_of_a_full_socket_has_its_own_stall_number() {
    let o = Outbox::new(100, 1 << 20);
    assert_eq!(o.stall(), None);
    o.set_socket_full(true);
    let first = o.stall().expect("stalled");
    o.set_socket_full(true);
    assert_eq!(o.stall(), Some(first), "the same stretch: the socket took nothing");
    o.set_socket_full(false);
    assert_eq!(o.stall(), None);
    o.set_socket_full(true);
    assert!(o.stall().is_some_and(|s| s != first), "progress in between: a new stretch");
}

#[test]
fn every_ending_label_is_listed() {
    use crate::transport::frame::code;
    let endings = [
        Ending::Abort(1008, "slow consumer"),
        Ending::Abort(1008, "write stalled"),
        Ending::Close(1008, "ping timeout"),
        Ending::Close(1008, "rate limit exceeded"),
        Ending::Close(code::GOING_AWAY, "server shutting down"),
        Ending::Close(code::TOO_BIG, "message too big"),
        Ending::Close(code::PROTOCOL_ERROR, "bad frame"),
        Ending::Close(code::INVALID_PAYLOAD, "not UTF-8"),
        Ending::Close(code::UNSUPPORTED_DATA, "binary"),
    ];
    let labels: std::collections::BTreeSet<&str> = endings.iter().filter_map(|e| e.label()).collect();
    let listed: std::collections::BTreeSet<&str> = Ending::LABELS.into_iter().collect();
    assert_eq!(labels, listed, "Ending::LABELS is every label, so /metrics exports each from zero");
    assert_eq!(Ending::Close(1000, "").label(), None);
    assert_eq!(Ending::Gone.label(), None);
}

#[test]
fn a_deflating_outbox_compresses_whole_text_frames_worth_it_and_nothing_else() {
    use std::io::Read;
    let frame_of = |payload: &[u8]| {
        let (h, n) = frame::header_bytes(frame::OP_TEXT, payload.len());
        [&h[..n], payload].concat()
    };
    let taken = |o: &Outbox| {
        let mut b = Batch::default();
        assert!(matches!(o.take(&mut b), Take::Data));
        b.to_vec()
    };
    let big = br#"{"jsonrpc":"2.0","id":1,"result":{"levels":[1,2,3,4,5,6,7,8,9]}}"#.repeat(10);
    let o = Outbox::new(100, 1 << 20).deflating(256);
    assert_eq!(o.deflate_min(), Some(256));
    assert_eq!(o.push_answer(&[&frame_of(&big)]), Push::Queued);
    let got = taken(&o);
    assert_eq!(got[0], 0x80 | deflate::RSV1 | frame::OP_TEXT);
    let payload = &got[if got[1] == 126 { 4 } else { 2 }..];
    assert!(payload.len() * 4 < big.len(), "{} of {}", payload.len(), big.len());
    let mut all = payload.to_vec();
    all.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    let _ = flate2::read::DeflateDecoder::new(&all[..]).read_to_end(&mut out);
    assert_eq!(out, big);
    // Short, several frames as one, a control frame: as they are.
    let short = frame_of(b"{\"id\":2}");
    let two = [frame_of(&big), frame_of(&big)].concat();
    for parts in [short.clone(), two.clone()] {
        let o = Outbox::new(100, 1 << 20).deflating(256);
        assert_eq!(o.push(&[&parts]), Push::Queued);
        assert_eq!(taken(&o), parts);
    }
    let o = Outbox::new(100, 1 << 20).deflating(256);
    o.push_control(frame::OP_PING, &[b'x'; 100]);
    assert_eq!(taken(&o)[0], 0x80 | frame::OP_PING);
    // Without the extension nothing is compressed.
    let o = Outbox::new(100, 1 << 20);
    assert_eq!(o.deflate_min(), None);
    assert_eq!(o.push(&[&frame_of(&big)]), Push::Queued);
    assert_eq!(taken(&o), frame_of(&big));
}
