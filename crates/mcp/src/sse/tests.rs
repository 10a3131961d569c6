use super::*;
use proptest::prelude::*;

fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut d = SseDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(c);
        while let Some(e) = d.next_event().unwrap() {
            out.push(e);
        }
    }
    out
}

fn ev(id: Option<&str>, event: Option<&str>, data: &str, retry: Option<u64>) -> SseEvent {
    SseEvent {
        id: id.map(str::to_owned),
        event: event.map(str::to_owned),
        data: data.to_owned(),
        retry,
    }
}

#[test]
fn a_simple_stream_decodes() {
    let s = b"event: message\nid: 1\ndata: {\"a\":1}\n\ndata: x\n\n";
    assert_eq!(
        decode_all(&[s]),
        [
            ev(Some("1"), Some("message"), "{\"a\":1}", None),
            ev(None, None, "x", None)
        ]
    );
}

#[test]
fn multi_line_data_is_joined_with_lf() {
    assert_eq!(
        decode_all(&[b"data: a\ndata:b\ndata\ndata:  c\n\n"]),
        [ev(None, None, "a\nb\n\n c", None)]
    );
}

#[test]
fn crlf_and_cr_line_endings_work_even_split_between_chunks() {
    let want = [ev(Some("7"), None, "x\ny", None), ev(None, None, "z", None)];
    assert_eq!(
        decode_all(&[b"id: 7\r\ndata: x\r\ndata: y\r\n\r\ndata: z\r\n\r\n"]),
        want
    );
    assert_eq!(
        decode_all(&[b"id: 7\rdata: x\rdata: y\r\rdata: z\r\r"]),
        want
    );
    // CR at the end of one chunk, LF at the start of the next: one terminator, not two.
    assert_eq!(
        decode_all(&[
            b"id: 7\r",
            b"\ndata: x\r",
            b"\ndata: y\r",
            b"\n\r",
            b"\ndata: z\r\n\r\n"
        ]),
        want
    );
}

