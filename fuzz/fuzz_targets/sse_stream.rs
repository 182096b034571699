//! The SSE parsing of upstream responses, fed the way the network feeds it:
//! the input's first byte picks a seed for where the stream is cut.
//!
//! Invariants: the pass-through boundary splitter loses, adds and reorders no
//! byte and only ever hands on whole events; the event decoder yields the same
//! events however the stream is cut.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tenantgate_fuzz::chunks;
use tenantgate_gateway::llm::sse::{Decoder, Event, EventBoundary};

fn decode_all(pieces: &[&[u8]]) -> Vec<Event> {
    let mut decoder = Decoder::default();
    let mut events = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        while let Some(e) = decoder.next_event() {
            events.push(e);
        }
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let lengths: Vec<u8> = (0..16u8).map(|i| cut.rotate_left(u32::from(i % 8)) ^ i.wrapping_mul(37)).collect();
    let pieces = chunks(stream, &lengths);

    let mut boundary = EventBoundary::default();
    let mut passed = Vec::new();
    for piece in &pieces {
        if let Some(whole) = boundary.push(Bytes::copy_from_slice(piece)) {
            assert!(whole.ends_with(b"\n\n") || whole.ends_with(b"\n\r\n"), "a partial event was handed on");
            passed.extend_from_slice(&whole);
        }
    }
    assert!(stream.starts_with(&passed), "bytes were changed or reordered");
    assert_eq!(boundary.has_partial(), passed.len() < stream.len(), "bytes were lost");

    let whole = decode_all(&[stream]);
    assert_eq!(decode_all(&pieces), whole, "the cut changed the decoded events");
});
