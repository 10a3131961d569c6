//! The properties every fuzz input must keep. Shared, by `#[path]`, between the cargo-fuzz
//! targets (`fuzz_targets/*.rs`) and the corpus regression test the normal suite runs
//! (`tests/tests/fuzz_corpus.rs`), so CI replays the committed corpus on every run.

use bytes::Bytes;
use tollgate_mcp::json::JsonLimits;
use tollgate_mcp::jsonrpc::Frame;
use tollgate_mcp::sse::SseDecoder;
use tollgate_policy::{CallInput, Policy};

/// The strict parser never panics, and what it accepts means exactly what a standard JSON reader
/// reads from the same bytes (the gateway forwards the bytes it judged).
pub fn jsonrpc_frame(data: &[u8]) {
    let limits = JsonLimits::default();
    let Ok(frame) = Frame::parse(Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    let standard: serde_json::Value =
        serde_json::from_slice(data).expect("a frame the strict parser accepts is valid JSON");
    assert_eq!(
        &standard,
        frame.value(),
        "strict and standard readings differ"
    );
    let _ = tollgate_mcp::era::detect_era(frame.message());
    let _ = tollgate_mcp::headers::check_modern_headers(&http::HeaderMap::new(), &frame);
    let _ = frame.tool_name();
}

/// The policy loader never panics; a policy it accepts has a stable digest and evaluates any
/// call without panicking.
pub fn policy_loader(data: &[u8]) {
    let Ok(policy) = Policy::from_json(data) else {
        return;
    };
    let again = Policy::from_json(data).expect("accepted twice");
    assert_eq!(policy.digest(), again.digest());
    let _ = policy.summary();
    let args: serde_json::Value =
        serde_json::json!({"a": 1, "b": "x", "c": [1, 2], "d": {"e": null}});
    for tool in ["run-rerun", "a", "x", "", "*"] {
        let _ = policy.is_visible(tool);
        for known in [true, false] {
            let _ = policy.evaluate_call(&CallInput {
                tool,
                arguments: Some(&args),
                tool_known: known,
            });
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let canonical = tollgate_policy::canonical_json(&value);
        let reparsed: serde_json::Value =
            serde_json::from_str(&canonical).expect("canonical JSON parses");
        assert_eq!(
            canonical,
            tollgate_policy::canonical_json(&reparsed),
            "JCS is idempotent"
        );
    }
}

/// The SSE decoder never panics, and splitting the input anywhere yields the same events.
pub fn sse_decoder(data: &[u8]) {
    let whole = decode(&[data]);
    let split = data.len() / 2;
    let halves = decode(&[&data[..split], &data[split..]]);
    assert_eq!(whole, halves, "events depend on where the stream was split");
}

fn decode(chunks: &[&[u8]]) -> Vec<(Option<String>, Option<String>, String)> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Ok(Some(event)) = decoder.next_event() {
            events.push((event.id, event.event, event.data));
        }
    }
    events
}