#[test]
fn a_leading_bom_is_dropped_even_when_split() {
    let want = [ev(None, None, "x", None)];
    assert_eq!(decode_all(&[b"\xEF\xBB\xBFdata: x\n\n"]), want);
    assert_eq!(decode_all(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]), want);
    // Only at the very start: a second BOM is part of the field name (an unknown field).
    assert_eq!(
        decode_all(&[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\ndata: y\n\n"]),
        [ev(None, None, "y", None)]
    );
}

#[test]
fn comments_and_keep_alives_produce_no_events() {
    assert_eq!(decode_all(&[b":\r\n: keep-alive\n\n\n:x\n\n"]), []);
    assert_eq!(
        decode_all(&[b": hi\ndata: a\n: mid\ndata: b\n\n"]),
        [ev(None, None, "a\nb", None)]
    );
}

#[test]
fn priming_events_with_empty_data_are_yielded() {
    assert_eq!(
        decode_all(&[b"id: prime-1\ndata:\n\n"]),
        [ev(Some("prime-1"), None, "", None)]
    );
    assert_eq!(
        decode_all(&[b"id: prime-2\ndata: \n\n"]),
        [ev(Some("prime-2"), None, "", None)]
    );
    // id-only and retry-only blocks carry state the client needs: yielded too.
    assert_eq!(decode_all(&[b"id: 3\n\n"]), [ev(Some("3"), None, "", None)]);
    assert_eq!(
        decode_all(&[b"retry: 1000\n\n"]),
        [ev(None, None, "", Some(1000))]
    );
    // An event type alone does nothing in a browser: not yielded.
    assert_eq!(decode_all(&[b"event: x\n\n"]), []);
}

#[test]
fn retry_is_taken_only_when_all_digits() {
    for bad in [
        "retry: 10s",
        "retry: -1",
        "retry: ",
        "retry: 1.5",
        "retry: 99999999999999999999999",
    ] {
        let s = format!("{bad}\ndata: x\n\n");
        assert_eq!(
            decode_all(&[s.as_bytes()]),
            [ev(None, None, "x", None)],
            "{bad}"
        );
    }
    assert_eq!(
        decode_all(&[b"retry: 0\ndata: x\n\n"]),
        [ev(None, None, "x", Some(0))]
    );
}

#[test]
fn ids_containing_nul_are_ignored() {
    let mut d = SseDecoder::new();
    d.push(b"id: good\ndata: a\n\nid: b\0ad\ndata: b\n\n");
    assert_eq!(
        d.next_event().unwrap(),
        Some(ev(Some("good"), None, "a", None))
    );
    assert_eq!(d.next_event().unwrap(), Some(ev(None, None, "b", None)));
    assert_eq!(d.last_event_id(), "good");
}

#[test]
fn fields_without_colon_and_unknown_fields() {
    assert_eq!(
        decode_all(&[b"data\nfoo: bar\nid\n\n"]),
        [ev(Some(""), None, "", None)]
    );
}

#[test]
fn an_unterminated_event_is_not_yielded() {
    let mut d = SseDecoder::new();
    d.push(b"data: partial\n");
    assert_eq!(d.next_event().unwrap(), None);
    d.push(b"\n");
    assert_eq!(
        d.next_event().unwrap(),
        Some(ev(None, None, "partial", None))
    );
}

#[test]
fn oversize_events_and_lines_fail_and_stay_failed() {
    let mut d = SseDecoder::with_max_event_bytes(32);
    d.push(b"data: 0123456789\n");
    assert_eq!(d.next_event().unwrap(), None);
    d.push(b"data: 0123456789\n");
    assert_eq!(d.next_event(), Err(SseError::EventTooLarge { max: 32 }));
    d.push(b"\n");
    assert!(d.next_event().is_err());

    let mut d = SseDecoder::with_max_event_bytes(32);
    d.push(&[b'x'; 40]);
    assert_eq!(d.next_event(), Err(SseError::EventTooLarge { max: 32 }));

    // Many small events within the limit are fine.
    let mut d = SseDecoder::with_max_event_bytes(32);
    for _ in 0..100 {
        d.push(b"data: 0123456789\n\n");
        assert!(d.next_event().unwrap().is_some());
    }
}

#[test]
fn encode_writes_one_data_line_per_line_and_a_blank_line() {
    let e = ev(Some("5"), Some("message"), "a\nb", Some(300));
    assert_eq!(
        &e.encode()[..],
        b"id: 5\nevent: message\nretry: 300\ndata: a\ndata: b\n\n"
    );
    assert_eq!(&SseEvent::message("").encode()[..], b"data: \n\n");
    assert_eq!(
        &SseEvent::message("x\r\ny").encode()[..],
        b"data: x\ndata: y\n\n"
    );
}

#[test]
fn encode_drops_fields_that_would_break_framing() {
    let e = ev(Some("a\nretry: 1"), Some("x\ny"), "d", None);
    assert_eq!(&e.encode()[..], b"data: d\n\n");
}

fn text(max: usize) -> impl Strategy<Value = String> {
    // Printable text with spaces and colons, plus some non-ASCII; no CR, LF or NUL.
    proptest::string::string_regex(&format!("[ -~éλ😀]{{0,{max}}}")).unwrap()
}

fn event() -> impl Strategy<Value = SseEvent> {
    let data = proptest::collection::vec(text(12), 1..4).prop_map(|lines| lines.join("\n"));
    (
        proptest::option::of(text(8)),
        proptest::option::of(text(8)),
        data,
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(id, event, data, retry)| SseEvent {
            id,
            event,
            data,
            retry,
        })
}

fn stream() -> impl Strategy<Value = (Vec<SseEvent>, Vec<u8>)> {
    (
        proptest::collection::vec(event(), 0..8),
        0..3usize,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(events, ending, bom, comments)| {
            let mut s = Vec::new();
            if bom {
                s.extend_from_slice(BOM);
            }
            for e in &events {
                if comments {
                    s.extend_from_slice(b": keep-alive\n\n");
                }
                s.extend_from_slice(&e.encode());
            }
            let term: &[u8] = [&b"\n"[..], b"\r\n", b"\r"][ending];
            let mut out = Vec::with_capacity(s.len() * 2);
            for b in s {
                if b == b'\n' {
                    out.extend_from_slice(term);
                } else {
                    out.push(b);
                }
            }
            (events, out)
        })
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(events in proptest::collection::vec(event(), 0..8)) {
        let mut bytes = Vec::new();
        for e in &events {
            bytes.extend_from_slice(&e.encode());
        }
        prop_assert_eq!(decode_all(&[&bytes]), events);
    }

    #[test]
    fn any_split_of_a_stream_decodes_to_the_same_events(
        (events, bytes) in stream(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&bytes[last..p]);
            last = p;
        }
        chunks.push(&bytes[last..]);
        prop_assert_eq!(decode_all(&chunks), events.clone());
        // Byte by byte, the worst split of all.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(decode_all(&singles), events);
    }
}
